package netstack

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"

	"tapswitch/internal/testutil"
)

// DNS record types and classes used by the tests (RFC 1035 section 3.2,
// RFC 3596).
const (
	typeA    = 1
	typeAAAA = 28
	classIN  = 1
)

// fakeMode is how a fakeDNS answers.
type fakeMode int

const (
	fakeAnswer   fakeMode = iota // A 192.0.2.id, AAAA 2001:db8::id
	fakeSilent                   // reads queries, never answers
	fakeServFail                 // SERVFAIL to everything
)

// fakeDNS is an upstream resolver on a loopback address, with UDP and TCP
// on the same port. Over UDP it answers tc.example. with TC set and no
// records, so a client has to retry over TCP.
type fakeDNS struct {
	addr netip.AddrPort
	id   byte
	mode fakeMode

	udpQueries atomic.Int64
	tcpQueries atomic.Int64

	pc net.PacketConn
	ln net.Listener
	wg sync.WaitGroup

	mu    sync.Mutex // guards conns
	conns []net.Conn // accepted TCP connections
}

// newFakeDNS starts a fakeDNS on 127.0.0.1 (family "4") or ::1 ("6"),
// stopped by the test's cleanup. It skips the test if ::1 is missing.
func newFakeDNS(t *testing.T, family string, id byte, mode fakeMode) *fakeDNS {
	t.Helper()
	host := "127.0.0.1"
	if family == "6" {
		host = "::1"
	}
	f := &fakeDNS{id: id, mode: mode}
	for range 20 {
		ln, err := net.Listen("tcp"+family, net.JoinHostPort(host, "0"))
		if err != nil {
			if family == "6" {
				t.Skipf("no IPv6 loopback: %v", err)
			}
			t.Fatalf("listen: %v", err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		pc, err := net.ListenPacket("udp"+family, net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			ln.Close()
			continue
		}
		f.ln, f.pc = ln, pc
		f.addr = netip.AddrPortFrom(netip.MustParseAddr(host), uint16(port))
		break
	}
	if f.ln == nil {
		t.Fatal("no port free for both UDP and TCP")
	}
	f.wg.Go(f.udpLoop)
	f.wg.Go(f.acceptLoop)
	t.Cleanup(func() {
		f.pc.Close()
		f.ln.Close()
		f.mu.Lock()
		for _, c := range f.conns {
			c.Close()
		}
		f.mu.Unlock()
		f.wg.Wait()
	})
	return f
}

func (f *fakeDNS) udpLoop() {
	buf := make([]byte, 65535)
	for {
		n, from, err := f.pc.ReadFrom(buf)
		if err != nil {
			return
		}
		f.udpQueries.Add(1)
		if ans := f.answer(buf[:n], true); ans != nil {
			f.pc.WriteTo(ans, from)
		}
	}
}

func (f *fakeDNS) acceptLoop() {
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.mu.Lock()
		f.conns = append(f.conns, c)
		f.mu.Unlock()
		f.wg.Go(func() {
			for {
				var l [2]byte
				if _, err := io.ReadFull(c, l[:]); err != nil {
					return
				}
				q := make([]byte, binary.BigEndian.Uint16(l[:]))
				if _, err := io.ReadFull(c, q); err != nil {
					return
				}
				f.tcpQueries.Add(1)
				if ans := f.answer(q, false); ans != nil {
					c.Write(binary.BigEndian.AppendUint16(nil, uint16(len(ans))))
					c.Write(ans)
				}
			}
		})
	}
}

// answer builds the answer to q by hand (RFC 1035 section 4.1), or nil.
func (f *fakeDNS) answer(q []byte, udp bool) []byte {
	if f.mode == fakeSilent || len(q) < 12 {
		return nil
	}
	end := 12
	for end < len(q) && q[end] != 0 {
		end += 1 + int(q[end])
	}
	end += 5
	if end > len(q) {
		return nil
	}
	question := q[12:end]
	qtype := binary.BigEndian.Uint16(q[end-4:])
	a := []byte{q[0], q[1], 0x80 | q[2]&0x01, 0x80, 0, 1, 0, 0, 0, 0, 0, 0}
	a = append(a, question...)
	switch {
	case f.mode == fakeServFail:
		a[3] |= 2
	case udp && bytes.Equal(question[:len(question)-4], dnsName("tc.example.")):
		a[2] |= 0x02 // TC
	case qtype == typeA:
		a[7] = 1
		a = append(a, 0xc0, 12, 0, typeA, 0, classIN, 0, 0, 0, 60, 0, 4, 192, 0, 2, f.id)
	case qtype == typeAAAA:
		a[7] = 1
		a = append(a, 0xc0, 12, 0, typeAAAA, 0, classIN, 0, 0, 0, 60, 0, 16)
		ip := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: f.id}).As16()
		a = append(a, ip[:]...)
	}
	return a
}

