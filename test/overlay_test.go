package test

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"tapswitch/daemon/api"
	"tapswitch/internal/pinger"
	"tapswitch/internal/testutil"
	vswitch "tapswitch/switch"
	"tapswitch/switch/porttest"
)

// The overlay's tests: nodes are namespaces, each with a daemon and an
// underlay address on a veth to a bridge in a namespace of the test's
// own (198.19.7.0/24, from RFC 2544's benchmarking range).

// underlayNet is the bridge between the test's nodes.
type underlayNet struct {
	ns     string // the bridge's namespace
	prefix netip.Prefix
	nodes  int
}

func newUnderlay(t *testing.T) *underlayNet {
	t.Helper()
	u := &underlayNet{ns: testutil.NewNetNS(t), prefix: netip.MustParsePrefix("198.19.7.0/24")}
	ipCmd(t, "-n", filepath.Base(u.ns), "link", "add", "br0", "type", "bridge")
	ipCmd(t, "-n", filepath.Base(u.ns), "link", "set", "br0", "up")
	return u
}

// join gives the namespace node an underlay address on a veth to the
// bridge and returns it.
func (u *underlayNet) join(t *testing.T, node string) netip.Addr {
	t.Helper()
	u.nodes++
	addr := u.prefix.Addr()
	for range u.nodes {
		addr = addr.Next()
	}
	peer := fmt.Sprintf("ul%d", u.nodes)
	// Made in the bridge's namespace with its peer moved to the node's:
	// the pair is never in the root namespace, and goes with them.
	ipCmd(t, "-n", filepath.Base(u.ns), "link", "add", peer, "type", "veth", "peer", "name", "ul0", "netns", filepath.Base(node))
	ipCmd(t, "-n", filepath.Base(u.ns), "link", "set", peer, "master", "br0", "up")
	ipCmd(t, "-n", filepath.Base(node), "addr", "add", netip.PrefixFrom(addr, u.prefix.Bits()).String(), "dev", "ul0")
	ipCmd(t, "-n", filepath.Base(node), "link", "set", "ul0", "up")
	return addr
}

