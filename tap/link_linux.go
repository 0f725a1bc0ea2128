package tap

import (
	"fmt"
	"math"
	"net"
	"net/netip"
	"os"
	"slices"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"tapswitch/internal/netnsutil"
	vswitch "tapswitch/switch"
)

// configureLink gives a new device its MAC, MTU, addresses, link state and
// default route, in that order: the route needs the link up. Create
// deletes the device if this fails, which takes addresses and routes along.
func configureLink(h *netlink.Handle, link netlink.Link, cfg Config) error {
	if err := h.LinkSetHardwareAddr(link, net.HardwareAddr(cfg.MAC[:])); err != nil {
		return cfg.errorf("set mac on", err)
	}
	if err := h.LinkSetMTU(link, cfg.MTU); err != nil {
		return cfg.errorf("set mtu on", err)
	}
	if slices.ContainsFunc(cfg.Addrs, func(a netip.Prefix) bool { return a.Addr().Is6() }) {
		if err := skipDAD(cfg); err != nil {
			return err
		}
	}
	for _, a := range cfg.Addrs {
		addr := &netlink.Addr{IPNet: ipNet(a)}
		if a.Addr().Is6() {
			// The daemon hands out unique addresses; duplicate address
			// detection would only hold each one back for a second.
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := h.AddrAdd(link, addr); err != nil {
			return cfg.errorf(fmt.Sprintf("add address %s to", a), err)
		}
	}
	if err := h.LinkSetUp(link); err != nil {
		return cfg.errorf("set link up on", err)
	}
	if cfg.Egress.Rate > 0 {
		if err := h.QdiscAdd(tbf(link.Attrs().Index, cfg.Egress)); err != nil {
			return cfg.errorf(fmt.Sprintf("add tbf qdisc (egress limit %d bit/s) to", cfg.Egress.Rate), err)
		}
	}
	for _, gw := range cfg.Gateways {
		route := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: gw.AsSlice()}
		if !onSubnet(gw, cfg.Addrs) {
			// No address's prefix holds the gateway (say a /32 pod
			// address): tell the kernel it is on the link anyway.
			route.Flags = int(netlink.FLAG_ONLINK)
		}
		if err := h.RouteAdd(route); err != nil {
			return cfg.errorf(fmt.Sprintf("add default route via %s to", gw), err)
		}
	}
	return nil
}

// skipDAD turns duplicate address detection off on the device before it
// comes up, for the link-local address the kernel then makes: its MAC,
// which that address derives from, is the daemon's and unique. Without
// it the link-local address is tentative for a second, and the node's
// kernel, which solicits a pod's MAC on tsw0 from it when the packet's
// source is not on tsw0 (a reply it de-masqueraded), holds such packets
// meanwhile. The sysctl is the device's, in its netns (/proc/sys/net is
// per namespace, read by the opening thread's).
func skipDAD(cfg Config) error {
	err := netnsutil.Do(cfg.NetNS, func() error {
		return os.WriteFile("/proc/sys/net/ipv6/conf/"+cfg.Name+"/accept_dad", []byte("0"), 0)
	})
	if err != nil {
		return cfg.errorf("turn off duplicate address detection on", err)
	}
	return nil
}

// onSubnet reports whether gw is reachable without the onlink flag: inside
// the prefix of one of addrs, or an IPv6 link-local address.
func onSubnet(gw netip.Addr, addrs []netip.Prefix) bool {
	if gw.Is6() && gw.IsLinkLocalUnicast() {
		return true
	}
	for _, a := range addrs {
		if a.Masked().Contains(gw) {
			return true
		}
	}
	return false
}

// ipNet converts an address with its prefix length, such as 10.244.0.2/24,
// keeping the host bits.
func ipNet(a netip.Prefix) *net.IPNet {
	bits := a.Addr().BitLen()
	return &net.IPNet{IP: a.Addr().AsSlice(), Mask: net.CIDRMask(a.Bits(), bits)}
}

// tbfLatency bounds how long a packet may wait in the egress qdisc: it
// sets the qdisc's queue (limit) beyond the burst, as tc's "latency" does.
// The reference bandwidth plugin uses the same 25 ms.
const tbfLatency = 25 * time.Millisecond

// tbf is a token bucket filter root qdisc on the device at index, for l:
// rate in bytes per second, the bucket (burst) as the time it takes to
// fill in scheduler ticks, and a queue of tbfLatency at the rate on top.
func tbf(index int, l vswitch.Limit) *netlink.Tbf {
	rate := l.Rate / 8
	burst := l.Burst / 8
	// Runtimes pass bursts up to 2^32-1 bits for "no burst limit"; at a
	// low rate the bucket's fill time overflows the kernel's 32 bits, so
	// it is capped there (minutes of filling: no limit in practice). The
	// ticks round up: the kernel derives the bucket's size in bytes from
	// them, and one byte short of a frame drops every full-size frame.
	ticks := min(math.Ceil(float64(burst)/float64(rate)*1e6*netlink.TickInUsec()), math.MaxUint32)
	bucket := ticks / netlink.TickInUsec() / 1e6 * float64(rate) // bytes, after the cap
	queue := float64(rate)*tbfLatency.Seconds() + min(float64(burst), bucket)
	return &netlink.Tbf{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: index, Handle: netlink.MakeHandle(1, 0), Parent: netlink.HANDLE_ROOT},
		Rate:       rate,
		Buffer:     uint32(ticks),
		Limit:      uint32(min(queue, math.MaxUint32)),
	}
}
