package netstack

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/refs"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"

	"tapswitch/internal/testutil"
	vswitch "tapswitch/switch"
	"tapswitch/switch/porttest"
)

// Made-up outside destinations (RFC 2544 benchmarking and RFC 3849
// documentation ranges); redirectDial maps them to loopback servers.
var (
	outside4 = netip.MustParseAddrPort("198.18.0.10:80")
	outside6 = netip.MustParseAddrPort("[2001:db8::10]:80")
)

// egressFamilies are the IPv4 and IPv6 variants of the egress tests.
var egressFamilies = []struct {
	name    string
	family  string // "4" or "6", of the loopback server
	outside netip.AddrPort
}{
	{"v4", "4", outside4},
	{"v6", "6", outside6},
}

// loopbackListenAddr returns the loopback listen address of family "4" or "6".
func loopbackListenAddr(family string) string {
	if family == "6" {
		return "[::1]:0"
	}
	return "127.0.0.1:0"
}

// tcpServer starts a loopback TCP server that runs handle on each
// connection and closes it afterwards. Create it before newGWNet: its
// cleanup then runs after the gateway's, which ends the connections.
func tcpServer(t *testing.T, family string, handle func(*net.TCPConn)) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp"+family, loopbackListenAddr(family))
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				handle(c.(*net.TCPConn))
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// udpServer starts a loopback UDP server that runs handle on each
// datagram; reply sends to the datagram's source.
func udpServer(t *testing.T, family string, handle func(pc net.PacketConn, from net.Addr, b []byte)) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenPacket("udp"+family, loopbackListenAddr(family))
	if err != nil {
		t.Fatalf("listen udp: %v", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			handle(pc, from, buf[:n])
		}
	}()
	t.Cleanup(func() {
		pc.Close()
		<-done
	})
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

func udpEcho(pc net.PacketConn, from net.Addr, b []byte) { pc.WriteTo(b, from) }

// newEgressNet builds a gateway whose Dial maps to (unless opts.Dial is
// set) and pod 2.
func newEgressNet(t *testing.T, opts Options, to map[netip.AddrPort]netip.AddrPort) (*gwNet, *Port) {
	t.Helper()
	if opts.Dial == nil {
		opts.Dial = redirectDial(to)
	}
	n := newGWNet(t, opts)
	return n, n.addPod(t, 2)
}

// isTCPIPError reports whether err, from gonet, carries want's message
// (gonet turns tcpip errors into plain errors with their text).
func isTCPIPError(err error, want tcpip.Error) bool {
	return err != nil && strings.Contains(err.Error(), want.String())
}

// echoTCP copies a connection back to itself, then half-closes.
func echoTCP(c *net.TCPConn) {
	io.Copy(c, c)
	c.CloseWrite()
}

