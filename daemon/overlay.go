package daemon

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"

	"tapswitch/daemon/api"
	"tapswitch/overlay"
	vswitch "tapswitch/switch"
)

// The overlay (issue 12, first part): other nodes' pods over VXLAN,
// flannel's vxlan backend on the wire. With --peers the daemon opens a
// VXLAN port on the underlay, routes every peer's pod CIDRs to it with
// that peer's VTEP MAC as the next hop (the switch's router, route mode),
// and gives the node's kernel a route for each through tsw0 via the
// gateway, so traffic the node itself sends there — Services kube-proxy
// translates to a remote pod — reaches it through the overlay too.
// Frames from peers are decapsulated to the gateway's MAC and routed to
// the local pods like any other.

// Defaults of the overlay's flags (DESIGN.md: flannel's).
const (
	DefaultVXLANPort = overlay.DefaultPort
	DefaultVNI       = overlay.DefaultVNI
)

// rtprotTapswitch marks the node's routes the daemon owns (rtm_protocol,
// include/uapi/linux/rtnetlink.h; values above RTPROT_STATIC are free for
// routing daemons, and 116 is taken by none the kernel lists).
const rtprotTapswitch = 116

// overlayState is the running overlay.
type overlayState struct {
	vx     *overlay.VXLAN
	portID vswitch.PortID
	self   overlay.Node
	under  underlay
	watch  *overlay.Watcher // with a peers file
	kube   *overlay.Kube    // with Kubernetes

	mu    sync.Mutex // guards peers; held while a new set is applied
	peers []overlay.Node
}

// vxlanOverhead is what VXLAN adds to an inner IP packet on the underlay:
// outer IP (20 or 40 bytes), UDP 8, VXLAN 8, inner Ethernet 14.
func vxlanOverhead(under netip.Addr) int {
	if under.Is4() {
		return 50
	}
	return 70
}

// vtepMAC is this node's VTEP MAC, derived from its name like every MAC
// the daemon makes, so it survives restarts and differs between nodes.
func vtepMAC(node string) vswitch.MAC { return podMAC("tapswitch-vtep", node) }

// startOverlay opens the VXLAN port, starts watching the peers file and
// applies its peers. Route mode only: the overlay is routes of the
// switch's router.
func (d *Daemon) startOverlay(under underlay) error {
	if d.opts.Egress != EgressRoute {
		return fmt.Errorf("--peers needs route mode (the overlay is routes of the switch's router)")
	}
	o := &overlayState{under: under}
	o.self = overlay.Node{Name: d.opts.NodeName, Address: under.addr, VTEPMAC: vtepMAC(d.opts.NodeName), PodCIDRs: d.cidrs()}
	vx, err := overlay.NewVXLAN(overlay.VXLANOptions{
		Local: netip.AddrPortFrom(under.addr, uint16(d.opts.VXLANPort)), VNI: d.opts.VNI,
		VTEPMAC: o.self.VTEPMAC, RouterMAC: gatewayMAC(),
		MTU: under.mtu - vxlanOverhead(under.addr), Logger: d.log,
	})
	if err != nil {
		return fmt.Errorf("overlay: %w", err)
	}
	if o.portID, err = d.sw.AddPort(vx); err != nil {
		vx.Close()
		return fmt.Errorf("overlay: %w", err)
	}
	o.vx = vx
	d.ovl = o
	if err := d.startMembership(); err != nil {
		return fmt.Errorf("overlay: %w", err)
	}
	d.log.Info("overlay up", "node", o.self.Name, "underlay", under.addr, "ifname", under.ifname,
		"vtep_mac", o.self.VTEPMAC.String(), "vni", d.opts.VNI, "port", d.opts.VXLANPort)
	return nil
}

// startMembership starts the source of peers: the peers file's watcher,
// which applies the file's peers before it returns (so routes an earlier
// run left for peers that are gone are pruned at once), or the
// Kubernetes informer, which applies them once the first list of Nodes
// is in and publishes this node's annotations.
func (d *Daemon) startMembership() error {
	o := d.ovl
	if d.opts.Peers != "" {
		w, err := overlay.NewWatcher(overlay.WatcherOptions{
			Path: d.opts.Peers, Self: o.self, Apply: d.applyPeers, Logger: d.log,
			OnError: func(err error) {
				d.log.Error("peers file not applied; keeping the last good set", "file", d.opts.Peers, "err", err)
			},
		})
		if err != nil {
			return err
		}
		o.watch = w
		d.pruneNodeRoutes()
		return nil
	}
	client, err := overlay.ClientFromKubeconfig(d.opts.Kubeconfig)
	if err != nil {
		return err
	}
	first := true
	k, err := overlay.NewKube(overlay.KubeOptions{
		Client: client, NodeName: d.opts.NodeName, Self: o.self, VNI: d.opts.VNI, Logger: d.log,
		Apply: func(nodes []overlay.Node) {
			d.applyPeers(nodes)
			if first {
				first = false
				d.pruneNodeRoutes()
			}
		},
	})
	if err != nil {
		return err
	}
	o.kube = k
	return nil
}

