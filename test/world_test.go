package test

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"tapswitch/internal/netnsutil"
	"tapswitch/internal/testutil"
)

// world is a test's "outside world": a network namespace the test created,
// joined to the node's namespace by a veth pair, so that what the pods
// reach through the gateway's egress is a server the test owns. Its
// addresses come from the benchmarking range 198.18.0.0/15 (RFC 2544) and
// the documentation prefix 2001:db8::/32 (RFC 3849), so nothing it talks
// to is real. Both ends of the veth live in namespaces the test deletes,
// which destroys the pair: nothing is left in the root namespace.
type world struct {
	ns string // path of the world's netns

	// The node's and the world's ends of the veth and their addresses.
	// Both prefixes are on-link at both ends, so connected routes carry
	// the world's answers back to the node.
	nodeIf, worldIf string
	node4, addr4    netip.Addr
	node6, addr6    netip.Addr
}

// newWorld creates the world namespace and its veth pair to node (a netns
// path), with an IPv4 and an IPv6 address at each end, all links up.
func newWorld(t *testing.T, node string) *world {
	t.Helper()
	var rnd [4]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		t.Fatal(err)
	}
	// Interface names are at most 15 bytes (IFNAMSIZ - 1).
	suffix := hex.EncodeToString(rnd[:])
	nodeIf, worldIf := "twn"+suffix, "tww"+suffix
	// Registered before the world's namespace, so it runs after that is
	// deleted (and while the node's still exists): the pair must be gone
	// from the node and must never have been in the root namespace.
	t.Cleanup(func() { checkVethGone(t, node, nodeIf, worldIf) })
	// The same addresses in every test: each world is private to its own
	// pair of namespaces.
	var (
		worldNode4 = netip.MustParsePrefix("198.18.0.1/24")
		worldAddr4 = netip.MustParsePrefix("198.18.0.2/24")
		worldNode6 = netip.MustParsePrefix("2001:db8::1/64")
		worldAddr6 = netip.MustParsePrefix("2001:db8::2/64")
	)
	w := &world{
		ns:     testutil.NewNetNS(t),
		nodeIf: nodeIf, worldIf: worldIf,
		node4: worldNode4.Addr(), addr4: worldAddr4.Addr(),
		node6: worldNode6.Addr(), addr6: worldAddr6.Addr(),
	}
	nodeName, worldName := filepath.Base(node), filepath.Base(w.ns)
	// The pair is created inside the node's namespace with its peer
	// moved straight to the world's: it never exists in the root one.
	ipCmd(t, "-n", nodeName, "link", "add", w.nodeIf, "type", "veth", "peer", "name", w.worldIf, "netns", worldName)
	ipCmd(t, "-n", nodeName, "addr", "add", worldNode4.String(), "dev", w.nodeIf)
	ipCmd(t, "-n", worldName, "addr", "add", worldAddr4.String(), "dev", w.worldIf)
	// The addresses are unique by construction; without DAD they are
	// usable at once instead of tentative for a second.
	ipCmd(t, "-n", nodeName, "-6", "addr", "add", worldNode6.String(), "dev", w.nodeIf, "nodad")
	ipCmd(t, "-n", worldName, "-6", "addr", "add", worldAddr6.String(), "dev", w.worldIf, "nodad")
	ipCmd(t, "-n", nodeName, "link", "set", w.nodeIf, "up")
	ipCmd(t, "-n", worldName, "link", "set", w.worldIf, "up")
	ipCmd(t, "-n", worldName, "link", "set", "lo", "up")
	return w
}