// TestEgressTCPBulk sends 8 MiB from a pod to an outside echo server and
// checks that the same bytes come back, then the FIN.
func TestEgressTCPBulk(t *testing.T) {
	for _, fam := range egressFamilies {
		t.Run(fam.name, func(t *testing.T) {
			srv := tcpServer(t, fam.family, echoTCP)
			n, pod := newEgressNet(t, Options{}, map[netip.AddrPort]netip.AddrPort{fam.outside: srv})
			data := make([]byte, 8<<20)
			rand.NewChaCha8([32]byte{1}).Read(data)

			c := podDialTCP(t, pod, fam.outside)
			defer c.Close()
			wrote := make(chan error, 1)
			go func() {
				_, err := c.Write(data)
				if err == nil {
					err = c.CloseWrite()
				}
				wrote <- err
			}()
			got, err := io.ReadAll(c)
			if err != nil {
				t.Fatalf("pod read: %v", err)
			}
			if err := <-wrote; err != nil {
				t.Fatalf("pod write: %v", err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("echo differs: got %d bytes, want %d", len(got), len(data))
			}
			if s := n.gw.EgressStats(); s.TCPTotal != 1 || s.DialFailures != 0 {
				t.Errorf("stats = %+v, want 1 TCP flow and no dial failures", s)
			}
		})
	}
}

// TestEgressTCPHalfClose checks that the pod's FIN reaches the server while
// the other direction stays open: the server answers after reading EOF.
func TestEgressTCPHalfClose(t *testing.T) {
	srv := tcpServer(t, "4", func(c *net.TCPConn) {
		req, err := io.ReadAll(c)
		if err != nil {
			return
		}
		// Several writes after the EOF, so the answer is not one segment.
		for range 100 {
			fmt.Fprintf(c, "answer to %s\n", req)
		}
	})
	_, pod := newEgressNet(t, Options{}, map[netip.AddrPort]netip.AddrPort{outside4: srv})
	c := podDialTCP(t, pod, outside4)
	defer c.Close()
	if _, err := c.Write([]byte("question")); err != nil {
		t.Fatalf("write: %v", err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatalf("CloseWrite: %v", err)
	}
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if want := strings.Repeat("answer to question\n", 100); string(got) != want {
		t.Errorf("read %q, want 100 answers", got)
	}
}

// TestEgressTCPRefused checks that a refused host dial reaches the pod as
// a RST.
func TestEgressTCPRefused(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().(*net.TCPAddr).AddrPort()
	ln.Close()
	n, pod := newEgressNet(t, Options{}, map[netip.AddrPort]netip.AddrPort{outside4: closed})
	_, err = tryPodDialTCP(pod, outside4, 5*time.Second)
	if !isTCPIPError(err, &tcpip.ErrConnectionRefused{}) {
		t.Fatalf("pod dial = %v, want connection refused", err)
	}
	testutil.WaitFor(t, "no active TCP flow", func() bool { return n.gw.EgressStats().TCPActive == 0 })
	if s := n.gw.EgressStats(); s.TCPRefused != 1 || s.DialFailures != 1 || s.TCPTotal != 1 {
		t.Errorf("stats = %+v, want 1 flow, 1 refused, 1 dial failure", s)
	}
}

// TestEgressTCPResetFromHost checks that the far side's RST reaches the
// pod as a RST.
func TestEgressTCPResetFromHost(t *testing.T) {
	srv := tcpServer(t, "4", func(c *net.TCPConn) {
		b := make([]byte, 1)
		if _, err := c.Read(b); err != nil {
			return
		}
		c.SetLinger(0)
	})
	_, pod := newEgressNet(t, Options{}, map[netip.AddrPort]netip.AddrPort{outside4: srv})
	c := podDialTCP(t, pod, outside4)
	defer c.Close()
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatalf("write: %v", err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := io.ReadAll(c)
	if !isTCPIPError(err, &tcpip.ErrConnectionReset{}) {
		t.Fatalf("pod read after server RST = %v, want connection reset", err)
	}
}

// podConnectTCP connects from pod p to dst and also returns the endpoint,
// for what gonet cannot do (a RST).
func podConnectTCP(t *testing.T, p *Port, dst netip.AddrPort) (tcpip.Endpoint, *gonet.TCPConn) {
	t.Helper()
	full, proto := fullAddress(dst.Addr(), dst.Port()), netProto(dst.Addr())
	var wq waiter.Queue
	ep, terr := p.stack.NewEndpoint(tcp.ProtocolNumber, proto, &wq)
	if terr != nil {
		t.Fatalf("NewEndpoint: %v", terr)
	}
	entry, ch := waiter.NewChannelEntry(waiter.WritableEvents)
	wq.EventRegister(&entry)
	defer wq.EventUnregister(&entry)
	if terr := ep.Connect(full); terr != nil {
		if _, ok := terr.(*tcpip.ErrConnectStarted); !ok {
			ep.Close()
			t.Fatalf("connect %s: %v", dst, terr)
		}
		select {
		case <-ch:
		case <-time.After(5 * time.Second):
			ep.Close()
			t.Fatalf("connect %s: timed out", dst)
		}
		if terr := ep.LastError(); terr != nil {
			ep.Close()
			t.Fatalf("connect %s: %v", dst, terr)
		}
	}
	return ep, gonet.NewTCPConn(&wq, ep)
}

// TestEgressTCPResetFromPod checks that the pod's RST reaches the far side
// as a RST, and ends the flow.
func TestEgressTCPResetFromPod(t *testing.T) {
	got := make(chan error, 1)
	srv := tcpServer(t, "4", func(c *net.TCPConn) {
		b := make([]byte, 1)
		_, err := c.Read(b)
		if err == nil {
			c.Write(b) // tells the pod the byte arrived
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err = c.Read(b)
		}
		got <- err
	})
	n, pod := newEgressNet(t, Options{}, map[netip.AddrPort]netip.AddrPort{outside4: srv})
	ep, c := podConnectTCP(t, pod, outside4)
	defer c.Close()
	b := []byte("x")
	if _, err := c.Write(b); err != nil {
		t.Fatalf("write: %v", err)
	}
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("read: %v", err)
	}
	ep.Abort()
	if err := <-got; !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("server read after pod RST = %v, want ECONNRESET", err)
	}
	testutil.WaitFor(t, "no active TCP flow", func() bool { return n.gw.EgressStats().TCPActive == 0 })
}

// TestEgressTCPNoTimeWait checks that a flow whose far side closes first
// leaves no gateway endpoint in TIME-WAIT: gVisor would drop the pod's next
// SYN on the same ports there, where a kernel NAT lets it through.
func TestEgressTCPNoTimeWait(t *testing.T) {
	srv := tcpServer(t, "4", func(c *net.TCPConn) { c.Write([]byte("bye")) })
	n, pod := newEgressNet(t, Options{}, map[netip.AddrPort]netip.AddrPort{outside4: srv})
	c := podDialTCP(t, pod, outside4)
	got, err := io.ReadAll(c)
	c.Close()
	if err != nil || string(got) != "bye" {
		t.Fatalf("read %q, %v; want bye", got, err)
	}
	testutil.WaitFor(t, "the flow to end", func() bool { return n.gw.EgressStats().TCPActive == 0 })
	for _, ep := range n.gw.stack.RegisteredEndpoints() {
		if ep, ok := ep.(*tcp.Endpoint); ok && tcp.EndpointState(ep.State()) == tcp.StateTimeWait {
			t.Errorf("gateway endpoint %+v in TIME-WAIT", ep.TransportEndpointInfo.ID)
		}
	}
}

// TestEgressTCPDialTimeout checks that a host dial that does not finish
// leaves the pod's SYN unanswered, that the pod's retransmitted SYN does
// not start a second dial meanwhile, and that the dial ends at
// DialTimeout.
func TestEgressTCPDialTimeout(t *testing.T) {
	var dials, inFlight, maxInFlight atomic.Int32
	dial := func(ctx context.Context, network, address string) (net.Conn, error) {
		dials.Add(1)
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for m := maxInFlight.Load(); n > m && !maxInFlight.CompareAndSwap(m, n); m = maxInFlight.Load() {
		}
		<-ctx.Done()
		return nil, ctx.Err()
	}
	// The pod's SYN goes at 0 and again after its initial RTO of 1s;
	// the second must find the first's dial still in flight.
	n, pod := newEgressNet(t, Options{Dial: dial, DialTimeout: 1500 * time.Millisecond}, nil)
	_, err := tryPodDialTCP(pod, outside4, 2500*time.Millisecond)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("pod dial = %v, want its own deadline (no answer)", err)
	}
	testutil.WaitFor(t, "no active TCP flow", func() bool { return n.gw.EgressStats().TCPActive == 0 })
	if m := maxInFlight.Load(); m != 1 {
		t.Errorf("%d dials at once, want 1", m)
	}
	s := n.gw.EgressStats()
	if s.TCPTimeouts < 1 || s.TCPTimeouts != uint64(dials.Load()) || s.TCPRefused != 0 || s.ICMPSent != 0 {
		t.Errorf("stats = %+v after %d dials, want every dial timed out and no ICMP", s, dials.Load())
	}
}

