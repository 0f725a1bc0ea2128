package netstack

import (
	"bytes"
	"net/netip"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/refs"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"

	"tapswitch/internal/testutil"
	vswitch "tapswitch/switch"
	"tapswitch/switch/porttest"
)

// newBarePort returns a Port with no switch, for tests that drive
// WriteBatch and ReadBatch themselves.
func newBarePort(t *testing.T, queueLen int) *Port {
	t.Helper()
	testutil.CheckGoroutines(t)
	p, err := New(Options{MAC: gwMAC, QueueLen: queueLen, Addrs: []netip.Prefix{netip.MustParsePrefix("10.244.0.1/24")}})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		p.Close()
		refs.DoRepeatedLeakCheck()
	})
	return p
}

func framesOf(pool *vswitch.Pool, bs ...[]byte) []*vswitch.Frame {
	var fs []*vswitch.Frame
	for _, b := range bs {
		f := pool.Get()
		f.SetLen(copy(f.ReadBuf(0), b))
		fs = append(fs, f)
	}
	return fs
}

// TestQueueFull checks that the stack's replies beyond the queue are
// dropped and counted, and that WriteBatch does not wait for a reader.
func TestQueueFull(t *testing.T) {
	p := newBarePort(t, 2)
	pool := vswitch.NewPool(vswitch.SmallBufSize)
	var reqs [][]byte
	for i := range 5 {
		reqs = append(reqs, porttest.ARPRequest(porttest.MAC(byte(0x10+i)), netip.AddrFrom4([4]byte{10, 244, 0, byte(2 + i)}), netGW4.Addr()))
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if n, err := p.WriteBatch(framesOf(pool, reqs...)); n != 5 || err != nil {
			t.Errorf("WriteBatch = %d, %v; want 5, nil", n, err)
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("WriteBatch blocked with nobody reading")
	}
	if d := p.Drops()["out_queue_full"]; d != 3 {
		t.Errorf("Drops()[out_queue_full] = %d, want 3", d)
	}
	batch := make([]*vswitch.Frame, 8)
	n, err := p.ReadBatch(0, batch)
	if n != 2 || err != nil {
		t.Fatalf("ReadBatch = %d, %v; want 2, nil", n, err)
	}
	for i, f := range batch[:n] {
		if a := vswitch.ARP(vswitch.Ether(f.Bytes()).Payload()); a.Op() != 2 || a.TPA() != netip.AddrFrom4([4]byte{10, 244, 0, byte(2 + i)}) {
			t.Errorf("frame %d: ARP op %d for %s, want a reply to the %d. request", i, a.Op(), a.TPA(), i+1)
		}
		f.Release()
	}
}

// TestBadFrames checks that frames the Port cannot take are dropped and
// counted without an error: too short, too long without GSO, a UDP
// super-frame that is not UDP, and a flooded frame for another MAC.
func TestBadFrames(t *testing.T) {
	p := newBarePort(t, 0)
	pool := vswitch.NewPool(vswitch.SmallBufSize)
	other := porttest.Ether(porttest.MAC(0x77), podMAC, vswitch.EtherTypeIP4, ipv4Packet(pod4, netGW4.Addr(), 1, icmpEcho(8, 1, 1, nil)))
	fs := framesOf(pool, make([]byte, 10), make([]byte, 1600), porttest.ARPRequest(podMAC, pod4, netGW4.Addr()), other)
	fs[2].Offload.GSOType = vswitch.GSOUDPL4
	fs[2].Offload.GSOSize = 100
	if n, err := p.WriteBatch(fs); n != 4 || err != nil {
		t.Errorf("WriteBatch = %d, %v; want 4, nil", n, err)
	}
	if d := p.Drops()["in_bad_frame"]; d != 3 {
		t.Errorf("Drops()[in_bad_frame] = %d, want 3", d)
	}
	if d := p.Drops()["in_not_ours"]; d != 1 {
		t.Errorf("Drops()[in_not_ours] = %d, want 1", d)
	}
}

// udpSuperFrame returns a UDP GSO super-frame from the pod to dst whose
// payload, datagrams of mss bytes each, is payloads joined, and its
// Offload.
func udpSuperFrame(dst netip.AddrPort, mss int, payloads ...[]byte) ([]byte, vswitch.Offload) {
	pkt := udpDatagram(netip.AddrPortFrom(pod4, 40000), dst, bytes.Join(payloads, nil))
	return porttest.Ether(gwMAC, podMAC, vswitch.EtherTypeIP4, pkt), vswitch.Offload{
		GSOType:    vswitch.GSOUDPL4,
		GSOSize:    uint16(mss),
		NeedsCsum:  true,
		CsumStart:  vswitch.EtherHdrLen + header.IPv4MinimumSize,
		CsumOffset: 6, // the UDP checksum field (RFC 768)
	}
}

// TestUDPSuperFrame checks that valid UDP super-frames reach a socket of
// the gateway as their datagrams, in order: a batch of two, so the second
// is cut with the room the first left behind.
func TestUDPSuperFrame(t *testing.T) {
	p := newBarePort(t, 0)
	dst := netip.AddrPortFrom(netGW4.Addr(), 9999)
	full := fullAddress(dst.Addr(), dst.Port())
	c, err := gonet.DialUDP(p.stack, &full, nil, netProto(dst.Addr()))
	if err != nil {
		t.Fatalf("listen udp %s: %v", dst, err)
	}
	defer c.Close()
	first := [][]byte{bytes.Repeat([]byte("a"), 100), bytes.Repeat([]byte("b"), 100), []byte("the last, shorter")}
	second := [][]byte{bytes.Repeat([]byte("c"), 50), []byte("d")}
	pool := vswitch.NewPool(vswitch.SmallBufSize)
	var fs []*vswitch.Frame
	for _, sf := range []struct {
		mss      int
		payloads [][]byte
	}{{100, first}, {50, second}} {
		b, o := udpSuperFrame(dst, sf.mss, sf.payloads...)
		f := framesOf(pool, b)[0]
		f.Offload = o
		fs = append(fs, f)
	}
	if n, err := p.WriteBatch(fs); n != 2 || err != nil {
		t.Fatalf("WriteBatch = %d, %v; want 2, nil", n, err)
	}
	// The stack queued every datagram on the socket before WriteBatch
	// returned, so the read after the last finds nothing at once.
	want := append(first, second...)
	buf := make([]byte, 1500)
	for i := range len(want) + 1 {
		wait := 5 * time.Second
		if i == len(want) {
			wait = 50 * time.Millisecond
		}
		c.SetReadDeadline(time.Now().Add(wait))
		n, from, err := c.ReadFrom(buf)
		if i == len(want) {
			if err == nil {
				t.Errorf("datagram %d = %q, want only %d", i, buf[:n], len(want))
			}
			break
		}
		if err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
		if !bytes.Equal(buf[:n], want[i]) {
			t.Errorf("datagram %d = %q, want %q", i, buf[:n], want[i])
		}
		if got := from.String(); got != "10.244.0.2:40000" {
			t.Errorf("datagram %d from %s, want 10.244.0.2:40000", i, got)
		}
	}
	if d := p.Drops(); d["in_bad_frame"] != 0 || d["in_no_nic"] != 0 {
		t.Errorf("Drops() = %v, want no inbound drops", d)
	}
}

// BenchmarkWriteUDPSuperFrame measures the delivery of a UDP super-frame
// of three datagrams into the stack, up to a UDP endpoint that reads them.
func BenchmarkWriteUDPSuperFrame(b *testing.B) {
	testutil.CheckGoroutines(b)
	p, err := New(Options{MAC: gwMAC, Addrs: []netip.Prefix{netGW4}})
	if err != nil {
		b.Fatalf("New: %v", err)
	}
	defer p.Close()
	dst := netip.AddrPortFrom(netGW4.Addr(), 9999)
	var wq waiter.Queue
	ep, terr := p.stack.NewEndpoint(udp.ProtocolNumber, ipv4.ProtocolNumber, &wq)
	if terr != nil {
		b.Fatalf("NewEndpoint: %v", terr)
	}
	defer ep.Close()
	full := fullAddress(dst.Addr(), dst.Port())
	if terr := ep.Bind(full); terr != nil {
		b.Fatalf("Bind(%s): %v", dst, terr)
	}
	const mss = 1000
	raw, o := udpSuperFrame(dst, mss, bytes.Repeat([]byte("x"), 3*mss))
	pool := vswitch.NewPool(vswitch.SmallBufSize)
	frames := make([]*vswitch.Frame, 1)
	buf := make([]byte, 1500)
	var w tcpip.SliceWriter
	b.ReportAllocs()
	b.SetBytes(3 * mss)
	for b.Loop() {
		f := pool.Get()
		f.SetLen(copy(f.ReadBuf(0), raw))
		f.Offload = o
		frames[0] = f
		p.WriteBatch(frames)
		for range 3 {
			w = buf
			if res, terr := ep.Read(&w, tcpip.ReadOptions{}); terr != nil || res.Count != mss {
				b.Fatalf("Read = %+v, %v; want %d bytes", res, terr, mss)
			}
		}
	}
}

// TestCloseWhileWriting runs Close against a busy writer and reader, for
// the race detector and the leak checks.
func TestCloseWhileWriting(t *testing.T) {
	p := newBarePort(t, 16)
	pool := vswitch.NewPool(vswitch.SmallBufSize)
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			if _, err := p.WriteBatch(framesOf(pool, porttest.ARPRequest(podMAC, pod4, netGW4.Addr()))); err != nil {
				return
			}
		}
	})
	wg.Go(func() {
		batch := make([]*vswitch.Frame, 8)
		for {
			n, err := p.ReadBatch(0, batch)
			for _, f := range batch[:n] {
				f.Release()
			}
			if err != nil {
				return
			}
		}
	})
	time.Sleep(50 * time.Millisecond)
	p.Close()
	wg.Wait()
}
