package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"tapswitch/daemon/api"
	"tapswitch/nodenet"
	vswitch "tapswitch/switch"
)

// Route mode: the switch routes the pods' traffic to every address outside
// the local pod network to the node's kernel through the host port, with
// the pods' own source addresses (vswitch's router). The node's routing,
// kube-proxy, NodePorts and host processes then see the pods as they are,
// as with any veth-based plugin. The daemon turns on forwarding in its
// namespace and keeps an nftables table of its own there (nodenet): the
// masquerade of pod traffic that leaves the cluster, and hostPorts as
// DNATs. A goroutine puts the table back when someone changes it.
//
// Proxy mode is the gateway of old: it ends the pods' connections and
// re-originates them from the daemon's sockets, for nodes where the daemon
// may not change forwarding or firewall rules.

// EgressMode says how pods' traffic leaves the pod network.
type EgressMode string

const (
	EgressRoute EgressMode = "route"
	EgressProxy EgressMode = "proxy"
)

// ParseEgressMode reads the value of --egress.
func ParseEgressMode(s string) (EgressMode, error) {
	switch m := EgressMode(s); m {
	case EgressRoute, EgressProxy:
		return m, nil
	}
	return "", fmt.Errorf("%q: want route or proxy", s)
}

// rulesCheck is how often route mode checks that its nftables
// table is as it wrote it.
const rulesCheck = 10 * time.Second

// rulesTimeout bounds one run of nft.
const rulesTimeout = 30 * time.Second

// CheckClusterCIDRs checks that every pod CIDR lies inside a cluster CIDR
// of its family: traffic between pods must never be masqueraded.
func CheckClusterCIDRs(pods, cluster []netip.Prefix) error {
	for _, c := range cluster {
		if !c.IsValid() || c.Addr().Is4In6() || c != c.Masked() {
			return fmt.Errorf("cluster cidr %s is not a network prefix (want e.g. 10.244.0.0/16)", c)
		}
	}
	for _, p := range pods {
		if !slices.ContainsFunc(cluster, func(c netip.Prefix) bool {
			return c.Addr().Is4() == p.Addr().Is4() && c.Bits() <= p.Bits() && c.Contains(p.Addr())
		}) {
			return fmt.Errorf("cluster cidrs %v do not contain pod cidr %s", cluster, p)
		}
	}
	return nil
}

// startRouting makes the switch route for the gateway, turns forwarding on
// and writes the node's rules, with the forwards restore took back. Route
// mode needs the host port, the next hop (setDefaults checks it is set).
func (d *Daemon) startRouting() error {
	changed, err := nodenet.EnableForwarding(d.opts.PodCIDR6.IsValid())
	if err != nil {
		return fmt.Errorf("route mode: %w", err)
	}
	if len(changed) > 0 {
		d.log.Info("forwarding turned on", "sysctls", strings.Join(changed, ","))
		if slices.Contains(changed, "net.ipv6.conf.all.forwarding") {
			d.log.Warn("IPv6 forwarding is on: interfaces with accept_ra=1 no longer take router advertisements; set accept_ra=2 on an uplink that learns its IPv6 routes from them")
		}
	} else {
		d.log.Info("forwarding was on")
	}
	rules, err := nodenet.New(nodenet.Options{Logger: d.log})
	if err != nil {
		return fmt.Errorf("route mode: %w", err)
	}
	d.rules = rules
	d.mu.Lock()
	err = d.syncRulesLocked()
	d.mu.Unlock()
	if err != nil {
		return err
	}
	// The default routes come with the router, so no frame meets it
	// without them.
	var routes []vswitch.Route
	for _, c := range d.cidrs() {
		def := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
		if c.Addr().Is6() {
			def = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
		}
		routes = append(routes, vswitch.Route{Prefix: def, Port: d.hostPortID, NextHop: hostPortMAC()})
	}
	// Before the router: replies of flows through the node must not
	// reach a client straight meanwhile.
	d.seedHostFlows()
	err = d.sw.SetRouter(vswitch.RouterConfig{
		MAC: gatewayMAC(), Port: d.gwPortID, Addrs: d.gatewayAddrs(),
		HostPort: d.hostPortID, HostMAC: hostPortMAC(), Routes: routes,
	})
	if err != nil {
		return err
	}
	d.rulesDone = make(chan struct{})
	d.rulesStop = make(chan struct{})
	go d.rulesLoop()
	d.log.Info("routing pod traffic to the node", "host_port", d.opts.HostPort, "cluster_cidrs", fmt.Sprint(d.clusterCIDRs()))
	return nil
}

// clusterCIDRs are Options.ClusterCIDRs, or the pod CIDRs.
func (d *Daemon) clusterCIDRs() []netip.Prefix {
	if len(d.opts.ClusterCIDRs) > 0 {
		return d.opts.ClusterCIDRs
	}
	return d.cidrs()
}

