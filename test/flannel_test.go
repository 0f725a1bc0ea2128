package test

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"tapswitch/daemon/api"
	"tapswitch/internal/testutil"
	vswitch "tapswitch/switch"
)

// A node set up as flannel's vxlan backend sets one up (flannel's
// pkg/backend/vxlan: vxlan_network.go and device.go), with iproute2: a
// VXLAN device flannel.1 (VNI 1, port 8472, no learning) holding the
// node's subnet address /32; for each other node a permanent neighbour
// entry for its subnet address with its VTEP MAC, an FDB entry sending
// that MAC to its underlay address, and an onlink route to its subnet via
// its subnet address; and pods on veths to a Linux bridge cni0 holding the
// subnet's first address, as flannel's CNI plugin (bridge) attaches them.
// IPv4 only: flannel's IPv6 is a second device, flannel-v6.1.

// flannelMTUOverhead is what flannel takes off the underlay's MTU for its
// vxlan backend over IPv4.
const flannelMTUOverhead = 50

// flannelNode is a kernel node configured as flanneld configures one.
type flannelNode struct {
	name   string       // its name in the peers files
	ns     string       // the node's netns path
	under  netip.Addr   // its underlay address
	subnet netip.Prefix // its pod subnet, 10.252.N.0/24
	vtep   vswitch.MAC  // flannel.1's MAC
	mtu    int          // flannel.1's, and the pods'
	pods   int
}

// newFlannelNode makes node N on u with the subnet 10.252.N.0/24. Its
// underlay veth offloads transmit checksums (a veth's default) when
// txCsumOffload is set; otherwise it sums in software, as a NIC would.
func newFlannelNode(t *testing.T, u *underlayNet, n int, txCsumOffload bool) *flannelNode {
	t.Helper()
	f := &flannelNode{
		name: fmt.Sprintf("flannel-%d", n), ns: testutil.NewNetNS(t),
		subnet: netip.MustParsePrefix(fmt.Sprintf("10.252.%d.0/24", n)),
		mtu:    1500 - flannelMTUOverhead,
	}
	ns := filepath.Base(f.ns)
	ipCmd(t, "-n", ns, "link", "set", "lo", "up")
	f.under = u.join(t, f.ns)
	if !txCsumOffload {
		// As a NIC fills in checksums before the wire: without this, a
		// veth hands the packet on with CHECKSUM_PARTIAL, and the
		// inner TCP or UDP checksum of what flannel.1 encapsulates
		// reaches the receiver unfinished (the kernel keeps that in
		// the skb, a UDP socket's reader never learns it).
		ipNetnsOutput(t, f.ns, "ethtool", "-K", "ul0", "tx", "off")
	}
	// The node forwards between its pods and flannel.1 (the node's own
	// sysctl, in its namespace).
	if out, err := exec.Command("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1").CombinedOutput(); err != nil {
		t.Fatalf("ip_forward on in %s: %v: %s", ns, err, out)
	}
	ipCmd(t, "-n", ns, "link", "add", "flannel.1", "type", "vxlan", "id", "1", "local", f.under.String(),
		"dev", "ul0", "dstport", "8472", "nolearning")
	ipCmd(t, "-n", ns, "link", "set", "flannel.1", "mtu", strconv.Itoa(f.mtu))
	ipCmd(t, "-n", ns, "addr", "add", netip.PrefixFrom(f.subnet.Addr(), 32).String(), "dev", "flannel.1")
	ipCmd(t, "-n", ns, "link", "set", "flannel.1", "up")
	ipCmd(t, "-n", ns, "link", "add", "cni0", "type", "bridge")
	ipCmd(t, "-n", ns, "addr", "add", netip.PrefixFrom(f.subnet.Addr().Next(), f.subnet.Bits()).String(), "dev", "cni0")
	ipCmd(t, "-n", ns, "link", "set", "cni0", "up")
	f.vtep = linkMAC(t, f.ns, "flannel.1")
	t.Cleanup(func() {
		if t.Failed() {
			f.log(t)
		}
	})
	return f
}

