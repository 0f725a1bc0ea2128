package test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"tapswitch/daemon/api"
	"tapswitch/internal/testutil"
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
// file the test fills.
func overlayNode(t *testing.T, u *underlayNet, n int) (*daemonProc, string) {
	t.Helper()
	node := testutil.NewNetNS(t)
	ipCmd(t, "-n", filepath.Base(node), "link", "set", "lo", "up")
	addr := u.join(t, node)
	peers := filepath.Join(t.TempDir(), "peers.json")
	if err := os.WriteFile(peers, []byte("[]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d := startDaemonIn(t, node, "",
		"--pod-cidr", fmt.Sprintf("10.252.%d.0/24", n), "--pod-cidr6", fmt.Sprintf("fd00:252:0:%d::/64", n),
		"--cluster-cidr", "10.252.0.0/16,fd00:252::/48",
		"--node-name", fmt.Sprintf("node-%d", n), "--underlay", addr.String(), "--peers", peers)
	return d, peers
}

// writePeers writes the nodes' own entries, as tapswitchctl node -o json
// prints them, into every peers file: a static cluster's file.
func writePeers(t *testing.T, ds []*daemonProc, files []string) []api.Node {
	t.Helper()
	var nodes []api.Node
	for _, d := range ds {
		out, err := d.ctl("node", "-o", "json")
		if err != nil {
			t.Fatalf("tapswitchctl node: %v: %s", err, out)
		}
		var n api.Node
		if err := json.Unmarshal([]byte(out), &n); err != nil {
			t.Fatalf("tapswitchctl node -o json: %v: %s", err, out)
		}
		nodes = append(nodes, n)
	}
	b, err := json.MarshalIndent(nodes, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		// Written whole and renamed in, as a careful tool does.
		tmp := f + ".tmp"
		if err := os.WriteFile(tmp, b, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, f); err != nil {
			t.Fatal(err)
		}
	}
	return nodes
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
}