// want4 and want6 are the addresses fakeDNS id answers.
func want4(id byte) netip.Addr { return netip.AddrFrom4([4]byte{192, 0, 2, id}) }
func want6(id byte) netip.Addr {
	return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: id})
}

// dnsName is name in wire format.
func dnsName(name string) []byte {
	var b []byte
	for _, l := range strings.Split(strings.TrimSuffix(name, "."), ".") {
		b = append(b, byte(len(l)))
		b = append(b, l...)
	}
	return append(b, 0)
}

// dnsQuery returns a recursive query for name and qtype.
func dnsQuery(id uint16, name string, qtype uint16) []byte {
	q := []byte{byte(id >> 8), byte(id), 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0}
	q = append(q, dnsName(name)...)
	return append(q, byte(qtype>>8), byte(qtype), 0, classIN)
}

// checkAnswer checks that ans answers q: same ID and question, QR set,
// NOERROR and one record of address want.
func checkAnswer(t *testing.T, q, ans []byte, want netip.Addr) {
	t.Helper()
	if len(ans) < len(q) {
		t.Fatalf("answer too short: % x", ans)
	}
	if !bytes.Equal(ans[:2], q[:2]) {
		t.Errorf("answer ID %#x, want the query's %#x", ans[:2], q[:2])
	}
	if ans[2]&0x80 == 0 || ans[3]&0x0f != 0 {
		t.Errorf("answer flags % x: want QR and NOERROR", ans[2:4])
	}
	if !bytes.Equal(ans[12:len(q)], q[12:]) {
		t.Errorf("answer question % x, want % x", ans[12:len(q)], q[12:])
	}
	rr := ans[len(q):]
	if binary.BigEndian.Uint16(ans[6:]) != 1 || len(rr) < 12 {
		t.Fatalf("answer has no record: % x", ans)
	}
	rdata := rr[12:]
	if got, ok := netip.AddrFromSlice(rdata); !ok || got != want {
		t.Errorf("answer record % x, want %s", rdata, want)
	}
}

// loopbackDial is an Options.Dial that reaches only the given loopback
// upstreams and fails the test on a network of the wrong family.
func loopbackDial(t *testing.T, allowed ...netip.AddrPort) func(context.Context, string, string) (net.Conn, error) {
	return func(ctx context.Context, network, address string) (net.Conn, error) {
		ap, err := netip.ParseAddrPort(address)
		if err != nil {
			return nil, err
		}
		family := "4"
		if ap.Addr().Is6() {
			family = "6"
		}
		if network != "udp"+family && network != "tcp"+family {
			t.Errorf("Dial(%q, %q): network does not match the address", network, address)
		}
		if !slices.Contains(allowed, ap) || !ap.Addr().IsLoopback() {
			return nil, &net.OpError{Op: "dial", Net: network, Err: errUnreachable}
		}
		var d net.Dialer
		return d.DialContext(ctx, network, address)
	}
}

// closedPort returns a loopback address and port where nothing listens:
// UDP gets ICMP port unreachable, TCP a reset.
func closedPort(t *testing.T) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	ap := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close()
	return ap
}

// podQueryUDP sends q from pod to server over UDP and returns the answer.
func podQueryUDP(pod *Port, server netip.AddrPort, q []byte) ([]byte, error) {
	full, proto := fullAddress(server.Addr(), server.Port()), netProto(server.Addr())
	c, err := gonet.DialUDP(pod.stack, nil, &full, proto)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(q); err != nil {
		return nil, err
	}
	buf := make([]byte, 65535)
	n, err := c.Read(buf)
	if err != nil {
		return nil, err
	}
	return buf[:n], nil
}