// TestEgressTCPDialFailsSilently checks that a host dial failing neither
// refused, nor unreachable, nor timed out (here: a host firewall's
// EACCES) leaves the pod's SYN unanswered, as a NAT whose firewall drops
// it.
func TestEgressTCPDialFailsSilently(t *testing.T) {
	n, pod := newEgressNet(t, Options{Dial: errnoDial(nil, syscall.EACCES)}, nil)
	_, err := tryPodDialTCP(pod, outside4, 1200*time.Millisecond)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("pod dial = %v, want its own deadline (no answer)", err)
	}
	testutil.WaitFor(t, "no active TCP flow", func() bool { return n.gw.EgressStats().TCPActive == 0 })
	if s := n.gw.EgressStats(); s.DialFailures < 1 || s.TCPRefused != 0 || s.TCPTimeouts != 0 || s.TCPUnreachable != 0 || s.ICMPSent != 0 {
		t.Errorf("stats = %+v, want dial failures, none refused, timed out or unreachable, no ICMP", s)
	}
}

// TestEgressCloseDuringDial closes the gateway while a host dial waits.
func TestEgressCloseDuringDial(t *testing.T) {
	started := make(chan struct{}, 1)
	dial := func(ctx context.Context, network, address string) (net.Conn, error) {
		select {
		case started <- struct{}{}:
		default:
		}
		<-ctx.Done()
		return nil, ctx.Err()
	}
	n, pod := newEgressNet(t, Options{Dial: dial, DialTimeout: time.Hour}, nil)
	go tryPodDialTCP(pod, outside4, 300*time.Millisecond)
	<-started
	closeWithin(t, n.gw, 10*time.Second)
	if s := n.gw.EgressStats(); s.TCPActive != 0 || s.DialFailures != 0 {
		t.Errorf("stats after Close = %+v, want no active flow and no dial failure", s)
	}
}

// closeWithin closes p and fails the test if that takes longer than d (a
// hang, not a speed limit).
func closeWithin(t *testing.T, p *Port, d time.Duration) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		p.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("Close did not return within %v", d)
	}
}

