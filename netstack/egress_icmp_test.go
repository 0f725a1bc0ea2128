package netstack

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"

	vswitch "tapswitch/switch"
	"tapswitch/switch/porttest"

	"tapswitch/internal/testutil"
)

// The ICMP errors of egress: a host dial or first send that finds no
// route gives the pod a destination unreachable error (egress_icmp.go).

// errnoDial is redirectDial for the addresses in to, and for any other
// address fails as net.Dialer does when connect(2) returns errno.
func errnoDial(to map[netip.AddrPort]netip.AddrPort, errno syscall.Errno) func(context.Context, string, string) (net.Conn, error) {
	redirect := redirectDial(to)
	return func(ctx context.Context, network, address string) (net.Conn, error) {
		if ap, err := netip.ParseAddrPort(address); err == nil {
			if _, ok := to[ap]; ok {
				return redirect(ctx, network, address)
			}
		}
		return nil, &net.OpError{Op: "dial", Net: network, Err: os.NewSyscallError("connect", errno)}
	}
}

// TestEgressTCPUnreachable checks that a host dial finding no route makes
// the gateway send the pod an ICMP or ICMPv6 destination unreachable
// error, and that the pod's connect fails on it with the matching error
// instead of retransmitting its SYN (the pod's deadline is far shorter
// than its retransmissions). gVisor pods act only on ICMPv6 code 0 (its
// ipv6 handleICMP ignores code 3, address unreachable), so EHOSTUNREACH
// over IPv6 is checked on the wire in TestEgressICMPUnreachableMessage.
func TestEgressTCPUnreachable(t *testing.T) {
	tests := []struct {
		name  string
		dst   netip.AddrPort
		errno syscall.Errno
		want  tcpip.Error
	}{
		{"v4 host", outside4, syscall.EHOSTUNREACH, &tcpip.ErrHostUnreachable{}},
		{"v4 net", outside4, syscall.ENETUNREACH, &tcpip.ErrNetworkUnreachable{}},
		{"v4 net down", outside4, syscall.ENETDOWN, &tcpip.ErrNetworkUnreachable{}},
		{"v6 net", outside6, syscall.ENETUNREACH, &tcpip.ErrNetworkUnreachable{}},
		// An IPv6 destination on a node without IPv6 addresses or stack.
		{"v6 no address", outside6, syscall.EADDRNOTAVAIL, &tcpip.ErrNetworkUnreachable{}},
		{"v6 no stack", outside6, syscall.EAFNOSUPPORT, &tcpip.ErrNetworkUnreachable{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, pod := newEgressNet(t, Options{Dial: errnoDial(nil, tt.errno)}, nil)
			c, err := tryPodDialTCP(pod, tt.dst, 5*time.Second)
			if err == nil {
				c.Close()
			}
			if !isTCPIPError(err, tt.want) {
				t.Fatalf("pod dial %s = %v, want %q", tt.dst, err, tt.want)
			}
			testutil.WaitFor(t, "no active TCP flow", func() bool { return n.gw.EgressStats().TCPActive == 0 })
			s := n.gw.EgressStats()
			if s.TCPUnreachable != 1 || s.ICMPSent != 1 || s.DialFailures != 1 || s.TCPRefused != 0 || s.TCPTimeouts != 0 {
				t.Errorf("stats = %+v, want 1 dial failed unreachable and 1 ICMP error", s)
			}
		})
	}
}