// queryTCP sends q on c with its length prefix and reads the answer.
func queryTCP(c net.Conn, q []byte) ([]byte, error) {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(q))), q...)); err != nil {
		return nil, err
	}
	var l [2]byte
	if _, err := io.ReadFull(c, l[:]); err != nil {
		return nil, err
	}
	ans := make([]byte, binary.BigEndian.Uint16(l[:]))
	_, err := io.ReadFull(c, ans)
	return ans, err
}

// podQueryTCP sends q from pod to server over a new TCP connection.
func podQueryTCP(pod *Port, server netip.AddrPort, q []byte) ([]byte, error) {
	c, err := tryPodDialTCP(pod, server, 5*time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return queryTCP(c, q)
}

func checkDNSStats(t *testing.T, p *Port, want DNSStats) {
	t.Helper()
	if got := p.DNSStats(); got != want {
		t.Errorf("DNSStats = %+v, want %+v", got, want)
	}
}

// TestDNSForward queries both gateway addresses over UDP and over TCP
// (two queries on one connection), with an IPv4 and an IPv6 upstream.
func TestDNSForward(t *testing.T) {
	for _, family := range []string{"4", "6"} {
		t.Run("upstream ipv"+family, func(t *testing.T) {
			up := newFakeDNS(t, family, 1, fakeAnswer)
			n := newGWNet(t, Options{DNS: []netip.AddrPort{up.addr}, Dial: loopbackDial(t, up.addr)})
			pod := n.addPod(t, 2)
			id := uint16(0x1000)
			for _, gw := range []netip.Prefix{netGW4, netGW6} {
				server := netip.AddrPortFrom(gw.Addr(), 53)
				id++
				q := dnsQuery(id, "www.example.", typeA)
				ans, err := podQueryUDP(pod, server, q)
				if err != nil {
					t.Fatalf("udp query to %s: %v", server, err)
				}
				checkAnswer(t, q, ans, want4(1))

				c := podDialTCP(t, pod, server)
				for _, qt := range []struct {
					qtype uint16
					want  netip.Addr
				}{{typeA, want4(1)}, {typeAAAA, want6(1)}} {
					id++
					q := dnsQuery(id, "www.example.", qt.qtype)
					ans, err := queryTCP(c, q)
					if err != nil {
						t.Fatalf("tcp query to %s: %v", server, err)
					}
					checkAnswer(t, q, ans, qt.want)
				}
				c.Close()
			}
			checkDNSStats(t, n.gw, DNSStats{Queries: 6, Answered: 6})
			if u, tc := up.udpQueries.Load(), up.tcpQueries.Load(); u != 2 || tc != 4 {
				t.Errorf("upstream got %d udp and %d tcp queries, want 2 and 4", u, tc)
			}
		})
	}
}

// TestDNSFailover checks that a dead upstream (unreachable, refusing,
// silent or answering SERVFAIL) makes the gateway try the next, and that
// the pod gets SERVFAIL when none answers.
func TestDNSFailover(t *testing.T) {
	live := newFakeDNS(t, "4", 3, fakeAnswer)
	silent := newFakeDNS(t, "4", 9, fakeSilent)
	failing := newFakeDNS(t, "4", 9, fakeServFail)
	refusing := closedPort(t)
	unreachable := netip.MustParseAddrPort("198.18.0.1:53")
	dial := loopbackDial(t, live.addr, silent.addr, failing.addr, refusing)

	t.Run("unreachable and refusing", func(t *testing.T) {
		n := newGWNet(t, Options{DNS: []netip.AddrPort{unreachable, refusing, live.addr}, Dial: dial})
		pod := n.addPod(t, 2)
		server := netip.AddrPortFrom(netGW4.Addr(), 53)
		q := dnsQuery(0x2001, "www.example.", typeA)
		ans, err := podQueryUDP(pod, server, q)
		if err != nil {
			t.Fatalf("udp query: %v", err)
		}
		checkAnswer(t, q, ans, want4(3))
		q = dnsQuery(0x2002, "www.example.", typeA)
		if ans, err = podQueryTCP(pod, server, q); err != nil {
			t.Fatalf("tcp query: %v", err)
		}
		checkAnswer(t, q, ans, want4(3))
		checkDNSStats(t, n.gw, DNSStats{Queries: 2, Answered: 2})
	})

	t.Run("silent", func(t *testing.T) {
		before := silent.udpQueries.Load() + silent.tcpQueries.Load()
		n := newGWNet(t, Options{DNS: []netip.AddrPort{silent.addr, live.addr}, Dial: dial})
		pod := n.addPod(t, 2)
		server := netip.AddrPortFrom(netGW6.Addr(), 53)
		// Both time out on the silent upstream at once.
		var wg sync.WaitGroup
		for i, query := range []func(*Port, netip.AddrPort, []byte) ([]byte, error){podQueryUDP, podQueryTCP} {
			q := dnsQuery(uint16(0x2100+i), "www.example.", typeAAAA)
			wg.Go(func() {
				ans, err := query(pod, server, q)
				if err != nil {
					t.Errorf("query %d: %v", i, err)
					return
				}
				checkAnswer(t, q, ans, want6(3))
			})
		}
		wg.Wait()
		if got := silent.udpQueries.Load() + silent.tcpQueries.Load() - before; got != 2 {
			t.Errorf("silent upstream got %d queries, want 2", got)
		}
		checkDNSStats(t, n.gw, DNSStats{Queries: 2, Answered: 2})
	})

	t.Run("servfail", func(t *testing.T) {
		n := newGWNet(t, Options{DNS: []netip.AddrPort{failing.addr, live.addr}, Dial: dial})
		pod := n.addPod(t, 2)
		q := dnsQuery(0x2201, "www.example.", typeA)
		ans, err := podQueryUDP(pod, netip.AddrPortFrom(netGW4.Addr(), 53), q)
		if err != nil {
			t.Fatalf("udp query: %v", err)
		}
		checkAnswer(t, q, ans, want4(3))
	})

	t.Run("all dead", func(t *testing.T) {
		n := newGWNet(t, Options{DNS: []netip.AddrPort{unreachable, refusing}, Dial: dial})
		pod := n.addPod(t, 2)
		server := netip.AddrPortFrom(netGW4.Addr(), 53)
		for i, query := range []func(*Port, netip.AddrPort, []byte) ([]byte, error){podQueryUDP, podQueryTCP} {
			q := dnsQuery(uint16(0x2300+i), "www.example.", typeA)
			ans, err := query(pod, server, q)
			if err != nil {
				t.Fatalf("query %d: %v", i, err)
			}
			want := append([]byte{q[0], q[1], 0x81, 0x82, 0, 1, 0, 0, 0, 0, 0, 0}, q[12:]...)
			if !bytes.Equal(ans, want) {
				t.Errorf("answer %d = % x, want SERVFAIL % x", i, ans, want)
			}
		}
		checkDNSStats(t, n.gw, DNSStats{Queries: 2, Failed: 2})
	})

	t.Run("only servfail", func(t *testing.T) {
		n := newGWNet(t, Options{DNS: []netip.AddrPort{unreachable, failing.addr}, Dial: dial})
		pod := n.addPod(t, 2)
		q := dnsQuery(0x2401, "www.example.", typeA)
		ans, err := podQueryUDP(pod, netip.AddrPortFrom(netGW4.Addr(), 53), q)
		if err != nil {
			t.Fatalf("udp query: %v", err)
		}
		if len(ans) != len(q) || ans[3]&0x0f != 2 || !bytes.Equal(ans[:2], q[:2]) {
			t.Errorf("answer % x, want the upstream's SERVFAIL", ans)
		}
		checkDNSStats(t, n.gw, DNSStats{Queries: 1, Answered: 1})
	})
}

// TestDNSMalformed checks that messages without a full header or with QR
// set are dropped and counted, without reaching the upstream, and that a
// malformed message over TCP ends the connection.
func TestDNSMalformed(t *testing.T) {
	up := newFakeDNS(t, "4", 1, fakeAnswer)
	n := newGWNet(t, Options{DNS: []netip.AddrPort{up.addr}, Dial: loopbackDial(t, up.addr)})
	pod := n.addPod(t, 2)
	server := netip.AddrPortFrom(netGW4.Addr(), 53)

	c := podDialUDP(t, pod, server)
	defer c.Close()
	response := dnsQuery(0x3001, "www.example.", typeA)
	response[2] |= 0x80
	for _, m := range [][]byte{{0x30, 0x02, 0x01, 0, 0}, response} {
		if _, err := c.Write(m); err != nil {
			t.Fatalf("write: %v", err)
		}
	}
	// The first write also resolves the gateway's MAC. gVisor sends the
	// packets queued meanwhile from a goroutine of its own
	// (stack/pending_packets.go, dequeue), so a later write can overtake
	// them: wait for both to be dropped before the good query.
	testutil.WaitFor(t, "the malformed queries dropped", func() bool { return n.gw.DNSStats().Dropped == 2 })
	// A good query after them is answered: the socket read the bad ones.
	q := dnsQuery(0x3003, "www.example.", typeA)
	if _, err := c.Write(q); err != nil {
		t.Fatalf("write: %v", err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 512)
	nr, err := c.Read(buf)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	checkAnswer(t, q, buf[:nr], want4(1))

	tc := podDialTCP(t, pod, server)
	defer tc.Close()
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := tc.Write([]byte{0, 4, 1, 2, 3, 4}); err != nil {
		t.Fatalf("tcp write: %v", err)
	}
	if nr, err := tc.Read(buf); err != io.EOF {
		t.Errorf("tcp read after a malformed query = %d, %v; want EOF", nr, err)
	}

	checkDNSStats(t, n.gw, DNSStats{Queries: 1, Answered: 1, Dropped: 3})
	if got := up.udpQueries.Load() + up.tcpQueries.Load(); got != 1 {
		t.Errorf("upstream got %d queries, want 1", got)
	}
}

// TestDNSUDPLimit checks that UDP queries beyond dnsMaxUDPQueries in
// flight are dropped and counted.
func TestDNSUDPLimit(t *testing.T) {
	up := newFakeDNS(t, "4", 1, fakeSilent)
	n := newGWNet(t, Options{DNS: []netip.AddrPort{up.addr}, Dial: loopbackDial(t, up.addr)})
	pod := n.addPod(t, 2)
	c := podDialUDP(t, pod, netip.AddrPortFrom(netGW4.Addr(), 53))
	defer c.Close()
	// The first query also resolves the gateway's MAC, while which the pod
	// queues only a few packets.
	if _, err := c.Write(dnsQuery(0, "www.example.", typeA)); err != nil {
		t.Fatalf("write: %v", err)
	}
	testutil.WaitFor(t, "the first query upstream", func() bool { return up.udpQueries.Load() == 1 })
	const total = dnsMaxUDPQueries + 64
	for i := 1; i < total; i++ {
		if _, err := c.Write(dnsQuery(uint16(i), "www.example.", typeA)); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	testutil.WaitFor(t, "dropped queries", func() bool { return n.gw.DNSStats().Dropped > 0 })
	if s := n.gw.DNSStats(); s.Queries+s.Dropped > total {
		t.Errorf("DNSStats = %+v for %d queries", s, total)
	}
}

// TestDNSCloseInFlight closes the gateway while UDP and TCP queries wait
// for a silent upstream: Close returns, the upstream connections are
// closed, and no goroutine is left (newGWNet's cleanup checks).
func TestDNSCloseInFlight(t *testing.T) {
	up := newFakeDNS(t, "4", 1, fakeSilent)
	n := newGWNet(t, Options{DNS: []netip.AddrPort{up.addr}, Dial: loopbackDial(t, up.addr)})
	pod := n.addPod(t, 2)
	server := netip.AddrPortFrom(netGW4.Addr(), 53)

	c := podDialUDP(t, pod, server)
	defer c.Close()
	for i := range 3 {
		if _, err := c.Write(dnsQuery(uint16(0x4000+i), "www.example.", typeA)); err != nil {
			t.Fatalf("write: %v", err)
		}
	}
	tc := podDialTCP(t, pod, server)
	defer tc.Close()
	tq := dnsQuery(0x4100, "www.example.", typeA)
	if _, err := tc.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(tq))), tq...)); err != nil {
		t.Fatalf("tcp write: %v", err)
	}
	testutil.WaitFor(t, "queries upstream", func() bool { return up.udpQueries.Load() == 3 && up.tcpQueries.Load() == 1 })

	n.gw.Close()
	up.mu.Lock()
	upstreamConn := up.conns[0]
	up.mu.Unlock()
	upstreamConn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := upstreamConn.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("upstream tcp connection after Close: read %v, want EOF", err)
	}
	if s := n.gw.DNSStats(); s.Queries != 4 || s.Answered != 0 {
		t.Errorf("DNSStats = %+v, want 4 queries, none answered", s)
	}
}