// linkMAC reads the MAC of the device name in the netns ns.
func linkMAC(t *testing.T, ns, name string) vswitch.MAC {
	t.Helper()
	out := ipOutput(t, "-j", "-n", filepath.Base(ns), "link", "show", name)
	var links []struct {
		Address string `json:"address"`
	}
	if err := json.Unmarshal([]byte(out), &links); err != nil || len(links) != 1 {
		t.Fatalf("ip -j link show %s: %v: %s", name, err, out)
	}
	mac, err := vswitch.ParseMAC(links[0].Address)
	if err != nil {
		t.Fatalf("%s's MAC: %v", name, err)
	}
	return mac
}

// entry is the node's entry for a tapswitch peers file: flannel.1's MAC
// is its VTEP MAC (flannel's VtepMAC annotation).
func (f *flannelNode) entry() api.Node {
	return api.Node{Name: f.name, Address: f.under, VTEPMAC: f.vtep, PodCIDRs: []netip.Prefix{f.subnet}}
}

// addPeer programs another node as flanneld does when its lease appears:
// its subnet address resolves to its VTEP MAC, the MAC goes to its
// underlay address, and its subnet is routed onlink via its subnet
// address. Only the IPv4 pod CIDR is flannel.1's.
func (f *flannelNode) addPeer(t *testing.T, n api.Node) {
	t.Helper()
	ns := filepath.Base(f.ns)
	for _, c := range n.PodCIDRs {
		if !c.Addr().Is4() {
			continue
		}
		gw := c.Addr().String()
		ipCmd(t, "-n", ns, "neigh", "replace", gw, "lladdr", n.VTEPMAC.String(), "dev", "flannel.1", "nud", "permanent")
		ipNetnsOutput(t, f.ns, "bridge", "fdb", "append", n.VTEPMAC.String(), "dev", "flannel.1", "dst", n.Address.String())
		ipCmd(t, "-n", ns, "route", "replace", c.String(), "via", gw, "dev", "flannel.1", "onlink")
	}
}

// addPod attaches a new pod namespace to cni0 on a veth, with the next
// address of the subnet and a default route via cni0's.
func (f *flannelNode) addPod(t *testing.T, id string) pod {
	t.Helper()
	f.pods++
	addr := f.subnet.Addr().Next()
	for range f.pods {
		addr = addr.Next()
	}
	p := pod{ns: testutil.NewNetNS(t), Pod: api.Pod{
		ID: id, IfName: "eth0", MTU: f.mtu,
		IPs:      []netip.Prefix{netip.PrefixFrom(addr, f.subnet.Bits())},
		Gateways: []netip.Addr{f.subnet.Addr().Next()},
	}}
	p.NetNS = p.ns
	ns, podNS, host := filepath.Base(f.ns), filepath.Base(p.ns), fmt.Sprintf("veth%d", f.pods)
	mtu := strconv.Itoa(f.mtu)
	ipCmd(t, "-n", ns, "link", "add", host, "mtu", mtu, "type", "veth", "peer", "name", "eth0", "mtu", mtu, "netns", podNS)
	ipCmd(t, "-n", ns, "link", "set", host, "master", "cni0", "up")
	ipCmd(t, "-n", podNS, "link", "set", "lo", "up")
	ipCmd(t, "-n", podNS, "addr", "add", p.IPs[0].String(), "dev", "eth0")
	ipCmd(t, "-n", podNS, "link", "set", "eth0", "up")
	ipCmd(t, "-n", podNS, "route", "add", "default", "via", p.Gateways[0].String())
	return p
}

// node is the flannel node itself as a pinger, from its own namespace.
func (f *flannelNode) node() pod {
	return pod{ns: f.ns, Pod: api.Pod{ID: f.name}}
}

// log logs the node's devices, routes, neighbours and FDB for a failing
// test.
func (f *flannelNode) log(t *testing.T) {
	ns := filepath.Base(f.ns)
	for _, cmd := range [][]string{
		{"ip", "-n", ns, "-s", "-d", "link", "show", "flannel.1"},
		{"ip", "-n", ns, "addr"},
		{"ip", "-n", ns, "route"},
		{"ip", "-n", ns, "neigh"},
		{"ip", "netns", "exec", ns, "bridge", "fdb", "show", "dev", "flannel.1"},
	} {
		out, err := exec.Command(cmd[0], cmd[1:]...).CombinedOutput()
		t.Logf("%s (%v):\n%s", cmd, err, out)
	}
}

