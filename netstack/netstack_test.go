package netstack

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/refs"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"tapswitch/internal/testutil"
	vswitch "tapswitch/switch"
	"tapswitch/switch/porttest"
)

// TestMain turns on gVisor's reference leak checking: every PacketBuffer
// and buffer chunk is registered while alive, and a leak panics. Each test
// also checks after its Close (see newGWNet); this is the final sweep.
func TestMain(m *testing.M) {
	refs.SetLeakMode(refs.LeaksPanic)
	code := m.Run()
	refs.DoLeakCheck()
	os.Exit(code)
}

// The gateway's MAC (its addresses are netGW4 and netGW6), and the pod of
// testNet: pod4 and pod6 at podMAC.
var (
	gwMAC  = vswitch.MAC{0x02, 0x00, 0x00, 0x00, 0x00, 0x01}
	podMAC = porttest.MAC(0x10)
	pod4   = netip.MustParseAddr("10.244.0.2")
	pod6   = netip.MustParseAddr("fd00:244::2")
)

// testNet is a gwNet with one porttest pod port, for tests that write
// frames as the pod and read what the pod receives.
type testNet struct {
	*gwNet
	pod *porttest.Port
}

// newTestNet builds a testNet with newGWNet(t, opts), whose cleanup
// closes everything, the pod port included, then checks for leaked
// references and goroutines. The pod is on the switch before the
// gateway, so it receives the gateway's first router advertisement.
func newTestNet(t *testing.T, opts Options) *testNet {
	t.Helper()
	pod := porttest.New("pod")
	return &testNet{gwNet: newGWNet(t, opts, pod), pod: pod}
}

// await returns the first frame the pod received that match accepts.
func (n *testNet) await(t *testing.T, what string, match func(vswitch.Ether) bool) vswitch.Ether {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		for _, b := range n.pod.Written() {
			if e := vswitch.Ether(b); match(e) {
				return e
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("no %s reached the pod; it got %d frames", what, len(n.pod.Written()))
	return nil
}

// ipv4Packet returns an IPv4 header (no options, TTL 64) and payload.
func ipv4Packet(src, dst netip.Addr, proto byte, payload []byte) []byte {
	b := make([]byte, 20+len(payload))
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	binary.BigEndian.PutUint16(b[4:], 0x1234)
	b[8] = 64
	b[9] = proto
	s, d := src.As4(), dst.As4()
	copy(b[12:], s[:])
	copy(b[16:], d[:])
	binary.BigEndian.PutUint16(b[10:], ^vswitch.Checksum(b[:20], 0))
	copy(b[20:], payload)
	return b
}

// icmpEcho returns an ICMP or ICMPv6 echo message of type typ; the
// checksum is left zero.
func icmpEcho(typ byte, id, seq uint16, data []byte) []byte {
	b := make([]byte, 8+len(data))
	b[0] = typ
	binary.BigEndian.PutUint16(b[4:], id)
	binary.BigEndian.PutUint16(b[6:], seq)
	copy(b[8:], data)
	return b
}

// ipv6Packet returns an IPv6 header and an ICMPv6 payload, filling in the
// ICMPv6 checksum over the pseudo-header (RFC 8200 section 8.1).
func ipv6Packet(src, dst netip.Addr, hopLimit byte, icmp []byte) []byte {
	b := make([]byte, 40+len(icmp))
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:], uint16(len(icmp)))
	b[6] = 58 // ICMPv6
	b[7] = hopLimit
	s, d := src.As16(), dst.As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	copy(b[40:], icmp)
	binary.BigEndian.PutUint16(b[42:], ^vswitch.Checksum(b[40:], pseudoSum6(b)))
	return b
}

// pseudoSum6 is the unfolded sum of the ICMPv6 pseudo-header of packet b.
func pseudoSum6(b []byte) uint32 {
	var sum uint32
	for i := 8; i < 40; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	return sum + uint32(binary.BigEndian.Uint16(b[4:])) + 58
}

// solicitedNode returns the solicited-node multicast address of a and its
// MAC (RFC 4291 section 2.7.1, RFC 2464 section 7).
func solicitedNode(a netip.Addr) (netip.Addr, vswitch.MAC) {
	a16 := a.As16()
	m := [16]byte{0xff, 0x02, 11: 0x01, 12: 0xff, 13: a16[13], 14: a16[14], 15: a16[15]}
	return netip.AddrFrom16(m), vswitch.MAC{0x33, 0x33, 0xff, a16[13], a16[14], a16[15]}
}