// TestEgressICMPUnreachableMessage checks the errors on the wire: sent to
// the pod from the gateway's address, of the right type and code, with
// valid checksums, quoting the whole invoking packet byte for byte (so the
// SYN's sequence number, which Linux checks, is the real one), for TCP
// SYNs and for a UDP flow's first datagram.
func TestEgressICMPUnreachableMessage(t *testing.T) {
	tcp4 := tcpSYN(netip.AddrPortFrom(pod4, 40000), outside4)
	tcp6 := tcpSYN(netip.AddrPortFrom(pod6, 40000), outside6)
	udp4 := udpDatagram(netip.AddrPortFrom(pod4, 40001), netip.AddrPortFrom(outside4.Addr(), 53), []byte("query four"))
	udp6 := udpDatagram(netip.AddrPortFrom(pod6, 40001), netip.AddrPortFrom(outside6.Addr(), 53), []byte("query six"))
	tests := []struct {
		name      string
		pkt       []byte
		errno     syscall.Errno
		typ, code byte
	}{
		{"tcp4 net", tcp4, syscall.ENETUNREACH, 3, 0},
		{"tcp4 host", tcp4, syscall.EHOSTUNREACH, 3, 1},
		{"tcp6 net", tcp6, syscall.ENETUNREACH, 1, 0},
		{"tcp6 host", tcp6, syscall.EHOSTUNREACH, 1, 3},
		{"udp4 host", udp4, syscall.EHOSTUNREACH, 3, 1},
		{"udp6 net", udp6, syscall.ENETUNREACH, 1, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := newWireNet(t, Options{Dial: errnoDial(nil, tt.errno)})
			icmp := n.injectAndAwaitICMP(t, tt.pkt)
			if icmp[0] != tt.typ || icmp[1] != tt.code {
				t.Errorf("icmp type/code = %d/%d, want %d/%d", icmp[0], icmp[1], tt.typ, tt.code)
			}
			if !bytes.Equal(icmp[4:8], make([]byte, 4)) {
				t.Errorf("icmp unused field = % x, want zeros", icmp[4:8])
			}
			if !bytes.Equal(icmp[8:], tt.pkt) {
				t.Errorf("quote = % x\nwant the invoking packet % x", icmp[8:], tt.pkt)
			}
			testutil.WaitFor(t, "the flow to end", func() bool { s := n.gw.EgressStats(); return s.TCPActive == 0 && s.UDPActive == 0 })
			s := n.gw.EgressStats()
			if s.ICMPSent != 1 || s.TCPUnreachable+s.UDPUnreachable != 1 {
				t.Errorf("stats = %+v, want 1 flow unreachable and 1 ICMP error", s)
			}
		})
	}
}

// wireNet is a testNet whose gateway knows the pod's MAC from static
// neighbour entries, so its first packet to the pod needs no resolution.
type wireNet struct {
	*testNet
}

// newWireNet builds a wireNet with newTestNet(t, opts).
func newWireNet(t *testing.T, opts Options) *wireNet {
	t.Helper()
	n := newTestNet(t, opts)
	for _, a := range []netip.Addr{pod4, pod6} {
		if err := n.gw.stack.AddStaticNeighbor(nicID, netProto(a), tcpipAddress(a), tcpip.LinkAddress(podMAC[:])); err != nil {
			t.Fatalf("AddStaticNeighbor(%s): %v", a, err)
		}
	}
	return &wireNet{n}
}

// injectAndAwaitICMP sends the IPv4 or IPv6 packet pkt from the pod to
// the gateway, waits for the ICMP or ICMPv6 destination unreachable error
// about it, checks its addresses and checksums, and returns the ICMP
// message.
func (n *wireNet) injectAndAwaitICMP(t *testing.T, pkt []byte) []byte {
	t.Helper()
	v6 := pkt[0]>>4 == 6
	etherType := uint16(vswitch.EtherTypeIP4)
	if v6 {
		etherType = vswitch.EtherTypeIP6
	}
	n.pod.Inject(porttest.Ether(gwMAC, podMAC, etherType, pkt))
	e := n.await(t, "destination unreachable", func(e vswitch.Ether) bool {
		p := e.Payload()
		if v6 {
			return e.Type() == vswitch.EtherTypeIP6 && len(p) >= 48 && p[6] == 58 && p[40] == 1
		}
		return e.Type() == vswitch.EtherTypeIP4 && len(p) >= 28 && p[9] == 1 && p[int(p[0]&0xf)*4] == 3
	})
	if e.Dst() != podMAC || e.Src() != gwMAC {
		t.Errorf("error ether %s -> %s, want %s -> %s", e.Src(), e.Dst(), gwMAC, podMAC)
	}
	ip := e.Payload()
	if v6 {
		if src, dst := netip.AddrFrom16([16]byte(ip[8:24])), netip.AddrFrom16([16]byte(ip[24:40])); src != netGW6.Addr() || dst != pod6 {
			t.Errorf("error ip %s -> %s, want %s -> %s", src, dst, netGW6.Addr(), pod6)
		}
		icmp := ip[40 : 40+int(binary.BigEndian.Uint16(ip[4:]))]
		if c := ^vswitch.Checksum(icmp, pseudoSum6(ip)); c != 0 {
			t.Errorf("icmpv6 checksum does not verify (%#04x)", c)
		}
		if len(ip) > 1280 {
			t.Errorf("error of %d bytes, more than 1280", len(ip))
		}
		return icmp
	}
	if src, dst := netip.AddrFrom4([4]byte(ip[12:16])), netip.AddrFrom4([4]byte(ip[16:20])); src != netGW4.Addr() || dst != pod4 {
		t.Errorf("error ip %s -> %s, want %s -> %s", src, dst, netGW4.Addr(), pod4)
	}
	ihl := int(ip[0]&0xf) * 4
	if c := ^vswitch.Checksum(ip[:ihl], 0); c != 0 {
		t.Errorf("ip header checksum does not verify (%#04x)", c)
	}
	icmp := ip[ihl:int(binary.BigEndian.Uint16(ip[2:]))]
	if c := ^vswitch.Checksum(icmp, 0); c != 0 {
		t.Errorf("icmp checksum does not verify (%#04x)", c)
	}
	if len(ip) > 576 {
		t.Errorf("error of %d bytes, more than 576", len(ip))
	}
	return icmp
}