// tcpSYN returns an IPv4 or IPv6 TCP SYN with sequence number 1000 from
// src to dst, with its checksums.
func tcpSYN(src, dst netip.AddrPort) []byte {
	seg := make([]byte, header.TCPMinimumSize)
	binary.BigEndian.PutUint16(seg[0:], src.Port())
	binary.BigEndian.PutUint16(seg[2:], dst.Port())
	binary.BigEndian.PutUint32(seg[4:], 1000)
	seg[12] = 5 << 4
	seg[13] = byte(header.TCPFlagSyn)
	binary.BigEndian.PutUint16(seg[14:], 65535)
	binary.BigEndian.PutUint16(seg[16:], ^vswitch.Checksum(seg, pseudoSum(src.Addr(), dst.Addr(), 6, len(seg))))
	return ipPacket(src.Addr(), dst.Addr(), 6, seg)
}

// udpDatagram returns an IPv4 or IPv6 UDP datagram from src to dst, with
// its checksums.
func udpDatagram(src, dst netip.AddrPort, payload []byte) []byte {
	seg := make([]byte, header.UDPMinimumSize+len(payload))
	binary.BigEndian.PutUint16(seg[0:], src.Port())
	binary.BigEndian.PutUint16(seg[2:], dst.Port())
	binary.BigEndian.PutUint16(seg[4:], uint16(len(seg)))
	copy(seg[header.UDPMinimumSize:], payload)
	binary.BigEndian.PutUint16(seg[6:], ^vswitch.Checksum(seg, pseudoSum(src.Addr(), dst.Addr(), 17, len(seg))))
	return ipPacket(src.Addr(), dst.Addr(), 17, seg)
}

// pseudoSum is the unfolded sum of the IPv4 or IPv6 pseudo-header for a
// transport segment of length n (RFC 9293 section 3.1, RFC 8200 section
// 8.1).
func pseudoSum(src, dst netip.Addr, proto byte, n int) uint32 {
	sum := uint32(proto) + uint32(n)
	for _, a := range []netip.Addr{src, dst} {
		b := a.AsSlice()
		for i := 0; i < len(b); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(b[i:]))
		}
	}
	return sum
}

// ipPacket returns an IPv4 packet (see ipv4Packet) or an IPv6 packet with
// hop limit 64 carrying payload.
func ipPacket(src, dst netip.Addr, proto byte, payload []byte) []byte {
	if src.Is4() {
		return ipv4Packet(src, dst, proto, payload)
	}
	b := make([]byte, 40+len(payload))
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:], uint16(len(payload)))
	b[6] = proto
	b[7] = 64
	s, d := src.As16(), dst.As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	copy(b[40:], payload)
	return b
}

// isSYNACK reports whether e carries an IPv4 TCP SYN-ACK.
func isSYNACK(e vswitch.Ether) bool {
	ip := e.Payload()
	if e.Type() != vswitch.EtherTypeIP4 || len(ip) < 20 || ip[9] != 6 {
		return false
	}
	tcp := ip[int(ip[0]&0xf)*4:]
	return len(tcp) >= 14 && tcp[13] == byte(header.TCPFlagSyn|header.TCPFlagAck)
}

// TestEgressCloseDuringHandshake closes the gateway while a flow's host
// side is connected and the pod's handshake waits for an ACK that never
// comes: Close must not wait for gVisor's SYN-ACK retransmissions, and the
// far side must see its connection end. In "cancel" only the context is
// cancelled first, as when the handshake's endpoint appears after the
// stack's Close has aborted the others: closeLoop alone must end it.
func TestEgressCloseDuringHandshake(t *testing.T) {
	for _, cancelFirst := range []bool{false, true} {
		name := "close"
		if cancelFirst {
			name = "cancel"
		}
		t.Run(name, func(t *testing.T) { testCloseDuringHandshake(t, cancelFirst) })
	}
}

func testCloseDuringHandshake(t *testing.T, cancelFirst bool) {
	testutil.CheckGoroutines(t)
	serverDone := make(chan error, 1)
	srv := tcpServer(t, "4", func(c *net.TCPConn) {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := c.Read(make([]byte, 1))
		serverDone <- err
	})
	p, err := New(Options{
		MAC:   gwMAC,
		Addrs: []netip.Prefix{netGW4},
		Dial:  redirectDial(map[netip.AddrPort]netip.AddrPort{outside4: srv}),
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		p.Close()
		refs.DoRepeatedLeakCheck()
	})
	// The gateway learns the pod's MAC from an ARP request, so its
	// SYN-ACK goes out, and gVisor would retransmit it for a minute.
	synAckSeen := make(chan struct{})
	go func() {
		frames := make([]*vswitch.Frame, 16)
		seen := false
		for {
			n, err := p.ReadBatch(0, frames)
			if err != nil {
				return
			}
			for _, f := range frames[:n] {
				if !seen && isSYNACK(vswitch.Ether(f.Bytes())) {
					seen = true
					close(synAckSeen)
				}
				f.Release()
			}
		}
	}()
	pool := vswitch.NewPool(vswitch.SmallBufSize)
	arp := porttest.ARPRequest(podMAC, pod4, netGW4.Addr())
	syn := porttest.Ether(gwMAC, podMAC, vswitch.EtherTypeIP4, tcpSYN(netip.AddrPortFrom(pod4, 40000), outside4))
	if _, err := p.WriteBatch(framesOf(pool, arp, syn)); err != nil {
		t.Fatalf("WriteBatch: %v", err)
	}
	select {
	case <-synAckSeen:
	case <-time.After(5 * time.Second):
		t.Fatal("no SYN-ACK for the pod: the handshake did not begin")
	}
	if cancelFirst {
		p.cancel()
		testutil.WaitFor(t, "the flow to end", func() bool { return p.EgressStats().TCPActive == 0 })
	}
	closeWithin(t, p, 10*time.Second)
	if err := <-serverDone; err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("server read = %v, want the connection ended by the gateway", err)
	}
}