func TestARP(t *testing.T) {
	n := newTestNet(t, Options{})
	n.pod.Inject(porttest.ARPRequest(podMAC, pod4, netGW4.Addr()))
	e := n.await(t, "ARP reply", func(e vswitch.Ether) bool { return e.Type() == vswitch.EtherTypeARP })
	if e.Dst() != podMAC || e.Src() != gwMAC {
		t.Errorf("reply ether %s -> %s, want %s -> %s", e.Src(), e.Dst(), gwMAC, podMAC)
	}
	a := vswitch.ARP(e.Payload())
	checks := []struct {
		name      string
		got, want any
	}{
		{"op", a.Op(), uint16(2)},
		{"htype", a.HType(), uint16(1)},
		{"ptype", a.PType(), uint16(vswitch.EtherTypeIP4)},
		{"sha", a.SHA(), gwMAC},
		{"spa", a.SPA(), netGW4.Addr()},
		{"tha", a.THA(), podMAC},
		{"tpa", a.TPA(), pod4},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("ARP reply %s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

func TestPing4(t *testing.T) {
	n := newTestNet(t, Options{})
	// The ARP request teaches the gateway the pod's MAC, so its reply
	// needs no resolution of its own.
	n.pod.Inject(porttest.ARPRequest(podMAC, pod4, netGW4.Addr()))
	n.await(t, "ARP reply", func(e vswitch.Ether) bool { return e.Type() == vswitch.EtherTypeARP })

	data := []byte("tapswitch ping payload 0123456789")
	req := icmpEcho(8, 0xbeef, 7, data)
	binary.BigEndian.PutUint16(req[2:], ^vswitch.Checksum(req, 0))
	n.pod.Inject(porttest.Ether(gwMAC, podMAC, vswitch.EtherTypeIP4, ipv4Packet(pod4, netGW4.Addr(), 1, req)))

	e := n.await(t, "echo reply", func(e vswitch.Ether) bool {
		return e.Type() == vswitch.EtherTypeIP4 && len(e.Payload()) >= 28 && e.Payload()[9] == 1 && e.Payload()[20] == 0
	})
	ip := e.Payload()
	ihl := int(ip[0]&0xf) * 4
	total := int(binary.BigEndian.Uint16(ip[2:]))
	if e.Dst() != podMAC || e.Src() != gwMAC {
		t.Errorf("reply ether %s -> %s, want %s -> %s", e.Src(), e.Dst(), gwMAC, podMAC)
	}
	if src, dst := netip.AddrFrom4([4]byte(ip[12:16])), netip.AddrFrom4([4]byte(ip[16:20])); src != netGW4.Addr() || dst != pod4 {
		t.Errorf("reply ip %s -> %s, want %s -> %s", src, dst, netGW4.Addr(), pod4)
	}
	if c := ^vswitch.Checksum(ip[:ihl], 0); c != 0 {
		t.Errorf("reply ip header checksum does not verify (%#04x)", c)
	}
	icmp := ip[ihl:total]
	if c := ^vswitch.Checksum(icmp, 0); c != 0 {
		t.Errorf("reply icmp checksum does not verify (%#04x)", c)
	}
	checkEcho(t, icmp, 0xbeef, 7, data)
}

// checkEcho checks an echo reply's identifier, sequence number and payload.
func checkEcho(t *testing.T, icmp []byte, id, seq uint16, data []byte) {
	t.Helper()
	if gotID, gotSeq := binary.BigEndian.Uint16(icmp[4:]), binary.BigEndian.Uint16(icmp[6:]); gotID != id || gotSeq != seq {
		t.Errorf("reply id/seq = %#x/%d, want %#x/%d", gotID, gotSeq, id, seq)
	}
	if !bytes.Equal(icmp[8:], data) {
		t.Errorf("reply payload = %q, want %q", icmp[8:], data)
	}
}

func TestPing6(t *testing.T) {
	n := newTestNet(t, Options{})

	// Neighbour solicitation for the gateway, with the pod's MAC in a
	// source link-layer address option (RFC 4861 section 4.3).
	snm, snmMAC := solicitedNode(netGW6.Addr())
	ns := make([]byte, 32)
	ns[0] = 135
	g16 := netGW6.Addr().As16()
	copy(ns[8:], g16[:])
	ns[24], ns[25] = 1, 1
	copy(ns[26:], podMAC[:])
	n.pod.Inject(porttest.Ether(snmMAC, podMAC, vswitch.EtherTypeIP6, ipv6Packet(pod6, snm, 255, ns)))

	isICMP6 := func(e vswitch.Ether, typ byte) bool {
		p := e.Payload()
		return e.Type() == vswitch.EtherTypeIP6 && len(p) >= 48 && p[6] == 58 && p[40] == typ
	}
	e := n.await(t, "neighbour advertisement", func(e vswitch.Ether) bool { return isICMP6(e, 136) })
	na := e.Payload()[40:]
	if target := netip.AddrFrom16([16]byte(na[8:24])); target != netGW6.Addr() {
		t.Errorf("advertisement target = %s, want %s", target, netGW6.Addr())
	}
	if na[4]&0x40 == 0 {
		t.Errorf("advertisement flags %#x lack solicited", na[4])
	}
	if len(na) < 32 || na[24] != 2 || vswitch.MAC(na[26:32]) != gwMAC {
		t.Errorf("advertisement lacks target link-layer option %s: % x", gwMAC, na[24:])
	}

	data := []byte("tapswitch ping6")
	req := icmpEcho(128, 0x6666, 3, data)
	n.pod.Inject(porttest.Ether(gwMAC, podMAC, vswitch.EtherTypeIP6, ipv6Packet(pod6, netGW6.Addr(), 64, req)))
	e = n.await(t, "echo reply", func(e vswitch.Ether) bool { return isICMP6(e, 129) })
	ip := e.Payload()
	if src, dst := netip.AddrFrom16([16]byte(ip[8:24])), netip.AddrFrom16([16]byte(ip[24:40])); src != netGW6.Addr() || dst != pod6 {
		t.Errorf("reply ip %s -> %s, want %s -> %s", src, dst, netGW6.Addr(), pod6)
	}
	icmp := ip[40 : 40+int(binary.BigEndian.Uint16(ip[4:]))]
	if c := ^vswitch.Checksum(icmp, pseudoSum6(ip)); c != 0 {
		t.Errorf("reply icmpv6 checksum does not verify (%#04x)", c)
	}
	checkEcho(t, icmp, 0x6666, 3, data)
}

// TestClose checks that Close stops every goroutine, that ReadBatch then
// returns ErrClosed, and that WriteBatch releases its frames and fails.
func TestClose(t *testing.T) {
	testutil.CheckGoroutines(t)
	p, err := New(Options{MAC: gwMAC, Addrs: []netip.Prefix{netip.MustParsePrefix("10.244.0.1/24")}})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	readErr := make(chan error, 1)
	go func() {
		_, err := p.ReadBatch(0, make([]*vswitch.Frame, 8))
		readErr <- err
	}()
	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := <-readErr; !errors.Is(err, vswitch.ErrClosed) {
		t.Errorf("ReadBatch after Close = %v, want ErrClosed", err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}

	pool := vswitch.NewPool(vswitch.SmallBufSize)
	frames := []*vswitch.Frame{pool.Get(), pool.Get()}
	for _, f := range frames {
		f.SetLen(copy(f.ReadBuf(0), porttest.ARPRequest(podMAC, pod4, netGW4.Addr())))
	}
	n, err := p.WriteBatch(frames)
	if n != 0 || !errors.Is(err, vswitch.ErrClosed) {
		t.Errorf("WriteBatch after Close = %d, %v; want 0, ErrClosed", n, err)
	}
	for i, f := range frames {
		// Release zeroes the length of a frame it returns to the pool.
		if f.Len() != 0 {
			t.Errorf("frame %d not released (len %d)", i, f.Len())
		}
	}
	refs.DoRepeatedLeakCheck()
}

// TestLeakCheckOn proves the leak checker is live: a PacketBuffer without
// its DecRef makes the check panic.
func TestLeakCheckOn(t *testing.T) {
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData([]byte("leak"))})
	func() {
		defer func() {
			if recover() == nil {
				t.Error("DoRepeatedLeakCheck did not panic on a live PacketBuffer")
			}
		}()
		refs.DoRepeatedLeakCheck()
	}()
	pkt.DecRef()
	refs.DoRepeatedLeakCheck()
}

func TestOptionsErrors(t *testing.T) {
	v4 := netip.MustParsePrefix("10.244.0.1/24")
	tests := []struct {
		name string
		opts Options
	}{
		{"zero mac", Options{Addrs: []netip.Prefix{v4}}},
		{"multicast mac", Options{MAC: vswitch.Broadcast, Addrs: []netip.Prefix{v4}}},
		{"no addrs", Options{MAC: gwMAC}},
		{"invalid prefix", Options{MAC: gwMAC, Addrs: []netip.Prefix{{}}}},
		{"mapped v4", Options{MAC: gwMAC, Addrs: []netip.Prefix{netip.MustParsePrefix("::ffff:10.244.0.1/120")}}},
		{"mtu too big", Options{MAC: gwMAC, MTU: 10000, Addrs: []netip.Prefix{v4}}},
		{"v6 small mtu", Options{MAC: gwMAC, MTU: 1000, Addrs: []netip.Prefix{netip.MustParsePrefix("fd00::1/64")}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if p, err := New(tt.opts); err == nil {
				p.Close()
				t.Errorf("New(%+v) succeeded, want an error", tt.opts)
			}
		})
	}
}

// TestNoARPForOthers checks that the gateway, whose NIC spoofs for egress,
// answers ARP only for its own address: a request for another pod's
// address gets no reply and is counted.
func TestNoARPForOthers(t *testing.T) {
	n := newTestNet(t, Options{})
	other := netip.MustParseAddr("10.244.0.77")
	n.pod.Inject(porttest.ARPRequest(podMAC, pod4, other))
	n.pod.Inject(porttest.ARPRequest(podMAC, pod4, netGW4.Addr()))
	n.await(t, "ARP reply for the gateway", func(e vswitch.Ether) bool {
		return e.Type() == vswitch.EtherTypeARP && vswitch.ARP(e.Payload()).SPA() == netGW4.Addr()
	})
	for _, b := range n.pod.Written() {
		if e := vswitch.Ether(b); e.Type() == vswitch.EtherTypeARP && vswitch.ARP(e.Payload()).SPA() == other {
			t.Fatalf("the gateway answered ARP for %s with %s", other, vswitch.ARP(e.Payload()).SHA())
		}
	}
	if d := n.gw.Drops()["in_not_ours"]; d != 1 {
		t.Errorf("Drops()[in_not_ours] = %d, want 1", d)
	}
}
