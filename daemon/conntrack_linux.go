package daemon

import (
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// seedHostFlows tells the switch which connections the node's kernel
// forwards between two of this node's pods — a Service address translated
// to a local backend — so their replies keep returning through the node
// after a restart (see vswitch.AddHostFlow). The node's connection
// tracking, in the daemon's namespace, holds them: the reply tuple of such
// a connection runs from one local pod to another. A node without
// conntrack support just has none; that is logged, not an error.
func (d *Daemon) seedHostFlows() {
	cidrs := d.cidrs()
	local := func(ip []byte) (netip.Addr, bool) {
		a, ok := netip.AddrFromSlice(ip)
		a = a.Unmap()
		return a, ok && slices.ContainsFunc(cidrs, func(c netip.Prefix) bool { return c.Contains(a) })
	}
	n := 0
	for _, family := range []netlink.InetFamily{unix.AF_INET, unix.AF_INET6} {
		flows, err := netlink.ConntrackTableList(netlink.ConntrackTable, family)
		if err != nil {
			d.log.Warn("read the node's connection tracking; flows between local pods through Services may reset after this restart", "err", err)
			return
		}
		for _, f := range flows {
			r := f.Reverse
			switch r.Protocol {
			case unix.IPPROTO_TCP, unix.IPPROTO_UDP, unix.IPPROTO_SCTP:
			default:
				continue
			}
			src, ok1 := local(r.SrcIP)
			dst, ok2 := local(r.DstIP)
			if !ok1 || !ok2 {
				continue
			}
			d.sw.AddHostFlow(src, dst, r.Protocol, r.SrcPort, r.DstPort)
			n++
		}
	}
	if n > 0 {
		d.log.Info("flows between local pods through the node taken from its connection tracking", "flows", n)
	}
}