// TestEgressUDPEcho exchanges datagrams with an outside echo server.
func TestEgressUDPEcho(t *testing.T) {
	for _, fam := range egressFamilies {
		t.Run(fam.name, func(t *testing.T) {
			srv := udpServer(t, fam.family, udpEcho)
			n, pod := newEgressNet(t, Options{}, map[netip.AddrPort]netip.AddrPort{fam.outside: srv})
			c := podDialUDP(t, pod, fam.outside)
			defer c.Close()
			for i, size := range []int{1, 100, 1400, 8000} {
				msg := bytes.Repeat([]byte{byte('a' + i)}, size)
				if got := udpRoundTrip(t, c, msg); !bytes.Equal(got, msg) {
					t.Fatalf("datagram %d: echo of %d bytes differs (%d bytes)", i, size, len(got))
				}
			}
			if s := n.gw.EgressStats(); s.UDPTotal != 1 || s.UDPActive != 1 {
				t.Errorf("stats = %+v, want one active UDP flow", s)
			}
		})
	}
}

// udpRoundTrip sends msg on c and returns the next datagram received.
func udpRoundTrip(t *testing.T, c *gonet.UDPConn, msg []byte) []byte {
	t.Helper()
	if _, err := c.Write(msg); err != nil {
		t.Fatalf("udp write: %v", err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 65536)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("udp read: %v", err)
	}
	return buf[:n]
}

// TestEgressUDPIdle checks that a UDP flow ends after UDPIdleTimeout
// without datagrams, that traffic in either direction alone keeps it, and
// that the pod's next datagram opens a new flow from a new host socket.
func TestEgressUDPIdle(t *testing.T) {
	const idle = 300 * time.Millisecond
	var mu sync.Mutex
	var clients []net.Addr
	var srvConn net.PacketConn
	srv := udpServer(t, "4", func(pc net.PacketConn, from net.Addr, b []byte) {
		mu.Lock()
		if len(clients) == 0 || clients[len(clients)-1].String() != from.String() {
			clients = append(clients, from)
		}
		srvConn = pc
		mu.Unlock()
		pc.WriteTo(b, from)
	})
	n, pod := newEgressNet(t, Options{UDPIdleTimeout: idle}, map[netip.AddrPort]netip.AddrPort{outside4: srv})
	c := podDialUDP(t, pod, outside4)
	defer c.Close()
	stats := n.gw.EgressStats

	udpRoundTrip(t, c, []byte("one"))
	testutil.WaitFor(t, "the flow to expire", func() bool { s := stats(); return s.UDPActive == 0 && s.UDPExpired == 1 })

	udpRoundTrip(t, c, []byte("two"))
	if s := stats(); s.UDPTotal != 2 || s.UDPActive != 1 {
		t.Fatalf("stats = %+v, want a second flow", s)
	}
	mu.Lock()
	if len(clients) != 2 {
		t.Errorf("server saw clients %v, want two host sockets", clients)
	}
	mu.Unlock()

	// The pod alone talks for three idle periods.
	for end := time.Now().Add(3 * idle); time.Now().Before(end); time.Sleep(idle / 10) {
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatalf("write: %v", err)
		}
	}
	// The far side alone talks for three idle periods.
	mu.Lock()
	pc, to := srvConn, clients[len(clients)-1]
	mu.Unlock()
	for end := time.Now().Add(3 * idle); time.Now().Before(end); time.Sleep(idle / 10) {
		if _, err := pc.WriteTo([]byte("push"), to); err != nil {
			t.Fatalf("server write: %v", err)
		}
	}
	if s := stats(); s.UDPExpired != 1 || s.UDPTotal != 2 {
		t.Errorf("stats = %+v, want the second flow kept alive by traffic either way", s)
	}
}

