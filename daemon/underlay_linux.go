package daemon

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// underlay is the node's side of the network between nodes: the address
// VXLAN packets leave from and arrive at, and the MTU of its link.
type underlay struct {
	addr   netip.Addr
	ifname string
	mtu    int
}

// resolveUnderlay finds the underlay from --underlay: an address of this
// namespace, an interface name (its first global address, IPv4 first), or
// empty for the interface of the IPv4 default route (IPv6 when there is no
// IPv4 one).
func resolveUnderlay(spec string) (underlay, error) {
	if a, err := netip.ParseAddr(spec); err == nil {
		return underlayOfAddr(a.Unmap())
	}
	var link netlink.Link
	var err error
	if spec == "" {
		if link, err = defaultRouteLink(); err != nil {
			return underlay{}, err
		}
	} else if link, err = netlink.LinkByName(spec); err != nil {
		return underlay{}, fmt.Errorf("underlay %q: not an address, and no such interface: %w", spec, err)
	}
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		addrs, err := netlink.AddrList(link, family)
		if err != nil {
			return underlay{}, fmt.Errorf("underlay %s: addresses: %w", link.Attrs().Name, err)
		}
		for _, a := range addrs {
			ip, ok := netip.AddrFromSlice(a.IP)
			if ok && ip.Unmap().IsGlobalUnicast() {
				return underlay{addr: ip.Unmap(), ifname: link.Attrs().Name, mtu: link.Attrs().MTU}, nil
			}
		}
	}
	return underlay{}, fmt.Errorf("underlay %s has no global address", link.Attrs().Name)
}

// underlayOfAddr finds the interface that holds a.
func underlayOfAddr(a netip.Addr) (underlay, error) {
	family := netlink.FAMILY_V4
	if a.Is6() {
		family = netlink.FAMILY_V6
	}
	addrs, err := netlink.AddrList(nil, family)
	if err != nil {
		return underlay{}, fmt.Errorf("underlay %s: addresses: %w", a, err)
	}
	for _, x := range addrs {
		if ip, ok := netip.AddrFromSlice(x.IP); ok && ip.Unmap() == a {
			link, err := netlink.LinkByIndex(x.LinkIndex)
			if err != nil {
				return underlay{}, fmt.Errorf("underlay %s: its interface: %w", a, err)
			}
			return underlay{addr: a, ifname: link.Attrs().Name, mtu: link.Attrs().MTU}, nil
		}
	}
	return underlay{}, fmt.Errorf("underlay %s is not an address of this node", a)
}

// defaultRouteLink is the interface of the IPv4 default route, or of the
// IPv6 one when there is no IPv4 default route.
func defaultRouteLink() (netlink.Link, error) {
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := netlink.RouteList(nil, family)
		if err != nil {
			return nil, fmt.Errorf("underlay: routes: %w", err)
		}
		for _, r := range routes {
			if (r.Dst == nil || isDefault(r.Dst)) && r.LinkIndex > 0 {
				return netlink.LinkByIndex(r.LinkIndex)
			}
		}
	}
	return nil, errors.New("underlay: no default route to find it by; give --underlay ADDR|IFNAME")
}

func isDefault(n *net.IPNet) bool {
	ones, _ := n.Mask.Size()
	return ones == 0
}
