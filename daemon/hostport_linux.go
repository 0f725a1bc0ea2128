package daemon

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"

	"github.com/vishvananda/netns"

	vswitch "tapswitch/switch"
	"tapswitch/tap"
)

// ensureHostPort attaches the host port, the TAP named d.opts.HostPort in
// the daemon's own namespace, with the last usable address of each pod
// CIDR. The addresses' prefixes give the node its routes to the pods. A
// host port left by an earlier run is re-attached if it matches (MAC, MTU,
// addresses), like the pods' TAPs; one that does not — the daemon
// restarted with other CIDRs or MTU — is re-created, as it holds no state.
func (d *Daemon) ensureHostPort() error {
	if d.opts.HostPort == "" {
		return nil
	}
	// The daemon's namespace by a path that stays right whichever thread
	// opens it: an fd of this process, taken before any thread moved.
	self, err := netns.Get()
	if err != nil {
		return fmt.Errorf("host port: own netns: %w", err)
	}
	defer self.Close()
	addrs := d.hostPortAddrs()
	cfg := tap.Config{
		NetNS: fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), int(self)), Name: d.opts.HostPort,
		PortName: d.opts.HostPort, MAC: hostPortMAC(), MTU: d.opts.MTU, Addrs: addrs,
		Offloads: !d.opts.NoOffloads, Queues: d.opts.Queues, Logger: d.log.With("port", d.opts.HostPort),
	}
	port, err := d.reopenHostPort(cfg)
	if err == nil && port == nil {
		port, err = tap.Create(cfg)
	}
	if err != nil {
		return fmt.Errorf("host port: %w", err)
	}
	if d.opts.PodCIDR6.IsValid() {
		// The gateway's router advertisements reach the host port too.
		// The node must not take them: a default route through the
		// gateway would send the node's own traffic into egress, which
		// re-originates it from the node, in a loop. A kernel router's
		// host side does not accept RAs either (accept_ra with
		// forwarding). The setting belongs to this device and goes with it.
		if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+d.opts.HostPort+"/accept_ra", []byte("0"), 0); err != nil {
			port.Close()
			return fmt.Errorf("host port: turn off router advertisements: %w", err)
		}
	}
	id, err := d.sw.AddPort(port)
	if err != nil {
		port.Close()
		return fmt.Errorf("host port: %w", err)
	}
	d.hostPortID = id
	for _, a := range addrs {
		if err := d.sw.Bind(vswitch.Binding{IP: a.Addr(), MAC: hostPortMAC(), Port: id}); err != nil {
			return fmt.Errorf("host port: %w", err)
		}
	}
	d.log.Info("host port attached", "ifname", d.opts.HostPort, "addrs", addrs)
	return nil
}

// reopenHostPort opens an existing host port that matches cfg. It returns
// nil and no error when there is none, having deleted one that does not
// match.
func (d *Daemon) reopenHostPort(cfg tap.Config) (*tap.Port, error) {
	link, err := tap.Inspect(cfg.NetNS, cfg.Name)
	if errors.Is(err, tap.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if why := hostPortDiffers(link, cfg); why != "" {
		d.log.Info("host port out of date; re-creating it", "ifname", cfg.Name, "reason", why)
		if err := tap.Delete(cfg.NetNS, cfg.Name); err != nil {
			return nil, err
		}
		return nil, nil
	}
	return tap.Open(cfg)
}

// hostPortDiffers says how link differs from cfg, or "" if it does not:
// its MAC, its MTU, or its addresses other than link-local ones.
func hostPortDiffers(link tap.Link, cfg tap.Config) string {
	if link.MAC != cfg.MAC {
		return fmt.Sprintf("mac %s, want %s", link.MAC, cfg.MAC)
	}
	if link.MTU != cfg.MTU {
		return fmt.Sprintf("mtu %d, want %d", link.MTU, cfg.MTU)
	}
	have, want := slices.Clone(link.Addrs), slices.Clone(cfg.Addrs)
	byAddr := func(a, b netip.Prefix) int { return cmp.Or(a.Addr().Compare(b.Addr()), a.Bits()-b.Bits()) }
	slices.SortFunc(have, byAddr)
	slices.SortFunc(want, byAddr)
	if !slices.Equal(have, want) {
		return fmt.Sprintf("addresses %v, want %v", have, want)
	}
	return ""
}
