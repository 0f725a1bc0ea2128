package daemon

import (
	"fmt"
	"net"
	"net/netip"
	"os"

	"golang.org/x/sys/unix"
)

// A UDP forward's socket learns the local address each datagram was sent
// to, and its flows answer from that address.
//
// A socket bound to a wildcard address (0.0.0.0:P or [::]:P, which is
// Kubernetes' hostPort without hostIP) takes datagrams sent to any address
// of the host, but a plain sendto lets the route back to the client pick
// the source of the answer. A client that sent to another of the host's
// addresses, with a connected socket (as resolvers use), drops that
// answer. RFC 1122 section 3.3.4.2: the source of a reply should be the
// specific destination of the request. So the socket asks for each
// datagram's destination (IP_PKTINFO, ip(7); IPV6_RECVPKTINFO, ipv6(7) and
// RFC 3542 section 6) and each flow sends with that address as its source.
// A socket bound to one address gets that address back every time, so
// every UDP forward takes the same path.

// newPktinfoBuffer returns a buffer for the control messages read with a
// datagram. A forward's socket receives one, an in_pktinfo or an
// in6_pktinfo, the larger.
func newPktinfoBuffer() []byte {
	return make([]byte, unix.CmsgSpace(unix.SizeofInet6Pktinfo))
}

// enablePktinfo makes the kernel pass each datagram's local address with
// it: IP_PKTINFO on an IPv4 socket, IPV6_RECVPKTINFO on an IPv6 one. On an
// IPv6 socket that also takes IPv4 (IPV6_V6ONLY off) the IPv4 datagrams
// come with an IPV6_PKTINFO holding a v4-mapped address (Linux's
// ip6_datagram_recv_specific_ctl), so the IPv6 option covers them too.
func enablePktinfo(pc *net.UDPConn, v6 bool) error {
	level, opt, name := unix.IPPROTO_IP, unix.IP_PKTINFO, "IP_PKTINFO"
	if v6 {
		level, opt, name = unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, "IPV6_RECVPKTINFO"
	}
	raw, err := pc.SyscallConn()
	if err != nil {
		return fmt.Errorf("set %s: %w", name, err)
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), level, opt, 1)
	}); err != nil {
		return fmt.Errorf("set %s: %w", name, err)
	}
	if serr != nil {
		return fmt.Errorf("set %s: %w", name, os.NewSyscallError("setsockopt", serr))
	}
	return nil
}

// pktinfoDst returns the local address of a datagram from the control
// messages read with it (ReadMsgUDPAddrPort's oob), unmapped; the zero
// Addr if they hold none. It does not allocate.
func pktinfoDst(oob []byte) netip.Addr {
	// unix.ParseOneSocketControlMessage reads a header without checking
	// that b holds one, so the loop does.
	for len(oob) >= unix.CmsgLen(0) {
		h, data, rest, err := unix.ParseOneSocketControlMessage(oob)
		if err != nil {
			return netip.Addr{}
		}
		switch {
		case h.Level == unix.IPPROTO_IP && h.Type == unix.IP_PKTINFO && len(data) >= unix.SizeofInet4Pktinfo:
			// struct in_pktinfo (linux/in.h): int ipi_ifindex, then
			// ipi_spec_dst, then ipi_addr. ipi_spec_dst is the local
			// address: the header's destination for unicast, the
			// receiving interface's address for a broadcast, which is
			// the address to answer from (fib_compute_spec_dst).
			return netip.AddrFrom4([4]byte(data[4:8]))
		case h.Level == unix.IPPROTO_IPV6 && h.Type == unix.IPV6_PKTINFO && len(data) >= unix.SizeofInet6Pktinfo:
			// struct in6_pktinfo (linux/ipv6.h): ipi6_addr, then
			// ipi6_ifindex. v4-mapped for IPv4 on a dual-stack socket.
			return netip.AddrFrom16([16]byte(data[:16])).Unmap()
		}
		oob = rest
	}
	return netip.Addr{}
}

// pktinfoSrc returns the control message that sends a datagram from local:
// IP_PKTINFO with ipi_spec_dst on an IPv4 socket, IPV6_PKTINFO on an IPv6
// one, where an IPv4 local address (an IPv4 client of a dual-stack socket)
// goes v4-mapped, which Linux's ip_cmsg_send accepts for IPv4. nil for the
// zero Addr: the route picks the source then. The interface index stays 0
// so the route to the client picks the interface: on IPv4 an index would
// make its primary address replace ipi_spec_dst (ip(7)). A link-local
// client carries its zone, which picks the interface of a link-local
// local address.
func pktinfoSrc(local netip.Addr, v6 bool) []byte {
	switch {
	case !local.IsValid():
		return nil
	case v6:
		return unix.PktInfo6(&unix.Inet6Pktinfo{Addr: local.As16()})
	default:
		return unix.PktInfo4(&unix.Inet4Pktinfo{Spec_dst: local.As4()})
	}
}