// TestEgressICMPQuoteLimit checks that an error about a large datagram
// quotes only as much of it as fits in 576 (IPv4) or 1280 (IPv6) bytes.
func TestEgressICMPQuoteLimit(t *testing.T) {
	for _, tt := range []struct {
		name     string
		src, dst netip.AddrPort
		max      int
	}{
		{"v4", netip.AddrPortFrom(pod4, 40002), outside4, 576},
		{"v6", netip.AddrPortFrom(pod6, 40002), outside6, 1280},
	} {
		t.Run(tt.name, func(t *testing.T) {
			n := newWireNet(t, Options{Dial: errnoDial(nil, syscall.ENETUNREACH)})
			pkt := udpDatagram(tt.src, tt.dst, bytes.Repeat([]byte("x"), 1400))
			icmp := n.injectAndAwaitICMP(t, pkt)
			ipHdr := 20
			if tt.dst.Addr().Is6() {
				ipHdr = 40
			}
			want := pkt[:tt.max-ipHdr-8]
			if !bytes.Equal(icmp[8:], want) {
				t.Errorf("quote of %d bytes, want the first %d of the datagram", len(icmp[8:]), len(want))
			}
		})
	}
}

// failWriteConn is a host side whose writes fail with err.
type failWriteConn struct {
	net.Conn
	err error
}

func (c failWriteConn) Write([]byte) (int, error) { return 0, c.err }

// TestEgressUDPFirstSendUnreachable checks that a UDP flow whose dial
// succeeds but whose first datagram finds no route sends the pod an error
// quoting that datagram, and that later failures are silent.
func TestEgressUDPFirstSendUnreachable(t *testing.T) {
	srv := udpServer(t, "4", udpEcho)
	dial := func(ctx context.Context, network, address string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "udp4", srv.String())
		if err != nil {
			return nil, err
		}
		return failWriteConn{c, &net.OpError{Op: "write", Net: "udp4", Err: os.NewSyscallError("write", syscall.EHOSTUNREACH)}}, nil
	}
	n := newWireNet(t, Options{Dial: dial})
	src, dst := netip.AddrPortFrom(pod4, 40003), netip.AddrPortFrom(outside4.Addr(), 53)
	first := udpDatagram(src, dst, []byte("first"))
	icmp := n.injectAndAwaitICMP(t, first)
	if icmp[0] != 3 || icmp[1] != 1 || !bytes.Equal(icmp[8:], first) {
		t.Errorf("error type/code %d/%d quoting % x, want 3/1 quoting the first datagram", icmp[0], icmp[1], icmp[8:])
	}
	n.pod.Inject(porttest.Ether(gwMAC, podMAC, vswitch.EtherTypeIP4, udpDatagram(src, dst, []byte("second"))))
	testutil.WaitFor(t, "both datagrams dropped", func() bool { return n.gw.EgressStats().UDPDropped == 2 })
	if s := n.gw.EgressStats(); s.ICMPSent != 1 || s.UDPUnreachable != 1 || s.UDPTotal != 1 || s.DialFailures != 0 {
		t.Errorf("stats = %+v, want one flow, its first datagram unreachable, one ICMP error", s)
	}
}
