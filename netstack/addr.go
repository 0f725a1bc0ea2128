package netstack

import (
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
)

// Conversions between netip addresses and gVisor's. An IPv4-mapped IPv6
// address is taken as the IPv4 address it maps: the stack has no other
// way to reach it.

// netProto is the network protocol of a: IPv4 or IPv6.
func netProto(a netip.Addr) tcpip.NetworkProtocolNumber {
	if a.Unmap().Is4() {
		return ipv4.ProtocolNumber
	}
	return ipv6.ProtocolNumber
}

// tcpipAddress converts a, without allocating.
func tcpipAddress(a netip.Addr) tcpip.Address {
	a = a.Unmap()
	if a.Is4() {
		return tcpip.AddrFrom4(a.As4())
	}
	return tcpip.AddrFrom16(a.As16())
}

// fullAddress is port of a on the stack's NIC.
func fullAddress(a netip.Addr, port uint16) tcpip.FullAddress {
	return tcpip.FullAddress{NIC: nicID, Addr: tcpipAddress(a), Port: port}
}

// addrPort converts a gVisor address and port.
func addrPort(a tcpip.Address, port uint16) netip.AddrPort {
	ip, _ := netip.AddrFromSlice(a.AsSlice())
	return netip.AddrPortFrom(ip, port)
}

// hostNetwork is the network of Options.Dial for transport ("tcp" or
// "udp") to a: "tcp4", "udp6" and so on.
func hostNetwork(transport string, a netip.Addr) string {
	if a.Unmap().Is4() {
		return transport + "4"
	}
	return transport + "6"
}