// checkVethGone fails t if either end of a world's veth pair is in the
// root namespace, or the node's end outlives the world's namespace (the
// kernel destroys the pair with it, in the background, so this waits a
// little).
func checkVethGone(t *testing.T, node, nodeIf, worldIf string) {
	for _, name := range []string{nodeIf, worldIf} {
		if out, err := exec.Command("ip", "link", "show", name).CombinedOutput(); err == nil {
			t.Errorf("veth %s is in the root namespace:\n%s", name, out)
		}
	}
	if _, err := os.Stat(node); err != nil {
		return // the node is gone, and its end with it
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, err := exec.Command("ip", "-n", filepath.Base(node), "link", "show", nodeIf).CombinedOutput()
		if err != nil {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("veth %s outlived the world's namespace:\n%s", nodeIf, out)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ipCmd runs ip(8) with args and fails t if it fails.
func ipCmd(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
}

// addr returns the world's address of the same family as like.
func (w *world) addr(like netip.Addr) netip.Addr {
	if like.Is4() {
		return w.addr4
	}
	return w.addr6
}

// nodeAddr returns the node's veth address of the same family as like:
// the source the world sees for egress from the pods.
func (w *world) nodeAddr(like netip.Addr) netip.Addr {
	if like.Is4() {
		return w.node4
	}
	return w.node6
}

// nsDialer returns a dial function whose sockets are opened inside the
// netns at ns, as a process there would open them.
func nsDialer(ns string) func(ctx context.Context, network, address string) (net.Conn, error) {
	return func(ctx context.Context, network, address string) (net.Conn, error) {
		var c net.Conn
		err := netnsutil.Do(ns, func() (err error) {
			c, err = (&net.Dialer{}).DialContext(ctx, network, address)
			return err
		})
		return c, err
	}
}

// nsListen opens a listener inside the netns at ns; it is closed when the
// test ends. A wildcard "tcp" address (":0") listens on both families:
// runMain has Go probe the kernel's IPv4-mapped IPv6 support in the root
// namespace, before any test enters one.
func nsListen(t *testing.T, ns, network, address string) net.Listener {
	t.Helper()
	var ln net.Listener
	if err := netnsutil.Do(ns, func() (err error) {
		ln, err = net.Listen(network, address)
		return err
	}); err != nil {
		t.Fatalf("listen %s %s in %s: %v", network, address, ns, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// nsListenPacket opens a packet socket inside the netns at ns; it is
// closed when the test ends. A wildcard "udp" address (":0") takes both
// families, as nsListen's "tcp" does.
func nsListenPacket(t *testing.T, ns, network, address string) net.PacketConn {
	t.Helper()
	var pc net.PacketConn
	if err := netnsutil.Do(ns, func() (err error) {
		pc, err = net.ListenPacket(network, address)
		return err
	}); err != nil {
		t.Fatalf("listen %s %s in %s: %v", network, address, ns, err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc
}

// portOf returns the port a listener or packet socket is bound to.
func portOf(a net.Addr) uint16 {
	switch a := a.(type) {
	case *net.TCPAddr:
		return uint16(a.Port)
	case *net.UDPAddr:
		return uint16(a.Port)
	}
	panic(fmt.Sprintf("portOf(%T)", a))
}

// peerAddr returns the address and port of a connection's or datagram's
// peer; an IPv4 peer of a dual-stack socket comes IPv4-mapped (peerLog
// unmaps it).
func peerAddr(a net.Addr) netip.AddrPort {
	switch a := a.(type) {
	case *net.TCPAddr:
		return a.AddrPort()
	case *net.UDPAddr:
		return a.AddrPort()
	}
	panic(fmt.Sprintf("peerAddr(%T)", a))
}

// peerLog records the peers a server saw, for the tests' NAT checks.
type peerLog struct {
	mu    sync.Mutex // guards peers
	peers []netip.AddrPort
}

func (l *peerLog) add(a netip.AddrPort) {
	l.mu.Lock()
	defer l.mu.Unlock()
	a = netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
	if !slices.Contains(l.peers, a) {
		l.peers = append(l.peers, a)
	}
}

// all returns the distinct peers seen so far, in the order they came.
func (l *peerLog) all() []netip.AddrPort {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.peers)
}

// addrs returns the distinct addresses of the peers seen so far.
func (l *peerLog) addrs() []netip.Addr {
	var out []netip.Addr
	for _, ap := range l.all() {
		if !slices.Contains(out, ap.Addr()) {
			out = append(out, ap.Addr())
		}
	}
	return out
}

// serveHTTP serves h on ln from a goroutine until the test ends.
func serveHTTP(t *testing.T, ln net.Listener, h http.Handler) {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
}

// serveConns runs handle on every connection accepted on ln, each on its
// own goroutine, and closes the connection after it; handle's errors are
// reported on t. Each connection has 20 s to finish, so that a stuck peer
// cannot hold the test's cleanup, which stops the server and waits for
// the handlers, for longer.
func serveConns(t *testing.T, ln net.Listener, handle func(net.Conn) error) {
	var wg sync.WaitGroup
	wg.Go(func() { acceptLoop(t, ln, handle, &wg) })
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
}

// acceptLoop is serveConns' goroutine: it accepts until ln is closed and
// starts a handler for each connection in wg.
func acceptLoop(t *testing.T, ln net.Listener, handle func(net.Conn) error, wg *sync.WaitGroup) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		wg.Go(func() {
			defer c.Close()
			c.SetDeadline(time.Now().Add(20 * time.Second))
			if err := handle(c); err != nil {
				t.Errorf("server %s: %v", ln.Addr(), err)
			}
		})
	}
}

// serveTCPEcho echoes every connection accepted on ln until the peer
// closes its side, then closes, recording each peer in log (if not nil),
// until the test ends.
func serveTCPEcho(t *testing.T, ln net.Listener, log *peerLog) {
	serveConns(t, ln, func(c net.Conn) error {
		if log != nil {
			log.add(peerAddr(c.RemoteAddr()))
		}
		_, err := io.Copy(c, c)
		return err
	})
}

// serveUDPEcho sends every datagram on pc back to its sender, recording
// the senders in log (if not nil), until the test ends.
func serveUDPEcho(t *testing.T, pc net.PacketConn, log *peerLog) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		udpEchoLoop(pc, log)
	}()
	t.Cleanup(func() {
		pc.Close()
		<-done
	})
}

func udpEchoLoop(pc net.PacketConn, log *peerLog) {
	buf := make([]byte, 64<<10)
	for {
		n, from, err := pc.ReadFrom(buf)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			continue
		}
		if log != nil {
			log.add(peerAddr(from))
		}
		pc.WriteTo(buf[:n], from)
	}
}

// fakeDNS is an upstream DNS server for the gateway's forwarder, on UDP
// and TCP at the same address, answering from a fixed zone of made-up
// names (under .test, reserved by RFC 2606). It speaks just enough of RFC
// 1035: one question per query, answers with a pointer to the question's
// name, NXDOMAIN for names outside the zone, and over UDP the truncation
// bit for answers larger than the query allows (512 bytes, or the EDNS0
// payload size of RFC 6891 when the query gives one).
type fakeDNS struct {
	addr netip.AddrPort
	zone map[string]map[uint16][][]byte // lower-case name with the final dot, type, rdata

	udp, tcp atomic.Uint64 // queries answered over each transport
}

// DNS types and the classes and codes the fake uses (RFC 1035, RFC 3596,
// RFC 6891).
const (
	dnsTypeA    = 1
	dnsTypeTXT  = 16
	dnsTypeAAAA = 28
	dnsTypeOPT  = 41
	dnsClassIN  = 1

	dnsRcodeNXDomain = 3
	dnsFlagQR        = 0x8000
	dnsFlagAA        = 0x0400
	dnsFlagTC        = 0x0200
	dnsFlagRA        = 0x0080
	dnsOpcodeRDMask  = 0x7900 // opcode and RD, copied from the query
)

// startFakeDNS serves zone on 127.0.0.1 (UDP and TCP, one port) inside the
// netns at ns, until the test ends.
func startFakeDNS(t *testing.T, ns string, zone map[string]map[uint16][][]byte) *fakeDNS {
	t.Helper()
	pc := nsListenPacket(t, ns, "udp4", "127.0.0.1:0")
	port := portOf(pc.LocalAddr())
	ln := nsListen(t, ns, "tcp4", fmt.Sprintf("127.0.0.1:%d", port))
	f := &fakeDNS{addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port), zone: zone}
	var wg sync.WaitGroup
	wg.Go(func() { f.udpLoop(pc) })
	wg.Go(func() { f.tcpAcceptLoop(ln, &wg) })
	t.Cleanup(func() {
		pc.Close()
		ln.Close()
		wg.Wait()
	})
	return f
}

func (f *fakeDNS) udpLoop(pc net.PacketConn) {
	buf := make([]byte, 64<<10)
	for {
		n, from, err := pc.ReadFrom(buf)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			continue
		}
		resp, limit, ok := f.answer(buf[:n])
		if !ok {
			continue
		}
		if len(resp) > limit {
			resp = truncated(resp)
		}
		f.udp.Add(1)
		pc.WriteTo(resp, from)
	}
}