// applyPeers makes the switch, the VXLAN port and the node's kernel route
// to exactly nodes: new and changed peers are added before, gone ones
// removed after, so traffic to a peer that stays never stops.
func (d *Daemon) applyPeers(nodes []overlay.Node) {
	o := d.ovl
	o.mu.Lock()
	defer o.mu.Unlock()
	vteps := make([]overlay.VTEP, 0, len(nodes))
	want := map[netip.Prefix]overlay.Node{}
	for _, n := range nodes {
		vteps = append(vteps, overlay.VTEP{Name: n.Name, Address: n.Address, MAC: n.VTEPMAC})
		for _, c := range n.PodCIDRs {
			want[c] = n
		}
	}
	// The port learns the new VTEPs first and forgets the gone ones last.
	// The peers file's checks are the port's, so it takes them.
	if err := o.vx.SetVTEPs(append(vteps, oldVTEPs(o.peers, want)...)); err != nil {
		d.log.Error("peers not applied", "err", err)
		return
	}
	for c, n := range want {
		if err := d.sw.SetRoute(vswitch.Route{Prefix: c, Port: o.portID, NextHop: n.VTEPMAC}); err != nil {
			d.log.Error("route a peer's pod cidr", "peer", n.Name, "cidr", c, "err", err)
			continue
		}
		if err := d.nodeRoute(c, true); err != nil {
			d.log.Error("route a peer's pod cidr in the node", "peer", n.Name, "cidr", c, "err", err)
		}
	}
	for _, old := range o.peers {
		for _, c := range old.PodCIDRs {
			if _, ok := want[c]; ok {
				continue
			}
			if err := d.nodeRoute(c, false); err != nil {
				d.log.Warn("remove a gone peer's route in the node", "peer", old.Name, "cidr", c, "err", err)
			}
			if _, err := d.sw.DeleteRoute(c); err != nil {
				d.log.Warn("remove a gone peer's route", "peer", old.Name, "cidr", c, "err", err)
			}
		}
	}
	if err := o.vx.SetVTEPs(vteps); err != nil {
		d.log.Error("forget gone peers' VTEPs", "err", err)
	}
	logPeerChanges(d, o.peers, nodes)
	o.peers = slices.Clone(nodes)
}

// oldVTEPs are the VTEPs of the peers that leave, kept until their routes
// are gone.
func oldVTEPs(old []overlay.Node, want map[netip.Prefix]overlay.Node) []overlay.VTEP {
	var out []overlay.VTEP
	for _, n := range old {
		if !slices.ContainsFunc(n.PodCIDRs, func(c netip.Prefix) bool { _, ok := want[c]; return ok }) {
			out = append(out, overlay.VTEP{Name: n.Name, Address: n.Address, MAC: n.VTEPMAC})
		}
	}
	return out
}

func logPeerChanges(d *Daemon, old, cur []overlay.Node) {
	byName := func(ns []overlay.Node) map[string]overlay.Node {
		m := map[string]overlay.Node{}
		for _, n := range ns {
			m[n.Name] = n
		}
		return m
	}
	o, c := byName(old), byName(cur)
	for name, n := range c {
		switch p, ok := o[name]; {
		case !ok:
			d.log.Info("peer added", "peer", name, "address", n.Address, "vtep_mac", n.VTEPMAC.String(), "pod_cidrs", fmt.Sprint(n.PodCIDRs))
		case p.Address != n.Address || p.VTEPMAC != n.VTEPMAC || !slices.Equal(p.PodCIDRs, n.PodCIDRs):
			d.log.Info("peer changed", "peer", name, "address", n.Address, "vtep_mac", n.VTEPMAC.String(), "pod_cidrs", fmt.Sprint(n.PodCIDRs))
		}
	}
	for name := range o {
		if _, ok := c[name]; !ok {
			d.log.Info("peer removed", "peer", name)
		}
	}
}