// TestEgressUDPFlowLimit checks that datagrams beyond the flow limit are
// dropped and counted.
func TestEgressUDPFlowLimit(t *testing.T) {
	srv := udpServer(t, "4", udpEcho)
	n, pod := newEgressNet(t, Options{}, map[netip.AddrPort]netip.AddrPort{outside4: srv})
	n.gw.egress.mu.Lock()
	n.gw.egress.maxUDP = 2
	n.gw.egress.mu.Unlock()
	for i := range 2 {
		c := podDialUDP(t, pod, outside4)
		defer c.Close()
		udpRoundTrip(t, c, []byte{byte(i)})
	}
	for i := range 2 {
		c := podDialUDP(t, pod, outside4)
		defer c.Close()
		if _, err := c.Write([]byte("over")); err != nil {
			t.Fatalf("write: %v", err)
		}
		testutil.WaitFor(t, "a dropped datagram", func() bool { return n.gw.EgressStats().UDPDropped == uint64(i+1) })
	}
	if s := n.gw.EgressStats(); s.UDPTotal != 2 || s.UDPActive != 2 {
		t.Errorf("stats = %+v, want two flows", s)
	}
}

// TestEgressNotForwarded checks that traffic to the pod network, the
// gateway itself and multicast is never dialled out: TCP gets a RST.
func TestEgressNotForwarded(t *testing.T) {
	var dials atomic.Int32
	dial := func(ctx context.Context, network, address string) (net.Conn, error) {
		dials.Add(1)
		return nil, errUnreachable
	}
	n, pod := newEgressNet(t, Options{Dial: dial}, nil)
	// Send a pod-network address without a pod through the gateway, as
	// a pod with a route for it might.
	other4 := netip.MustParseAddr("10.244.0.77")
	other6 := netip.MustParseAddr("fd00:244::77")
	pod.stack.SetRouteTable(append([]tcpip.Route{
		{Destination: subnet(netip.PrefixFrom(other4, 32)), Gateway: tcpipAddress(netGW4.Addr()), NIC: nicID},
		{Destination: subnet(netip.PrefixFrom(other6, 128)), Gateway: tcpipAddress(netGW6.Addr()), NIC: nicID},
	}, pod.stack.GetRouteTable()...))

	for _, a := range []netip.Addr{other4, other6} {
		u := podDialUDP(t, pod, netip.AddrPortFrom(a, 53))
		if _, err := u.Write([]byte("query")); err != nil {
			t.Fatalf("udp write to %s: %v", a, err)
		}
		u.Close()
	}
	// The gateway's own address answers port unreachable, which the
	// pod's connected socket reports as refused on a later write (RFC
	// 1122 section 4.1.3.3).
	for _, gw := range []netip.Prefix{netGW4, netGW6} {
		u := podDialUDP(t, pod, netip.AddrPortFrom(gw.Addr(), 9))
		testutil.WaitFor(t, "port unreachable from the gateway", func() bool {
			_, err := u.Write([]byte("discard"))
			time.Sleep(10 * time.Millisecond)
			return isTCPIPError(err, &tcpip.ErrConnectionRefused{})
		})
		u.Close()
	}
	mc := podDialUDP(t, pod, netip.MustParseAddrPort("224.0.0.251:5353"))
	mc.Write([]byte("mdns"))
	mc.Close()
	// The TCP attempts come after the datagrams on the same path, so
	// their RSTs also mean the datagrams were handled.
	for _, dst := range []netip.AddrPort{
		netip.AddrPortFrom(other4, 80),
		netip.AddrPortFrom(other6, 80),
		netip.AddrPortFrom(netGW4.Addr(), 81),
		netip.AddrPortFrom(netGW6.Addr(), 81),
	} {
		_, err := tryPodDialTCP(pod, dst, 5*time.Second)
		if !isTCPIPError(err, &tcpip.ErrConnectionRefused{}) {
			t.Errorf("pod dial %s = %v, want connection refused", dst, err)
		}
	}
	if d := dials.Load(); d != 0 {
		t.Errorf("%d host dials, want none", d)
	}
	if s := n.gw.EgressStats(); s.TCPTotal != 0 || s.UDPTotal != 0 {
		t.Errorf("stats = %+v, want no flows", s)
	}
}

// openFDs counts the process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatalf("read /proc/self/fd: %v", err)
	}
	return len(fds)
}