func (f *fakeDNS) tcpAcceptLoop(ln net.Listener, wg *sync.WaitGroup) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		wg.Go(func() { f.tcpConnLoop(c) })
	}
}

// tcpConnLoop answers the queries on one connection, each framed by a
// two-byte length (RFC 1035 section 4.2.2), until the peer closes.
func (f *fakeDNS) tcpConnLoop(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	var hdr [2]byte
	for {
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return
		}
		q := make([]byte, binary.BigEndian.Uint16(hdr[:]))
		if _, err := io.ReadFull(c, q); err != nil {
			return
		}
		resp, _, ok := f.answer(q)
		if !ok {
			return
		}
		f.tcp.Add(1)
		if _, err := c.Write(binary.BigEndian.AppendUint16(nil, uint16(len(resp)))); err != nil {
			return
		}
		if _, err := c.Write(resp); err != nil {
			return
		}
	}
}

// answer builds the response to query q and returns with it the largest
// UDP response q allows. ok is false for a message that is not a query
// the fake understands; it is not answered.
func (f *fakeDNS) answer(q []byte) (resp []byte, limit int, ok bool) {
	if len(q) < 12 || q[2]&0x80 != 0 || binary.BigEndian.Uint16(q[4:]) != 1 {
		return nil, 0, false
	}
	name, off, ok := dnsName(q, 12)
	if !ok || off+4 > len(q) {
		return nil, 0, false
	}
	qtype := binary.BigEndian.Uint16(q[off:])
	qend := off + 4
	limit = 512
	// An OPT record right after the question (its name is the root)
	// carries the requester's UDP payload size in its class field.
	if binary.BigEndian.Uint16(q[10:]) > 0 && qend+5 <= len(q) && q[qend] == 0 &&
		binary.BigEndian.Uint16(q[qend+1:]) == dnsTypeOPT {
		limit = max(limit, int(binary.BigEndian.Uint16(q[qend+3:])))
	}

	flags := dnsFlagQR | dnsFlagAA | dnsFlagRA | binary.BigEndian.Uint16(q[2:])&dnsOpcodeRDMask
	types, known := f.zone[strings.ToLower(name)]
	if !known {
		flags |= dnsRcodeNXDomain
	}
	rdatas := types[qtype]
	resp = binary.BigEndian.AppendUint16(resp, binary.BigEndian.Uint16(q)) // ID
	resp = binary.BigEndian.AppendUint16(resp, flags)
	resp = binary.BigEndian.AppendUint16(resp, 1) // questions
	resp = binary.BigEndian.AppendUint16(resp, uint16(len(rdatas)))
	resp = binary.BigEndian.AppendUint16(resp, 0) // authority
	resp = binary.BigEndian.AppendUint16(resp, 0) // additional
	resp = append(resp, q[12:qend]...)
	for _, rd := range rdatas {
		resp = append(resp, 0xc0, 12) // the name: a pointer to the question's
		resp = binary.BigEndian.AppendUint16(resp, qtype)
		resp = binary.BigEndian.AppendUint16(resp, dnsClassIN)
		resp = binary.BigEndian.AppendUint32(resp, 60) // TTL
		resp = binary.BigEndian.AppendUint16(resp, uint16(len(rd)))
		resp = append(resp, rd...)
	}
	return resp, limit, true
}