// TestDNSResolver resolves names end to end with Go's resolver in a pod,
// over UDP and, for an answer truncated over UDP, over TCP.
func TestDNSResolver(t *testing.T) {
	up := newFakeDNS(t, "4", 7, fakeAnswer)
	n := newGWNet(t, Options{DNS: []netip.AddrPort{up.addr}, Dial: loopbackDial(t, up.addr)})
	pod := n.addPod(t, 2)
	for _, gw := range []netip.Prefix{netGW4, netGW6} {
		server := netip.AddrPortFrom(gw.Addr(), 53)
		r := &net.Resolver{
			PreferGo:     true,
			StrictErrors: true,
			// Whatever nameserver the host's resolv.conf names, the
			// query goes to the gateway from inside the pod.
			Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
				full, proto := fullAddress(server.Addr(), server.Port()), netProto(server.Addr())
				switch network {
				case "udp", "udp4", "udp6":
					return gonet.DialUDP(pod.stack, nil, &full, proto)
				case "tcp", "tcp4", "tcp6":
					return gonet.DialContextTCP(ctx, pod.stack, full, proto)
				}
				return nil, fmt.Errorf("network %q", network)
			},
		}
		for _, name := range []string{"www.example.", "tc.example."} {
			t.Run(name+" via "+gw.Addr().String(), func(t *testing.T) {
				before := up.tcpQueries.Load()
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				addrs, err := r.LookupHost(ctx, name)
				if err != nil {
					t.Fatalf("LookupHost(%s): %v", name, err)
				}
				slices.Sort(addrs)
				if want := []string{want4(7).String(), want6(7).String()}; !slices.Equal(addrs, want) {
					t.Errorf("LookupHost(%s) = %v, want %v", name, addrs, want)
				}
				if name == "tc.example." && up.tcpQueries.Load() == before {
					t.Errorf("truncated answer was not retried over TCP")
				}
			})
		}
	}
	if s := n.gw.DNSStats(); s.Failed != 0 || s.Dropped != 0 || s.Answered != s.Queries {
		t.Errorf("DNSStats = %+v, want every query answered", s)
	}
}