// TestEgressManyFlows runs 2000 short TCP connections and 500 UDP flows,
// and closes the gateway with some of each still open: no goroutine
// (newGWNet checks) and no file descriptor may be left behind.
func TestEgressManyFlows(t *testing.T) {
	const tcpFlows, openTCP, udpFlows, workers = 2000, 20, 500, 16
	// Start the runtime's poller first: its descriptors stay open.
	if ln, err := net.Listen("tcp4", "127.0.0.1:0"); err == nil {
		ln.Close()
	}
	// No garbage collection meanwhile: a net.Conn's finalizer would
	// close the descriptor of a socket the gateway forgot to close.
	gcPercent := debug.SetGCPercent(-1)
	t.Cleanup(func() { debug.SetGCPercent(gcPercent) })
	before := openFDs(t)
	t.Cleanup(func() {
		if after := openFDs(t); after > before {
			t.Errorf("%d file descriptors open after Close, %d before", after, before)
		}
	})
	tcpSrv := tcpServer(t, "4", func(c *net.TCPConn) {
		if _, err := io.ReadAll(c); err == nil {
			c.Write([]byte("ok"))
		}
	})
	udpSrv := udpServer(t, "4", udpEcho)
	udpOutside := netip.MustParseAddrPort("198.18.0.11:53")
	n, pod := newEgressNet(t, Options{}, map[netip.AddrPort]netip.AddrPort{outside4: tcpSrv, udpOutside: udpSrv})

	var wg sync.WaitGroup
	next := make(chan int)
	for range workers {
		wg.Go(func() {
			for range next {
				c, err := tryPodDialTCP(pod, outside4, 10*time.Second)
				if err != nil {
					t.Errorf("dial: %v", err)
					continue
				}
				c.Write([]byte("hi"))
				c.CloseWrite()
				got, err := io.ReadAll(c)
				c.Close()
				if err != nil || string(got) != "ok" {
					t.Errorf("read %q, %v; want ok", got, err)
				}
			}
		})
	}
	for i := range tcpFlows {
		next <- i
	}
	close(next)
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}

	// The sockets stay open: a closed one's port may come again, and
	// with it the same flow, as behind a kernel NAT.
	for i := range udpFlows {
		c := podDialUDP(t, pod, udpOutside)
		defer c.Close()
		msg := fmt.Appendf(nil, "datagram %d", i)
		if got := udpRoundTrip(t, c, msg); !bytes.Equal(got, msg) {
			t.Fatalf("echo %q, want %q", got, msg)
		}
	}
	// Connections still open when the gateway closes.
	for range openTCP {
		c := podDialTCP(t, pod, outside4)
		defer c.Close()
		if _, err := c.Write([]byte("open")); err != nil {
			t.Fatalf("write: %v", err)
		}
	}
	testutil.WaitFor(t, "the short connections' flows to end", func() bool { return n.gw.EgressStats().TCPActive == openTCP })
	s := n.gw.EgressStats()
	if s.TCPTotal != tcpFlows+openTCP || s.UDPTotal != udpFlows || s.UDPActive != udpFlows || s.DialFailures != 0 {
		t.Errorf("stats = %+v, want %d TCP and %d UDP flows", s, tcpFlows+openTCP, udpFlows)
	}
}

// TestIsEgress checks which destinations the gateway re-originates.
func TestIsEgress(t *testing.T) {
	p, err := New(Options{MAC: gwMAC, Addrs: []netip.Prefix{netGW4, netGW6}})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		p.Close()
		refs.DoRepeatedLeakCheck()
	})
	tests := []struct {
		addr string
		want bool
	}{
		{"198.18.0.10", true},
		{"2001:db8::10", true},
		{"169.254.169.254", true}, // cloud metadata
		{"169.254.20.10", true},   // NodeLocal DNSCache
		{"fe80::1", false},        // needs a zone
		{"10.244.0.9", false},     // pod network
		{"10.244.0.1", false},     // the gateway
		{"fd00:244::9", false},
		{"127.0.0.1", false},
		{"::1", false},
		{"224.0.0.251", false},
		{"ff02::1", false},
		{"255.255.255.255", false},
		{"0.0.0.0", false},
		{"::", false},
		{"::ffff:198.18.0.10", false},
	}
	for _, tt := range tests {
		if got := p.isEgress(netip.MustParseAddr(tt.addr)); got != tt.want {
			t.Errorf("isEgress(%s) = %v, want %v", tt.addr, got, tt.want)
		}
	}
}

// TestEgressLinkLocal4 checks that pods reach IPv4 link-local node
// services (a metadata server, NodeLocal DNSCache) through the gateway.
func TestEgressLinkLocal4(t *testing.T) {
	metadata := netip.MustParseAddrPort("169.254.169.254:80")
	dnsCache := netip.MustParseAddrPort("169.254.20.10:53")
	tcpSrv := tcpServer(t, "4", echoTCP)
	udpSrv := udpServer(t, "4", udpEcho)
	n, pod := newEgressNet(t, Options{}, map[netip.AddrPort]netip.AddrPort{metadata: tcpSrv, dnsCache: udpSrv})

	c := podDialTCP(t, pod, metadata)
	defer c.Close()
	if _, err := c.Write([]byte("GET /latest/meta-data/")); err != nil {
		t.Fatalf("write: %v", err)
	}
	c.CloseWrite()
	if got, err := io.ReadAll(c); err != nil || string(got) != "GET /latest/meta-data/" {
		t.Fatalf("echo = %q, %v", got, err)
	}
	u := podDialUDP(t, pod, dnsCache)
	defer u.Close()
	if got := udpRoundTrip(t, u, []byte("query")); string(got) != "query" {
		t.Fatalf("udp echo = %q, want query", got)
	}
	if s := n.gw.EgressStats(); s.TCPTotal != 1 || s.UDPTotal != 1 {
		t.Errorf("stats = %+v, want one TCP and one UDP flow", s)
	}
}