// truncated cuts a response to its header and question and sets TC, as a
// server does when the answer does not fit a UDP response (RFC 1035
// section 4.1.1): the resolver asks again over TCP.
func truncated(resp []byte) []byte {
	_, off, _ := dnsName(resp, 12)
	out := append([]byte(nil), resp[:off+4]...)
	binary.BigEndian.PutUint16(out[2:], binary.BigEndian.Uint16(out[2:])|dnsFlagTC)
	binary.BigEndian.PutUint16(out[6:], 0)
	return out
}

// dnsName reads an uncompressed name at off and returns it with a final
// dot, and the offset after it.
func dnsName(b []byte, off int) (string, int, bool) {
	var sb strings.Builder
	for {
		if off >= len(b) {
			return "", 0, false
		}
		n := int(b[off])
		off++
		if n == 0 {
			break
		}
		if n > 63 || off+n > len(b) {
			return "", 0, false
		}
		sb.Write(b[off : off+n])
		sb.WriteByte('.')
		off += n
	}
	if sb.Len() == 0 {
		return ".", off, true
	}
	return sb.String(), off, true
}

// txtRData encodes strings as the RDATA of a TXT record: each a length
// byte and at most 255 bytes (RFC 1035 section 3.3.14).
func txtRData(strs ...string) []byte {
	var rd []byte
	for _, s := range strs {
		rd = append(rd, byte(len(s)))
		rd = append(rd, s...)
	}
	return rd
}