// rulesConfigLocked is what the node's table should hold now: the
// forwards, but those restore found the table cannot take (Error set).
func (d *Daemon) rulesConfigLocked() nodenet.Config {
	cfg := nodenet.Config{HostPort: d.opts.HostPort, PodCIDRs: d.cidrs(), ClusterCIDRs: d.clusterCIDRs()}
	for _, f := range d.sortedForwardsLocked() {
		if f.fw.Error == "" {
			cfg.HostPorts = append(cfg.HostPorts, hostPortOf(f.fw))
		}
	}
	return cfg
}

func hostPortOf(fw api.Forward) nodenet.HostPort {
	return nodenet.HostPort{Proto: fw.Proto, Listen: fw.Listen, Target: fw.Target}
}

// checkRestoredForwardsLocked marks the restored forwards the node's
// table cannot take — saved by a daemon in proxy mode, such as one on
// [::1], which Linux cannot DNAT — with the reason in their Error, so
// they stay listed, out of the table, until deleted, rather than stop the
// daemon from starting.
func (d *Daemon) checkRestoredForwardsLocked() {
	cfg := nodenet.Config{HostPort: d.opts.HostPort, PodCIDRs: d.cidrs(), ClusterCIDRs: d.clusterCIDRs()}
	for _, f := range d.sortedForwardsLocked() {
		hp := hostPortOf(f.fw)
		if err := cfg.CheckHostPort(hp); err != nil {
			f.fw.Error = err.Error()
			f.log.Error("restored forward cannot be a DNAT in route mode; it stays listed, not applied, until deleted", "err", err)
			continue
		}
		cfg.HostPorts = append(cfg.HostPorts, hp)
	}
}

// removeLeftoverRules removes a route-mode table a daemon left in this
// namespace (--keep-rules, or a SIGKILL) when this one runs in proxy
// mode: its DNATs would take the connections the forwards listen for,
// and its masquerade is not wanted. Proxy mode is for nodes where the
// daemon may not touch the firewall, so not being able to look is no
// error.
func (d *Daemon) removeLeftoverRules() {
	rules, err := nodenet.New(nodenet.Options{Logger: d.log})
	if err != nil {
		d.log.Debug("no nftables here to look for a route-mode table in", "err", err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), rulesTimeout)
	defer cancel()
	if err := rules.Delete(ctx); err != nil {
		d.log.Warn("remove a route-mode nftables table left by an earlier daemon", "err", err)
	}
}

// syncRulesLocked writes the node's table as the forwards say (route mode;
// nothing in proxy mode). The caller holds d.mu.
func (d *Daemon) syncRulesLocked() error {
	if d.rules == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), rulesTimeout)
	defer cancel()
	err := d.rules.Sync(ctx, d.rulesConfigLocked())
	switch {
	case errors.Is(err, nodenet.ErrInvalidConfig):
		// Nothing was written: the table is as before, not stale.
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	case err != nil:
		d.rulesStale = true
		return fmt.Errorf("node rules: %w", err)
	}
	d.rulesStale = false
	return nil
}

// rulesLoop puts the node's table back when it drifted from what the
// daemon wrote — another program deleted or changed it — or when a sync
// failed earlier (rulesStale).
func (d *Daemon) rulesLoop() {
	defer close(d.rulesDone)
	tick := time.NewTicker(rulesCheck)
	defer tick.Stop()
	for {
		select {
		case <-d.rulesStop:
			return
		case <-tick.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), rulesTimeout)
		drifted, err := d.rules.Drifted(ctx)
		cancel()
		if err != nil {
			d.log.Warn("check the node's nftables table", "err", err)
			continue
		}
		d.mu.Lock()
		stale := d.rulesStale
		if drifted || stale {
			err = d.syncRulesLocked()
		}
		d.mu.Unlock()
		switch {
		case err != nil:
			d.log.Error("restore the node's nftables table", "err", err)
		case drifted:
			d.log.Warn("the node's nftables table was changed by someone else; restored it")
		case stale:
			d.log.Info("the node's nftables table is up to date again")
		}
	}
}

// stopRouting stops rulesLoop and, unless Options.KeepRules, removes the
// node's table. Forwarding stays on: other software may rely on it.
func (d *Daemon) stopRouting() error {
	if d.rules == nil {
		return nil
	}
	if d.rulesStop != nil {
		close(d.rulesStop)
		<-d.rulesDone
		d.rulesStop = nil
	}
	if d.opts.KeepRules {
		d.log.Info("node rules kept (--keep-rules)")
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), rulesTimeout)
	defer cancel()
	if err := d.rules.Delete(ctx); err != nil {
		return fmt.Errorf("remove node rules: %w", err)
	}
	d.log.Info("node rules removed")
	return nil
}