// addStranger attaches a gVisor stack like addPod's, with addrs and
// default routes through the gateway: a host that is not a pod, or one
// that claims a pod-network address. It is a plain host (see plainHost)
// and never dials the host network.
func (n *gwNet) addStranger(t *testing.T, id byte, addrs ...netip.Prefix) *Port {
	t.Helper()
	p, err := New(Options{
		Name:  fmt.Sprintf("stranger%d", id),
		MAC:   vswitch.MAC{0x02, 0, 0, 0, 0x20, id},
		Addrs: addrs,
		Dial:  errnoDial(nil, syscall.EACCES),
	})
	if err != nil {
		t.Fatalf("New(stranger %d): %v", id, err)
	}
	plainHost(t, p)
	p.stack.SetRouteTable([]tcpip.Route{
		{Destination: header.IPv4EmptySubnet, Gateway: tcpipAddress(netGW4.Addr()), NIC: nicID},
		{Destination: header.IPv6EmptySubnet, Gateway: tcpipAddress(netGW6.Addr()), NIC: nicID},
	})
	if _, err := n.sw.AddPort(p); err != nil {
		p.Close()
		t.Fatalf("AddPort(stranger %d): %v", id, err)
	}
	return p
}

// TestEgressNotFromPod checks the loop guard: TCP to the outside from a
// source outside the pod network, or from one of HostAddrs (the node's
// host port), gets a RST, UDP is dropped, and neither is dialled; a pod on
// the same gateway still gets through.
func TestEgressNotFromPod(t *testing.T) {
	hostAddrs := []netip.Addr{netip.MustParseAddr("10.244.0.254"), netip.MustParseAddr("fd00:244::fe")}
	tests := []struct {
		name  string
		addrs []netip.Prefix
	}{
		{"outside pod network", []netip.Prefix{netip.MustParsePrefix("10.99.0.2/24"), netip.MustParsePrefix("fd00:99::2/64")}},
		{"host address", []netip.Prefix{netip.PrefixFrom(hostAddrs[0], 24), netip.PrefixFrom(hostAddrs[1], 64)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tcpSrv4, tcpSrv6 := tcpServer(t, "4", echoTCP), tcpServer(t, "6", echoTCP)
			udpSrv4, udpSrv6 := udpServer(t, "4", udpEcho), udpServer(t, "6", udpEcho)
			udpOut4 := netip.AddrPortFrom(outside4.Addr(), 53)
			udpOut6 := netip.AddrPortFrom(outside6.Addr(), 53)
			var dials atomic.Int32
			redirect := redirectDial(map[netip.AddrPort]netip.AddrPort{outside4: tcpSrv4, outside6: tcpSrv6, udpOut4: udpSrv4, udpOut6: udpSrv6})
			dial := func(ctx context.Context, network, address string) (net.Conn, error) {
				dials.Add(1)
				return redirect(ctx, network, address)
			}
			n := newGWNet(t, Options{Dial: dial, HostAddrs: hostAddrs})
			stranger := n.addStranger(t, 1, tt.addrs...)

			var bad uint64
			for _, dst := range []netip.AddrPort{outside4, outside6} {
				_, err := tryPodDialTCP(stranger, dst, 5*time.Second)
				if !isTCPIPError(err, &tcpip.ErrConnectionRefused{}) {
					t.Errorf("dial %s = %v, want connection refused", dst, err)
				}
				bad++
			}
			for _, dst := range []netip.AddrPort{udpOut4, udpOut6} {
				u := podDialUDP(t, stranger, dst)
				if _, err := u.Write([]byte("query")); err != nil {
					t.Fatalf("udp write to %s: %v", dst, err)
				}
				u.Close()
				bad++
				testutil.WaitFor(t, "the datagram refused", func() bool { return n.gw.EgressStats().BadSource == bad })
			}
			if d := dials.Load(); d != 0 {
				t.Errorf("%d host dials for a source that is not a pod, want none", d)
			}
			if s := n.gw.EgressStats(); s.TCPTotal != 0 || s.UDPTotal != 0 {
				t.Errorf("stats = %+v, want no flows", s)
			}

			pod := n.addPod(t, 2)
			plainHost(t, pod)
			for _, dst := range []netip.AddrPort{outside4, outside6} {
				c := podDialTCP(t, pod, dst)
				c.Close()
			}
			if s := n.gw.EgressStats(); s.TCPTotal != 2 || s.BadSource != bad {
				t.Errorf("stats = %+v, want the pod's 2 flows", s)
			}
		})
	}
}