// nodeRoute adds (or replaces) or deletes the node's route to a peer's
// pod CIDR: through tsw0 via the gateway's address of its family, marked
// as the daemon's.
func (d *Daemon) nodeRoute(c netip.Prefix, add bool) error {
	link, err := netlink.LinkByName(d.opts.HostPort)
	if err != nil {
		return err
	}
	var gw netip.Addr
	for _, a := range d.gatewayAddrs() {
		if a.Addr().Is4() == c.Addr().Is4() {
			gw = a.Addr()
		}
	}
	if !gw.IsValid() {
		return fmt.Errorf("no pod cidr of the family of %s here to route it through", c)
	}
	r := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: prefixIPNet(c), Gw: gw.AsSlice(), Protocol: rtprotTapswitch}
	if add {
		return netlink.RouteReplace(r)
	}
	return netlink.RouteDel(r)
}

// prefixIPNet converts a masked prefix.
func prefixIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// pruneNodeRoutes deletes the node's routes through tsw0 marked as the
// daemon's whose destination is no peer's pod CIDR any more: an earlier
// run's, for peers removed while it was down.
func (d *Daemon) pruneNodeRoutes() {
	link, err := netlink.LinkByName(d.opts.HostPort)
	if err != nil {
		d.log.Warn("look for stale overlay routes in the node", "err", err)
		return
	}
	d.ovl.mu.Lock()
	defer d.ovl.mu.Unlock()
	want := map[netip.Prefix]bool{}
	for _, n := range d.ovl.peers {
		for _, c := range n.PodCIDRs {
			want[c] = true
		}
	}
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{LinkIndex: link.Attrs().Index, Protocol: rtprotTapswitch},
		netlink.RT_FILTER_OIF|netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		d.log.Warn("look for stale overlay routes in the node", "err", err)
		return
	}
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		p, ok := netip.AddrFromSlice(r.Dst.IP)
		ones, _ := r.Dst.Mask.Size()
		if !ok || want[netip.PrefixFrom(p.Unmap(), ones)] {
			continue
		}
		if err := netlink.RouteDel(&r); err != nil {
			d.log.Warn("remove a stale overlay route in the node", "dst", r.Dst, "err", err)
			continue
		}
		d.log.Info("stale overlay route removed from the node", "dst", r.Dst)
	}
}

// stopOverlay stops watching the peers file. The VXLAN port goes with
// the switch; the node's routes stay with tsw0, like the pods' TAPs, and
// are put right by the next start.
func (d *Daemon) stopOverlay() {
	if d.ovl == nil {
		return
	}
	if d.ovl.watch != nil {
		d.ovl.watch.Close()
	}
	if d.ovl.kube != nil {
		d.ovl.kube.Close()
	}
}

// Node is this node's entry for a peers file (GET /v1/node).
func (d *Daemon) Node() (api.Node, error) {
	if d.ovl == nil {
		return api.Node{}, fmt.Errorf("%w: no overlay (start the daemon with --peers, or in a cluster)", ErrNotFound)
	}
	s := d.ovl.self
	return api.Node{Name: s.Name, Address: s.Address, VTEPMAC: s.VTEPMAC, PodCIDRs: s.PodCIDRs}, nil
}

// Peers lists the peers with their traffic (GET /v1/peers).
func (d *Daemon) Peers() ([]api.Peer, error) {
	if d.ovl == nil {
		return nil, fmt.Errorf("%w: no overlay (start the daemon with --peers, or in a cluster)", ErrNotFound)
	}
	d.ovl.mu.Lock()
	nodes := slices.Clone(d.ovl.peers)
	d.ovl.mu.Unlock()
	stats := map[vswitch.MAC]overlay.VTEPStats{}
	for _, st := range d.ovl.vx.VTEPStats() {
		stats[st.MAC] = st
	}
	out := make([]api.Peer, 0, len(nodes))
	for _, n := range nodes {
		st := stats[n.VTEPMAC]
		out = append(out, api.Peer{
			Node:     api.Node{Name: n.Name, Address: n.Address, VTEPMAC: n.VTEPMAC, PodCIDRs: n.PodCIDRs},
			TxFrames: st.TxFrames, TxBytes: st.TxBytes, RxFrames: st.RxFrames, RxBytes: st.RxBytes, LastSeen: st.LastSeen,
		})
	}
	slices.SortFunc(out, func(a, b api.Peer) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}