// overlayNode starts a daemon on a new node namespace joined to u, with
// the pod CIDRs 10.252.N.0/24 and fd00:252:0:N::/64, and an empty peers
// file the test fills. When the test fails, the node's routes, rules and
// counters and the daemon's peers are logged.
func overlayNode(t *testing.T, u *underlayNet, n int) (*daemonProc, string) {
	t.Helper()
	node := testutil.NewNetNS(t)
	ipCmd(t, "-n", filepath.Base(node), "link", "set", "lo", "up")
	addr := u.join(t, node)
	peers := filepath.Join(t.TempDir(), "peers.json")
	if err := os.WriteFile(peers, []byte("[]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d := startDaemonIn(t, node, "", overlayFlags(n, addr, peers)...)
	t.Cleanup(func() {
		if t.Failed() {
			logOverlayNode(t, d)
		}
	})
	return d, peers
}

// overlayFlags are overlayNode's daemon flags, for a restart with the
// same ones.
func overlayFlags(n int, under netip.Addr, peers string) []string {
	return []string{
		"--pod-cidr", fmt.Sprintf("10.252.%d.0/24", n), "--pod-cidr6", fmt.Sprintf("fd00:252:0:%d::/64", n),
		"--cluster-cidr", "10.252.0.0/16,fd00:252::/48",
		"--node-name", fmt.Sprintf("node-%d", n), "--underlay", under.String(), "--peers", peers,
	}
}

// logOverlayNode logs what a failing overlay test needs: logNode's, and
// the daemon's peers with their counters.
func logOverlayNode(t *testing.T, d *daemonProc) {
	if d.cmd.ProcessState != nil {
		return // stopped by the test, and started again
	}
	logNode(t, d)
	out, err := d.ctl("peers")
	t.Logf("tapswitchctl peers (%v):\n%s", err, out)
}

// nodeEntry is the daemon's own entry for a peers file, as tapswitchctl
// node -o json prints it.
func nodeEntry(t *testing.T, d *daemonProc) api.Node {
	t.Helper()
	out, err := d.ctl("node", "-o", "json")
	if err != nil {
		t.Fatalf("tapswitchctl node: %v: %s", err, out)
	}
	var n api.Node
	if err := json.Unmarshal([]byte(out), &n); err != nil {
		t.Fatalf("tapswitchctl node -o json: %v: %s", err, out)
	}
	return n
}

// writePeers writes the nodes' own entries, as tapswitchctl node -o json
// prints them, into every peers file: a static cluster's file.
func writePeers(t *testing.T, ds []*daemonProc, files []string) []api.Node {
	t.Helper()
	var nodes []api.Node
	for _, d := range ds {
		nodes = append(nodes, nodeEntry(t, d))
	}
	writePeersFile(t, nodes, files...)
	return nodes
}

// writePeersFile writes nodes as a peers file to each of files, whole
// and renamed in, as a careful tool does.
func writePeersFile(t *testing.T, nodes []api.Node, files ...string) {
	t.Helper()
	b, err := json.MarshalIndent(nodes, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		renameIn(t, f, b)
	}
}

// renameIn replaces the file f with content b by writing a temporary file
// next to it and renaming that over f.
func renameIn(t *testing.T, f string, b []byte) {
	t.Helper()
	tmp := f + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, f); err != nil {
		t.Fatal(err)
	}
}

// peerNames lists the names of the daemon's peers, as tapswitchctl peers
// -o json prints them.
func peerNames(t *testing.T, d *daemonProc) []string {
	t.Helper()
	out, err := d.ctl("peers", "-o", "json")
	if err != nil {
		t.Fatalf("tapswitchctl peers: %v: %s", err, out)
	}
	var ps []api.Peer
	if err := json.Unmarshal([]byte(out), &ps); err != nil {
		t.Fatalf("tapswitchctl peers -o json: %v: %s", err, out)
	}
	var names []string
	for _, p := range ps {
		names = append(names, p.Name)
	}
	slices.Sort(names)
	return names
}

// waitPeers waits until the daemon's peers are exactly names.
func waitPeers(t *testing.T, d *daemonProc, names ...string) {
	t.Helper()
	slices.Sort(names)
	testutil.WaitFor(t, fmt.Sprintf("the daemon on %s to have the peers %v", filepath.Base(d.node), names), func() bool {
		ps, err := d.client.Peers(context.Background())
		if err != nil || len(ps) != len(names) {
			return false
		}
		for _, p := range ps {
			if !slices.Contains(names, p.Name) {
				return false
			}
		}
		return true
	})
}

// TestOverlayTwoNodes: two nodes, a pod each, peers from a static file
// written while the daemons run: the pods ping each other over IPv4 and
// IPv6 across the overlay, a TCP transfer arrives whole, and the receiver
// sees the sender pod's own address.
func TestOverlayTwoNodes(t *testing.T) {
	testutil.RequireRoot(t)
	u := newUnderlay(t)
	d1, f1 := overlayNode(t, u, 1)
	d2, f2 := overlayNode(t, u, 2)
	nodes := writePeers(t, []*daemonProc{d1, d2}, []string{f1, f2})
	for _, n := range nodes {
		if n.VTEPMAC.Zero() || !n.Address.IsValid() || len(n.PodCIDRs) != 2 {
			t.Fatalf("node entry %+v, want a VTEP MAC, an address and two pod CIDRs", n)
		}
	}
	p1, p2 := routePod(t, d1, "ovl-a"), routePod(t, d2, "ovl-b")
	if p1.MTU != 1450 {
		t.Errorf("pod MTU %d, want the underlay's 1500 less VXLAN's 50", p1.MTU)
	}
	// The peers file is re-read on change: wait until each daemon lists
	// the other.
	for _, d := range []*daemonProc{d1, d2} {
		testutil.WaitFor(t, "the daemon to apply the peers file", func() bool {
			ps, err := d.client.Peers(context.Background())
			return err == nil && len(ps) == 1
		})
	}
	for _, pair := range [][2]pod{{p1, p2}, {p2, p1}} {
		for i := range pair[1].IPs {
			mustPing(t, pair[0], pair[1].IPs[i].Addr())
		}
	}
	log := new(peerLog)
	ln := nsListen(t, p2.ns, "tcp", ":0")
	serveLongEcho(t, ln, log)
	msg := make([]byte, 8<<20)
	rand.NewChaCha8([32]byte{12}).Read(msg)
	for i := range p1.IPs {
		dst := netip.AddrPortFrom(p2.IPs[i].Addr(), portOf(ln.Addr()))
		c := mustDial(t, nsDialer(p1.ns), dst)
		c.SetDeadline(time.Now().Add(time.Minute))
		echoStream(t, c, msg)
		c.Close()
		if seen := log.addrs(); !slices.Contains(seen, p1.IPs[i].Addr()) || len(seen) != i+1 {
			t.Errorf("the server on node 2 saw %v, want only the pod on node 1 (%s so far)", seen, p1.IPs[:i+1])
		}
	}
	ps, err := d1.client.Peers(context.Background())
	if err != nil || len(ps) != 1 || ps[0].Name != "node-2" || ps[0].TxFrames == 0 || ps[0].RxFrames == 0 || ps[0].LastSeen.IsZero() {
		t.Errorf("peers of node 1 = %+v (%v), want node-2 with traffic both ways", ps, err)
	}
	body := daemonMetrics(t, d1)
	for _, series := range []string{`tapswitch_peer_tx_frames_total{peer="node-2"}`, `tapswitch_peer_rx_frames_total{peer="node-2"}`} {
		if v := metric(t, body, series); v == 0 {
			t.Errorf("%s = 0, want the transfers counted", series)
		}
	}
}

// mustPingOne pings dst from src's namespace with one echo request at a
// time, up to three, and fails t unless one is answered.
func mustPingOne(t *testing.T, src pod, dst netip.Addr) {
	t.Helper()
	for range 3 {
		res, err := pinger.Ping(src.ns, dst, 1, 2*time.Second)
		if err != nil {
			t.Fatalf("ping %s -> %s: %v", src.ID, dst, err)
		}
		if res.Received > 0 {
			return
		}
	}
	t.Fatalf("ping %s -> %s: 3 sent one at a time, none answered", src.ID, dst)
}

// transferFrom connects from src to the echo server ln, at dst's address
// of src's family i, echoes msg whole, and checks that the server (which
// records its peers in log) saw src's own address i.
func transferFrom(t *testing.T, src pod, i int, dst netip.Addr, ln net.Listener, log *peerLog, msg []byte) {
	t.Helper()
	before := len(log.all())
	c := mustDial(t, nsDialer(src.ns), netip.AddrPortFrom(dst, portOf(ln.Addr())))
	c.SetDeadline(time.Now().Add(time.Minute))
	echoStream(t, c, msg)
	c.Close()
	if seen := seenSince(log, before); len(seen) != 1 || seen[0].Addr() != src.IPs[i].Addr() {
		t.Errorf("the server at %s saw %v, want the pod %s's own address %s", dst, seen, src.ID, src.IPs[i].Addr())
	}
}

// TestOverlayThreeNodes: three nodes with two pods each. Every pod pings
// every other over IPv4 and IPv6 (30 pairs a family; a pod's own address
// is not the overlay's), and TCP transfers cross the overlay whole, the
// receiver seeing the sender pod's own address.
func TestOverlayThreeNodes(t *testing.T) {
	testutil.RequireRoot(t)
	u := newUnderlay(t)
	var ds []*daemonProc
	var files, names []string
	for n := 1; n <= 3; n++ {
		d, f := overlayNode(t, u, n)
		ds, files, names = append(ds, d), append(files, f), append(names, fmt.Sprintf("node-%d", n))
	}
	writePeers(t, ds, files)
	var pods []pod
	for i, d := range ds {
		for _, s := range []string{"a", "b"} {
			pods = append(pods, routePod(t, d, fmt.Sprintf("ovl3-%d%s", i+1, s)))
		}
	}
	for i, d := range ds {
		waitPeers(t, d, slices.Delete(slices.Clone(names), i, i+1)...)
	}
	for fam := range 2 {
		for _, src := range pods {
			for _, dst := range pods {
				if src.ID != dst.ID {
					mustPingOne(t, src, dst.IPs[fam].Addr())
				}
			}
		}
	}

	// Into node 3's first pod from node 1's over IPv4 and node 2's over
	// IPv6.
	log := new(peerLog)
	ln := nsListen(t, pods[4].ns, "tcp", ":0")
	serveLongEcho(t, ln, log)
	msg := make([]byte, 4<<20)
	rand.NewChaCha8([32]byte{3}).Read(msg)
	transferFrom(t, pods[0], 0, pods[4].IPs[0].Addr(), ln, log, msg)
	transferFrom(t, pods[3], 1, pods[4].IPs[1].Addr(), ln, log, msg)
}

// TestOverlayClusterIPRemote runs kube-proxy's rules on node 1 for a
// ClusterIP Service whose one backend is a pod on node 2. A client pod on
// node 1 reaches it: node 1's kernel DNATs the connection and routes it
// back into the switch through tsw0 and over the overlay; the backend's
// answers come back over the overlay and must pass node 1's conntrack
// again (the switch's host flows) to be translated back. The backend sees
// the client pod's own address, and the client's socket the ClusterIP.
func TestOverlayClusterIPRemote(t *testing.T) {
	testutil.RequireRoot(t)
	u := newUnderlay(t)
	d1, f1 := overlayNode(t, u, 1)
	d2, f2 := overlayNode(t, u, 2)
	writePeers(t, []*daemonProc{d1, d2}, []string{f1, f2})
	client, backend := routePod(t, d1, "cip-client"), routePod(t, d2, "cip-backend")
	waitPeers(t, d1, "node-2")
	waitPeers(t, d2, "node-1")
	log := new(peerLog)
	serveLongEcho(t, nsListen(t, backend.ns, "tcp", ":8080"), log)
	msg := make([]byte, 1<<20)
	rand.NewChaCha8([32]byte{31}).Read(msg)

	for i, clusterIP := range []netip.AddrPort{netip.MustParseAddrPort("10.96.0.10:80"), netip.MustParseAddrPort("[fd00:96::10]:80")} {
		t.Run(clusterIP.String(), func(t *testing.T) {
			applyKubeProxy(t, d1.node, kubeService{
				name: "default/remote:http", clusterIP: clusterIP,
				endpoints: []netip.AddrPort{netip.AddrPortFrom(backend.IPs[i].Addr(), 8080)},
			})
			before := len(log.all())
			c := mustDial(t, nsDialer(client.ns), clusterIP)
			c.SetDeadline(time.Now().Add(time.Minute))
			if got := peerAddr(c.RemoteAddr()); got.Addr().Unmap() != clusterIP.Addr() {
				t.Errorf("the client's socket is connected to %s, want the ClusterIP %s", got, clusterIP)
			}
			echoStream(t, c, msg)
			c.Close()
			if seen := seenSince(log, before); len(seen) != 1 || seen[0].Addr() != client.IPs[i].Addr() {
				t.Errorf("the backend on node 2 saw %v, want the client pod's own %s", seen, client.IPs[i].Addr())
			}
		})
	}
}

// liveStream keeps a TCP connection to an echo server busy from a
// goroutine, chunk after chunk written, read back and compared, until
// finish. Its cleanup closes the connection and waits for the goroutine.
type liveStream struct {
	c      net.Conn
	seed   byte
	chunks atomic.Int64 // echoed and compared so far
	stop   chan struct{}
	done   chan struct{}
	err    error // why echoLoop ended early; set before done closes
	once   sync.Once
}

// startStream starts echoing on c. Register it after the server, so that
// its cleanup closes c before the server's waits for its handlers.
func startStream(t *testing.T, c net.Conn, seed byte) *liveStream {
	s := &liveStream{c: c, seed: seed, stop: make(chan struct{}), done: make(chan struct{})}
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	go s.echoLoop()
	t.Cleanup(func() {
		s.halt()
		c.Close()
		<-s.done
	})
	return s
}

func (s *liveStream) halt() { s.once.Do(func() { close(s.stop) }) }

func (s *liveStream) echoLoop() {
	defer close(s.done)
	rng := rand.NewChaCha8([32]byte{s.seed})
	msg := make([]byte, 64<<10)
	for {
		select {
		case <-s.stop:
			return
		default:
		}
		rng.Read(msg)
		if err := echoChunk(s.c, msg); err != nil {
			s.err = fmt.Errorf("chunk %d: %w", s.chunks.Load(), err)
			return
		}
		s.chunks.Add(1)
	}
}

// waitChunks waits until n more chunks have come back whole, and fails t
// if the stream broke or took longer than timeout.
func (s *liveStream) waitChunks(t *testing.T, what string, n int64, timeout time.Duration) {
	t.Helper()
	from := s.chunks.Load()
	deadline := time.Now().Add(timeout)
	for s.chunks.Load() < from+n {
		select {
		case <-s.done:
			t.Fatalf("the stream broke %s: %v", what, s.err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the stream stalled %s: %d chunks in %s, want %d", what, s.chunks.Load()-from, timeout, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// finish stops the stream after the chunk in flight and fails t if any
// chunk came back wrong or not at all. It then half-closes the connection
// and waits for the echo server to close its side, with nothing more.
func (s *liveStream) finish(t *testing.T) {
	t.Helper()
	s.halt()
	<-s.done
	if s.err != nil {
		t.Errorf("the stream broke after %d whole chunks: %v", s.chunks.Load(), s.err)
		return
	}
	if err := s.c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Errorf("close the stream's sending side: %v", err)
		return
	}
	s.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := io.Copy(io.Discard, s.c); n != 0 || err != nil {
		t.Errorf("after the last chunk the server sent %d bytes more and %v, want its FIN", n, err)
	}
}

// TestOverlayPeersChange keeps a TCP stream over each family from a pod
// on node 1 to a pod on node 2 while a third node is added to the peers
// files and removed again (new files renamed in), and then while node 2's
// daemon is stopped and started again with the same state and flags: the
// streams never break, and every byte comes back as sent.
func TestOverlayPeersChange(t *testing.T) {
	testutil.RequireRoot(t)
	u := newUnderlay(t)
	d1, f1 := overlayNode(t, u, 1)
	d2, f2 := overlayNode(t, u, 2)
	d3, f3 := overlayNode(t, u, 3)
	e1, e2, e3 := nodeEntry(t, d1), nodeEntry(t, d2), nodeEntry(t, d3)
	writePeersFile(t, []api.Node{e1, e2}, f1, f2)
	p1, p2, p3 := routePod(t, d1, "chg-1"), routePod(t, d2, "chg-2"), routePod(t, d3, "chg-3")
	waitPeers(t, d1, "node-2")
	waitPeers(t, d2, "node-1")

	ln := nsListen(t, p2.ns, "tcp", ":0")
	serveLongEcho(t, ln, nil)
	var streams []*liveStream
	for i := range p1.IPs {
		c := mustDial(t, nsDialer(p1.ns), netip.AddrPortFrom(p2.IPs[i].Addr(), portOf(ln.Addr())))
		streams = append(streams, startStream(t, c, byte(i)))
	}
	progress := func(what string, timeout time.Duration) {
		t.Helper()
		for _, s := range streams {
			s.waitChunks(t, what, 8, timeout)
		}
	}
	listed := func(name string) bool {
		out, err := d1.ctl("peers")
		if err != nil {
			t.Fatalf("tapswitchctl peers: %v: %s", err, out)
		}
		return strings.Contains(out, name)
	}
	progress("at the start", 10*time.Second)

	writePeersFile(t, []api.Node{e1, e2, e3}, f1, f2, f3)
	testutil.WaitFor(t, "node 1's tapswitchctl peers to list node-3", func() bool { return listed("node-3") })
	waitPeers(t, d2, "node-1", "node-3")
	waitPeers(t, d3, "node-1", "node-2")
	mustPingOne(t, p1, p3.IPs[0].Addr())
	mustPingOne(t, p3, p2.IPs[1].Addr())
	progress("with node-3 added", 10*time.Second)

	writePeersFile(t, []api.Node{e1, e2}, f1, f2)
	testutil.WaitFor(t, "node 1's tapswitchctl peers to drop node-3", func() bool { return !listed("node-3") })
	waitPeers(t, d2, "node-1")
	for _, c := range e3.PodCIDRs {
		if out := ipOutput(t, "-n", filepath.Base(d1.node), "route", "show", c.String()); strings.TrimSpace(out) != "" {
			t.Errorf("node 1 still routes node-3's %s: %s", c, out)
		}
	}
	progress("with node-3 removed", 10*time.Second)

	d2.stop(t)
	d2 = startDaemonIn(t, d2.node, d2.stateDir, overlayFlags(2, e2.Address, f2)...)
	t.Cleanup(func() {
		if t.Failed() {
			logOverlayNode(t, d2)
		}
		// Before d2 stops, if the test ends early: the server waits for
		// the streams' FINs.
		for _, s := range streams {
			s.halt()
			s.c.Close()
		}
	})
	waitPeers(t, d2, "node-1")
	// TCP's retransmission timer backs off while the daemon is down.
	progress("after node 2's daemon restarted", 30*time.Second)
	for _, s := range streams {
		s.finish(t)
	}
}

// ipOutput runs ip(8) with args and returns its output, failing t if it
// fails.
func ipOutput(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// vxlanDrops returns the VXLAN port's drops by reason, from tapswitchctl
// stats -o json.
func vxlanDrops(t *testing.T, d *daemonProc) map[string]uint64 {
	t.Helper()
	out, err := d.ctl("stats", "-o", "json")
	if err != nil {
		t.Fatalf("tapswitchctl stats: %v: %s", err, out)
	}
	var st api.Stats
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("tapswitchctl stats -o json: %v: %s", err, out)
	}
	for _, p := range st.Ports {
		if p.Name == "vxlan" {
			return p.Drops
		}
	}
	t.Fatalf("no vxlan port in tapswitchctl stats -o json:\n%s", out)
	return nil
}

// vxlanPacket is a VXLAN header (RFC 7348 section 5) with flags and vni,
// then frame.
func vxlanPacket(flags byte, vni uint32, frame []byte) []byte {
	b := make([]byte, 8, 8+len(frame))
	b[0] = flags
	binary.BigEndian.PutUint32(b[4:], vni<<8)
	return append(b, frame...)
}

// udp4Packet is an IPv4 packet holding a UDP datagram with payload, its
// header checksum set and the UDP checksum left out (0, as RFC 768
// allows over IPv4).
func udp4Packet(src, dst netip.AddrPort, payload []byte) []byte {
	b := make([]byte, 28+len(payload))
	b[0], b[8], b[9] = 0x45, 64, syscall.IPPROTO_UDP
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	s, d := src.Addr().As4(), dst.Addr().As4()
	copy(b[12:], s[:])
	copy(b[16:], d[:])
	binary.BigEndian.PutUint16(b[10:], ^vswitch.Checksum(b[:20], 0))
	binary.BigEndian.PutUint16(b[20:], src.Port())
	binary.BigEndian.PutUint16(b[22:], dst.Port())
	binary.BigEndian.PutUint16(b[24:], uint16(8+len(payload)))
	copy(b[28:], payload)
	return b
}

// TestOverlayHostilePackets sends hand-made VXLAN packets to node 1's
// port 8472: a well-formed one from an underlay address that is no peer's,
// and from a peer's address ones with the wrong VNI, without the I flag,
// too short, too big, for a MAC that is not node 1's VTEP's, and holding
// ARP. Each is dropped and counted by its reason in tapswitchctl stats,
// and none reaches the pod they are addressed to: a well-formed packet
// sent after them from the peer is the first datagram the pod gets, and
// the only frame the peer's counters show.
func TestOverlayHostilePackets(t *testing.T) {
	testutil.RequireRoot(t)
	u := newUnderlay(t)
	d, f := overlayNode(t, u, 1)
	self := nodeEntry(t, d)
	// The peer is a bare namespace on the underlay: node 1 knows it only
	// from its entry in the peers file.
	peerNS, strangerNS := testutil.NewNetNS(t), testutil.NewNetNS(t)
	peerUnder, strangerUnder := u.join(t, peerNS), u.join(t, strangerNS)
	peerMAC := vswitch.MAC{0x02, 0x52, 0, 0, 0, 2}
	writePeersFile(t, []api.Node{self, {
		Name: "node-2", Address: peerUnder, VTEPMAC: peerMAC, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.252.2.0/24")},
	}}, f)
	p := routePod(t, d, "hostile-target")
	waitPeers(t, d, "node-2")
	rx := nsListenPacket(t, p.ns, "udp4", netip.AddrPortFrom(p.addr(), 0).String())
	target := netip.AddrPortFrom(p.addr(), portOf(rx.LocalAddr()))
	from := netip.MustParseAddrPort("10.252.2.9:40000")
	vtep := net.UDPAddrFromAddrPort(netip.AddrPortFrom(self.Address, 8472))
	peer := nsListenPacket(t, peerNS, "udp4", netip.AddrPortFrom(peerUnder, 0).String())
	stranger := nsListenPacket(t, strangerNS, "udp4", netip.AddrPortFrom(strangerUnder, 0).String())

	ip4 := func(tag string) []byte { return udp4Packet(from, target, []byte(tag)) }
	toUs := func(payload []byte) []byte {
		return porttest.Ether(self.VTEPMAC, peerMAC, vswitch.EtherTypeIP4, payload)
	}
	sends := []struct {
		src    net.PacketConn
		pkt    []byte
		reason string
	}{
		{stranger, vxlanPacket(0x08, 1, toUs(ip4("from a stranger"))), "rx_unknown_source"},
		{peer, vxlanPacket(0x08, 2, toUs(ip4("wrong vni"))), "rx_wrong_vni"},
		{peer, vxlanPacket(0x00, 1, toUs(ip4("no I flag"))), "rx_bad_flags"},
		{peer, vxlanPacket(0x08, 1, nil), "rx_short"},
		{peer, vxlanPacket(0x08, 1, toUs(ip4(strings.Repeat("too big ", 200)))), "rx_too_big"},
		{peer, vxlanPacket(0x08, 1, porttest.Ether(porttest.MAC(77), peerMAC, vswitch.EtherTypeIP4, ip4("not ours"))), "rx_not_ours"},
		{peer, vxlanPacket(0x08, 1, porttest.ARP(2, peerMAC, from.Addr(), self.VTEPMAC, p.addr(), self.VTEPMAC)), "rx_not_ip"},
	}
	before := vxlanDrops(t, d)
	want := map[string]uint64{}
	for _, s := range sends {
		if _, err := s.src.WriteTo(s.pkt, vtep); err != nil {
			t.Fatalf("send the %s packet: %v", s.reason, err)
		}
		want[s.reason]++
	}
	var got map[string]uint64
	testutil.WaitFor(t, "the vxlan port to count the drops", func() bool {
		got = vxlanDrops(t, d)
		for r, n := range want {
			if got[r]-before[r] < n {
				return false
			}
		}
		return true
	})
	// Only the receive side's: the switch floods the pod's multicast to
	// the port too, which counts each as a tx drop.
	for r, n := range got {
		if strings.HasPrefix(r, "rx_") && n-before[r] != want[r] {
			t.Errorf("vxlan drops %s: %d new, want %d (all: %v)", r, n-before[r], want[r], got)
		}
	}

	// The control: the same packet as the stranger's, from the peer.
	if _, err := peer.WriteTo(vxlanPacket(0x08, 1, toUs(ip4("control"))), vtep); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2048)
	rx.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, src, err := rx.ReadFrom(buf)
	if err != nil {
		t.Fatalf("the pod got no datagram after the control: %v", err)
	}
	if string(buf[:n]) != "control" || peerAddr(src) != from {
		t.Errorf("the pod's first datagram is %q from %s, want the control from %s", buf[:n], src, from)
	}
	ps, err := d.client.Peers(context.Background())
	if err != nil || len(ps) != 1 || ps[0].RxFrames != 1 {
		t.Errorf("node 1's peers %+v (%v), want node-2 with the control as its one frame received", ps, err)
	}
}

// TestOverlayBadPeersFile rewrites node 1's peers file with a JSON syntax
// error (in place) and then with a bad entry (renamed in): each time the
// daemon keeps the last good set, logs the line, and the pods keep
// reaching each other; a good file after them is applied.
func TestOverlayBadPeersFile(t *testing.T) {
	testutil.RequireRoot(t)
	u := newUnderlay(t)
	d1, f1 := overlayNode(t, u, 1)
	d2, f2 := overlayNode(t, u, 2)
	nodes := writePeers(t, []*daemonProc{d1, d2}, []string{f1, f2})
	p1, p2 := routePod(t, d1, "bad-1"), routePod(t, d2, "bad-2")
	waitPeers(t, d1, "node-2")
	waitPeers(t, d2, "node-1")
	log := new(peerLog)
	ln := nsListen(t, p2.ns, "tcp", ":0")
	serveLongEcho(t, ln, log)
	msg := make([]byte, 1<<20)
	rand.NewChaCha8([32]byte{6}).Read(msg)
	good, err := json.MarshalIndent(nodes, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(good), "\n")
	// node-2's entry: its opening brace and its address line.
	name := slices.Index(lines, `    "name": "node-2",`)
	if name < 1 || !strings.HasPrefix(lines[name+1], `    "address": `) {
		t.Fatalf("unexpected peers file layout:\n%s", good)
	}

	for _, bad := range []struct {
		what, line string
		edit       func([]string)
		write      func(t *testing.T, f string, b []byte)
	}{
		{
			// The comma after node-2's address goes: the next key is
			// where the syntax breaks.
			what: "a syntax error", line: fmt.Sprintf("line %d column", name+3),
			edit: func(ls []string) { ls[name+1] = strings.TrimSuffix(ls[name+1], ",") },
			write: func(t *testing.T, f string, b []byte) {
				if err := os.WriteFile(f, b, 0o644); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			what: "a multicast VTEP MAC", line: fmt.Sprintf("line %d: entry 1", name),
			edit:  func(ls []string) { ls[name+2] = `    "vtep_mac": "01:00:5e:00:00:01",` },
			write: renameIn,
		},
	} {
		ls := slices.Clone(lines)
		bad.edit(ls)
		mark := len(d1.log.String())
		bad.write(t, f1, []byte(strings.Join(ls, "\n")))
		testutil.WaitFor(t, "the daemon to log "+bad.what+" at "+bad.line, func() bool {
			l := d1.log.String()[mark:]
			return strings.Contains(l, "peers file not applied") && strings.Contains(l, bad.line)
		})
		if ps := peerNames(t, d1); !slices.Equal(ps, []string{"node-2"}) {
			t.Errorf("after %s node 1's peers are %v, want the last good set, node-2", bad.what, ps)
		}
		for i := range p1.IPs {
			mustPingOne(t, p1, p2.IPs[i].Addr())
			mustPingOne(t, p2, p1.IPs[i].Addr())
		}
		transferFrom(t, p1, 0, p2.IPs[0].Addr(), ln, log, msg)
	}

	// A good file is applied after the bad ones: node 2 leaves.
	writePeersFile(t, nodes[:1], f1)
	waitPeers(t, d1)
}
