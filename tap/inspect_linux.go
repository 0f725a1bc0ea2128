package tap

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	vswitch "tapswitch/switch"
)

// Link is what Inspect found of a device: enough to check that a pod's
// interface is still what the daemon made.
type Link struct {
	// TAP is true for a multiqueue TAP, the only kind the daemon makes.
	TAP  bool
	Kind string // netlink's name of the device kind, e.g. "tuntap", "veth"
	MAC  vswitch.MAC
	MTU  int
	Up   bool
	// Addrs are the device's addresses with their prefix lengths, without
	// link-local ones.
	Addrs []netip.Prefix
	// Gateways are the next hops of the default routes over the device.
	Gateways []netip.Addr
	// EgressRate is the rate of the device's root tbf qdisc in bits per
	// second (Config.Egress), 0 without one.
	EgressRate uint64
}

// Inspect looks up the device name in the netns at netnsPath. A netns
// that is gone satisfies netnsutil.Gone, a missing device matches
// ErrNotFound.
func Inspect(netnsPath, name string) (Link, error) {
	if err := ValidName(name); err != nil {
		return Link{}, err
	}
	h, err := newHandle(netnsPath)
	if err != nil {
		return Link{}, fmt.Errorf("tap: inspect %s: %w", name, err)
	}
	defer h.Close()
	link, err := h.LinkByName(name)
	if isNotFound(err) {
		return Link{}, fmt.Errorf("tap: inspect %s in %s: %w", name, netnsPath, ErrNotFound)
	} else if err != nil {
		return Link{}, fmt.Errorf("tap: look up %s in %s: %w", name, netnsPath, err)
	}
	attrs := link.Attrs()
	out := Link{TAP: isMultiqueueTAP(link), Kind: link.Type(), MTU: attrs.MTU, Up: attrs.Flags&unix.IFF_UP != 0}
	copy(out.MAC[:], attrs.HardwareAddr)

	addrs, err := h.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return Link{}, fmt.Errorf("tap: addresses of %s in %s: %w", name, netnsPath, err)
	}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if ip.IsLinkLocalUnicast() {
			continue
		}
		ones, _ := a.Mask.Size()
		out.Addrs = append(out.Addrs, netip.PrefixFrom(ip, ones))
	}

	routes, err := h.RouteList(link, netlink.FAMILY_ALL)
	if err != nil {
		return Link{}, fmt.Errorf("tap: routes of %s in %s: %w", name, netnsPath, err)
	}
	for _, r := range routes {
		if !isDefault(r) || r.Gw == nil {
			continue
		}
		if gw, ok := netip.AddrFromSlice(r.Gw); ok {
			out.Gateways = append(out.Gateways, gw.Unmap())
		}
	}
	qdiscs, err := h.QdiscList(link)
	if err != nil {
		return Link{}, fmt.Errorf("tap: qdiscs of %s in %s: %w", name, netnsPath, err)
	}
	for _, q := range qdiscs {
		if t, ok := q.(*netlink.Tbf); ok && t.Attrs().Parent == netlink.HANDLE_ROOT {
			out.EgressRate = t.Rate * 8
		}
	}
	return out, nil
}

// isDefault reports whether r is a default route of either family:
// netlink lists one with no Dst, or with a zero-length Dst.
func isDefault(r netlink.Route) bool {
	if r.Dst == nil {
		return true
	}
	ones, _ := r.Dst.Mask.Size()
	return ones == 0
}