// TestOverlayFlannelNode joins a node set up as flannel's vxlan backend
// sets one up to two tapswitch nodes: each side has the other in its
// peers (the tapswitch nodes' peers files list flannel.1's MAC as its
// VTEP MAC). Pods on the flannel node and on the tapswitch nodes ping each
// other and transfer data both ways, each server seeing the client pod's
// own address; the flannel node itself (from flannel.1's address) and a
// tapswitch node (from tsw0's) reach the pods across too. IPv4 only:
// flannel carries IPv6 on another device, flannel-v6.1, not set up here.
//
// Twice: with the flannel node's underlay veth summing in software, as a
// NIC's checksums arrive; and with a veth's default checksum offload, as
// between nodes that are containers on one host (kind), where the inner
// checksums of flannel.1's packets arrive unfinished.
func TestOverlayFlannelNode(t *testing.T) {
	testutil.RequireRoot(t)
	t.Run("checksums on the wire", func(t *testing.T) { testFlannelNode(t, false) })
	t.Run("checksums offloaded", func(t *testing.T) {
		// The flannel node's veth leaves inner checksums partial
		// (CHECKSUM_PARTIAL): the VXLAN port finishes them
		// (overlay/checksum.go), or the pods would drop every segment.
		t.Skip("with offloads on, the flannel node's veth also passes VXLAN tunnel GSO packets " +
			"unsegmented: one datagram larger than a frame, with no UDP_GRO segment size (rx_too_big); " +
			"the port must take them as super-frames (issue 12's speed item); remove this skip then")
		testFlannelNode(t, true)
	})
}

func testFlannelNode(t *testing.T, txCsumOffload bool) {
	u := newUnderlay(t)
	d1, f1 := overlayNode(t, u, 1)
	d2, f2 := overlayNode(t, u, 2)
	fl := newFlannelNode(t, u, 4, txCsumOffload)
	e1, e2 := nodeEntry(t, d1), nodeEntry(t, d2)
	writePeersFile(t, []api.Node{e1, e2, fl.entry()}, f1, f2)
	fl.addPeer(t, e1)
	fl.addPeer(t, e2)
	a, b, fp := routePod(t, d1, "fl-a"), routePod(t, d2, "fl-b"), fl.addPod(t, "fl-f")
	t.Cleanup(func() {
		if t.Failed() {
			logCsumErrors(t, a, b, fp)
		}
	})
	waitPeers(t, d1, "node-2", fl.name)
	waitPeers(t, d2, "node-1", fl.name)

	for _, p := range []pod{a, b} {
		mustPingOne(t, fp, p.addr())
		mustPingOne(t, p, fp.addr())
		mustPingOne(t, fl.node(), p.addr())
	}
	mustPingOne(t, pod{ns: d1.node, Pod: api.Pod{ID: "node-1"}}, fp.addr())

	msg := make([]byte, 4<<20)
	rand.NewChaCha8([32]byte{4}).Read(msg)
	for _, c := range []struct{ client, server pod }{{fp, a}, {a, fp}, {b, fp}} {
		t.Run(c.client.ID+" to "+c.server.ID, func(t *testing.T) {
			log := new(peerLog)
			ln := nsListen(t, c.server.ns, "tcp", ":0")
			serveLongEcho(t, ln, log)
			transferFrom(t, c.client, 0, c.server.addr(), ln, log, msg)
		})
	}
}

// logCsumErrors logs the pods' counts of TCP and UDP segments dropped for
// a bad checksum.
func logCsumErrors(t *testing.T, pods ...pod) {
	for _, p := range pods {
		out, err := exec.Command("ip", "netns", "exec", filepath.Base(p.ns), "nstat", "-az", "TcpInCsumErrors", "UdpInCsumErrors").CombinedOutput()
		t.Logf("pod %s: nstat (%v):\n%s", p.ID, err, out)
	}
}