func TestServfail(t *testing.T) {
	q := dnsQuery(0xabcd, "www.example.", typeA)
	q[2] |= 0x10 // opcode 2, kept
	header := []byte{0xab, 0xcd, 0x80 | 0x10 | 0x01, 0x82}
	pointer := slices.Clone(q)
	pointer[12] = 0xc0
	two := slices.Clone(q)
	two[5] = 2
	tests := []struct {
		name string
		q    []byte
		want []byte
	}{
		{"one question", q, append(append(slices.Clone(header), 0, 1, 0, 0, 0, 0, 0, 0), q[12:]...)},
		{"header only", q[:12], append(slices.Clone(header), 0, 0, 0, 0, 0, 0, 0, 0)},
		{"cut short", q[:len(q)-1], append(slices.Clone(header), 0, 0, 0, 0, 0, 0, 0, 0)},
		{"compressed name", pointer, append(slices.Clone(header), 0, 0, 0, 0, 0, 0, 0, 0)},
		{"two questions", two, append(slices.Clone(header), 0, 0, 0, 0, 0, 0, 0, 0)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := servfail(tt.q); !bytes.Equal(got, tt.want) {
				t.Errorf("servfail(% x) = % x, want % x", tt.q, got, tt.want)
			}
		})
	}
}
