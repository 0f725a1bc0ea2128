package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"

	"tapswitch/daemon/api"
	vswitch "tapswitch/switch"
)

// Pod → pod across two simulated nodes. The nodes are namespaces, each
// with an underlay address on a veth (ul0) to a bridge in a namespace of
// its own (xnodeUnderlay), and the pod networks meet over VXLAN as
// flannel's vxlan backend carries them (VNI 1, UDP 8472, L3 mode):
//
//   - kernel: two nodes set up as flanneld sets one up, with iproute2: a
//     VXLAN device flannel.1 (no learning) holding the node's subnet
//     address /32; for the other node a permanent neighbour entry of its
//     subnet address with its VTEP MAC, an FDB entry sending that MAC to
//     its underlay address and an onlink route to its subnet; and a pod
//     on a veth to a bridge cni0 holding the subnet's first address, as
//     flannel's CNI plugin (bridge) attaches one;
//   - tapswitch: two tapswitchd (--peers, --node-name, --underlay,
//     --cluster-cidr), whose peers file is the nodes' tapswitchctl node
//     -o json entries in one array, a pod each;
//   - tapswitch-flannel: a third flannel-style node in the tapswitch
//     nodes' peers file, its pod the client of a pod on a tapswitch node.
//     Its ul0 sums checksums in software (ethtool -K ul0 tx off), as a
//     NIC would: with a veth's offloads on, flannel.1's packets leave as
//     VXLAN GSO packets, larger than a frame, which tapswitch's VXLAN port
//     cannot take yet (rx_too_big). The kernel pair keeps the defaults.
//
// Every pod's MTU is the underlay's 1500 less VXLAN's 50 bytes, flannel's
// choice and the daemon's.

// mixedVariant names the tapswitch ↔ flannel-style pair in the results;
// its ratios to the kernel pair are under mixedRatioPrefix+key.
const (
	mixedVariant     = "tapswitch-flannel"
	mixedRatioPrefix = "mixed_"
)

// xnodeFigures are the figures of the pairs of nodes.
var xnodeFigures = []string{"xnode_tcp1_gbps", "xnode_tcp4_gbps", "xnode_rr_us"}

var (
	// xnodeUnderlay is the nodes' underlay, from RFC 2544's
	// benchmarking range, private to the bench's namespaces.
	xnodeUnderlay = netip.MustParsePrefix("198.19.20.0/24")
	// xnodeCluster holds every pod subnet of the simulated nodes.
	xnodeCluster = netip.MustParsePrefix("10.251.0.0/16")
)

const (
	xnodeVXLANOverhead = 50 // VXLAN over IPv4: outer Ethernet 14, IPv4 20, UDP 8, VXLAN 8
	xnodeMTU           = benchMTU - xnodeVXLANOverhead
)

// xnodePair is two pods on two nodes, client → server, and the daemons
// of its tapswitch nodes, whose drops its progress lines show.
type xnodePair struct {
	client, server pod
	daemons        []*daemonProc
}

// xnodeSetup is the three pairs and the offloads of their nodes'
// underlay veths, for meta.
type xnodeSetup struct {
	kernel, tapswitch, mixed xnodePair
	offloads                 map[string]map[string]string
}

// underlay is the bridge between the simulated nodes.
type underlay struct {
	ns    string
	nodes int
}

// setupXnode builds the underlay, the two flannel-style kernel nodes, the
// two tapswitch nodes and the third flannel-style node among them, with a
// pod on each, and returns the pairs. Every step's undo is on cl.
func setupXnode(ctx context.Context, cl *cleanups, opts options) (*xnodeSetup, error) {
	ns, _, err := addNodeNS(ctx, cl, "x-ul")
	if err != nil {
		return nil, err
	}
	if err := addBridge(ctx, ns, netip.Prefix{}, benchMTU); err != nil {
		return nil, err
	}
	u := &underlay{ns: ns}
	s := &xnodeSetup{offloads: make(map[string]map[string]string)}

	// The kernel pair: two flannel-style nodes with the veth's defaults.
	k1, err := addFlannelNode(ctx, cl, u, "x-k1", 1, true)
	if err != nil {
		return nil, err
	}
	k2, err := addFlannelNode(ctx, cl, u, "x-k2", 2, true)
	if err != nil {
		return nil, err
	}
	for _, step := range []struct{ from, to *flannelNode }{{k1, k2}, {k2, k1}} {
		if err := step.from.addPeer(ctx, step.to.entry()); err != nil {
			return nil, err
		}
	}
	if s.kernel.client, err = k1.addPod(ctx, cl, "x-k1a"); err != nil {
		return nil, err
	}
	if s.kernel.server, err = k2.addPod(ctx, cl, "x-k2a"); err != nil {
		return nil, err
	}

	// The tapswitch pair and the flannel-style node that joins them.
	dir, err := newTempDir(cl)
	if err != nil {
		return nil, err
	}
	peers := filepath.Join(dir, "peers.json")
	if err := os.WriteFile(peers, []byte("[]\n"), 0o644); err != nil {
		return nil, err
	}
	var ds []*daemonProc
	for i := range 2 {
		d, err := addTapswitchNode(ctx, cl, opts, u, dir, peers, i+1)
		if err != nil {
			return nil, err
		}
		ds = append(ds, d)
	}
	f3, err := addFlannelNode(ctx, cl, u, "x-f3", 13, false)
	if err != nil {
		return nil, err
	}
	nodes := []api.Node{f3.entry()}
	for _, d := range ds {
		n, err := d.nodeEntry(ctx)
		if err != nil {
			return nil, err
		}
		nodes = append(nodes, n)
		if err := f3.addPeer(ctx, n); err != nil {
			return nil, err
		}
	}
	if err := writePeers(peers, nodes); err != nil {
		return nil, err
	}
	var tpods []pod
	for i, d := range ds {
		name := fmt.Sprintf("x-t%da", i+1)
		ns, path, err := addNetNS(ctx, cl, name)
		if err != nil {
			return nil, err
		}
		ap, err := d.addPod(ctx, cl, nsPrefix()+name, path)
		if err != nil {
			return nil, err
		}
		tpods = append(tpods, pod{ns: ns, path: path, ifname: ap.IfName, ip: ap.IPs[0]})
	}
	s.tapswitch = xnodePair{client: tpods[0], server: tpods[1], daemons: ds}
	if s.mixed.client, err = f3.addPod(ctx, cl, "x-f3a"); err != nil {
		return nil, err
	}
	s.mixed.server, s.mixed.daemons = tpods[1], ds[1:]

	for _, n := range []struct {
		key string
		f   *flannelNode
	}{{"kernel xnode node ul0", k1}, {mixedVariant + " xnode flannel node ul0", f3}} {
		s.offloads[n.key] = offloads(ctx, pod{ns: n.f.ns, ifname: "ul0"})
	}
	return s, nil
}

// join gives the namespace node an underlay address on a veth ul0 to the
// underlay's bridge and returns it. The pair is made in the bridge's
// namespace, its peer moved to the node's: never in the root namespace.
func (u *underlay) join(ctx context.Context, node string) (netip.Addr, error) {
	u.nodes++
	addr := hostInSubnet(xnodeUnderlay, u.nodes)
	port := fmt.Sprintf("ul%d", u.nodes)
	for _, args := range [][]string{
		{"-n", u.ns, "link", "add", port, "mtu", fmt.Sprint(benchMTU), "type", "veth", "peer", "name", "ul0", "mtu", fmt.Sprint(benchMTU), "netns", node},
		{"-n", u.ns, "link", "set", port, "master", "br0", "up"},
		{"-n", node, "addr", "add", addr.String(), "dev", "ul0"},
		{"-n", node, "link", "set", "ul0", "up"},
	} {
		if err := ipCmd(ctx, args...); err != nil {
			return netip.Addr{}, err
		}
	}
	return addr.Addr(), nil
}

// addTapswitchNode starts a tapswitchd in a new node namespace on u with
// the pod subnet 10.251.(10+n).0/24, node name node-N and the peers
// file peers; its files are under dir/node-N.
func addTapswitchNode(ctx context.Context, cl *cleanups, opts options, u *underlay, dir, peers string, n int) (*daemonProc, error) {
	node, _, err := addNodeNS(ctx, cl, fmt.Sprintf("x-t%d", n))
	if err != nil {
		return nil, err
	}
	addr, err := u.join(ctx, node)
	if err != nil {
		return nil, err
	}
	nodeDir := filepath.Join(dir, fmt.Sprintf("node-%d", n))
	if err := os.Mkdir(nodeDir, 0o700); err != nil {
		return nil, err
	}
	return startDaemon(ctx, cl, opts.binDir, nodeDir, node, xnodeSubnet(10+n), xnodeMTU,
		"--egress", "route", "--cluster-cidr", xnodeCluster.String(),
		"--node-name", fmt.Sprintf("node-%d", n), "--underlay", addr.String(), "--peers", peers)
}

// xnodeSubnet is the pod subnet 10.251.N.0/24 of xnodeCluster.
func xnodeSubnet(n int) netip.Prefix {
	a := xnodeCluster.Addr().As4()
	a[2] = byte(n)
	return netip.PrefixFrom(netip.AddrFrom4(a), 24)
}

// nodeEntry is the daemon's own entry for a peers file, as tapswitchctl
// node -o json prints it.
func (d *daemonProc) nodeEntry(ctx context.Context) (api.Node, error) {
	var n api.Node
	out, err := d.ctl(ctx, "node", "-o", "json")
	if err != nil {
		return n, err
	}
	if err := json.Unmarshal(out, &n); err != nil {
		return n, fmt.Errorf("tapswitchctl node -o json: decode %q: %w", out, err)
	}
	return n, nil
}

// writePeers writes nodes as the peers file, whole, renamed in.
func writePeers(file string, nodes []api.Node) error {
	b, err := json.MarshalIndent(nodes, "", "  ")
	if err != nil {
		return err
	}
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, file)
}

// flannelNode is a kernel node set up as flanneld sets one up.
type flannelNode struct {
	name   string
	ns     string
	under  netip.Addr
	subnet netip.Prefix
	vtep   vswitch.MAC
	pods   int
}

// addFlannelNode makes the node namespace suffix on u with the pod subnet
// 10.251.N.0/24: ip_forward on (in its namespace), flannel.1 and cni0.
// With txCsumOffload false, ul0 sums checksums in software.
func addFlannelNode(ctx context.Context, cl *cleanups, u *underlay, suffix string, n int, txCsumOffload bool) (*flannelNode, error) {
	ns, _, err := addNodeNS(ctx, cl, suffix)
	if err != nil {
		return nil, err
	}
	f := &flannelNode{name: "flannel-" + suffix, ns: ns, subnet: xnodeSubnet(n)}
	if f.under, err = u.join(ctx, ns); err != nil {
		return nil, err
	}
	var cmds [][]string
	if !txCsumOffload {
		cmds = append(cmds, []string{"ethtool", "-K", "ul0", "tx", "off"})
	}
	cmds = append(cmds, []string{"sysctl", "-q", "-w", "net.ipv4.ip_forward=1"})
	for _, args := range cmds {
		if out, err := nsCommand(ctx, ns, args[0], args[1:]...).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("in %s: %v: %w: %s", ns, args, err, out)
		}
	}
	gw := hostInSubnet(f.subnet, 1)
	for _, args := range [][]string{
		{"-n", ns, "link", "add", "flannel.1", "type", "vxlan", "id", "1", "local", f.under.String(), "dev", "ul0", "dstport", "8472", "nolearning"},
		{"-n", ns, "link", "set", "flannel.1", "mtu", fmt.Sprint(xnodeMTU)},
		{"-n", ns, "addr", "add", netip.PrefixFrom(f.subnet.Addr(), 32).String(), "dev", "flannel.1"},
		{"-n", ns, "link", "set", "flannel.1", "up"},
		{"-n", ns, "link", "add", "cni0", "type", "bridge"},
		{"-n", ns, "addr", "add", gw.String(), "dev", "cni0"},
		{"-n", ns, "link", "set", "cni0", "up"},
	} {
		if err := ipCmd(ctx, args...); err != nil {
			return nil, err
		}
	}
	out, err := exec.CommandContext(ctx, "ip", "-j", "-n", ns, "link", "show", "flannel.1").Output()
	if err != nil {
		return nil, fmt.Errorf("ip -n %s link show flannel.1: %w", ns, err)
	}
	var links []struct {
		Address string `json:"address"`
	}
	if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 {
		return nil, fmt.Errorf("ip -n %s link show flannel.1: unexpected output %q", ns, out)
	}
	if f.vtep, err = vswitch.ParseMAC(links[0].Address); err != nil {
		return nil, fmt.Errorf("flannel.1's MAC in %s: %w", ns, err)
	}
	return f, nil
}

// entry is the node's entry for a peers file: flannel.1's MAC is its
// VTEP MAC.
func (f *flannelNode) entry() api.Node {
	return api.Node{Name: f.name, Address: f.under, VTEPMAC: f.vtep, PodCIDRs: []netip.Prefix{f.subnet}}
}

// addPeer programs another node as flanneld does when its lease
// appears: neighbour, FDB entry and onlink route, IPv4 only.
func (f *flannelNode) addPeer(ctx context.Context, n api.Node) error {
	for _, c := range n.PodCIDRs {
		if !c.Addr().Is4() {
			continue
		}
		gw := c.Addr().String()
		if err := ipCmd(ctx, "-n", f.ns, "neigh", "replace", gw, "lladdr", n.VTEPMAC.String(), "dev", "flannel.1", "nud", "permanent"); err != nil {
			return err
		}
		fdb := []string{"fdb", "append", n.VTEPMAC.String(), "dev", "flannel.1", "dst", n.Address.String()}
		if out, err := nsCommand(ctx, f.ns, "bridge", fdb...).CombinedOutput(); err != nil {
			return fmt.Errorf("in %s: bridge %v: %w: %s", f.ns, fdb, err, out)
		}
		if err := ipCmd(ctx, "-n", f.ns, "route", "replace", c.String(), "via", gw, "dev", "flannel.1", "onlink"); err != nil {
			return err
		}
	}
	return nil
}

// addPod attaches a new pod namespace to cni0 on a veth, with the next
// address of the subnet and a default route via cni0's.
func (f *flannelNode) addPod(ctx context.Context, cl *cleanups, suffix string) (pod, error) {
	ns, path, err := addNetNS(ctx, cl, suffix)
	if err != nil {
		return pod{}, err
	}
	f.pods++
	p := pod{ns: ns, path: path, ifname: "eth0", ip: hostInSubnet(f.subnet, 1+f.pods)}
	veth, mtu := fmt.Sprintf("veth%d", f.pods), fmt.Sprint(xnodeMTU)
	for _, args := range [][]string{
		{"-n", f.ns, "link", "add", veth, "mtu", mtu, "type", "veth", "peer", "name", "eth0", "mtu", mtu, "netns", ns},
		{"-n", f.ns, "link", "set", veth, "master", "cni0", "up"},
		{"-n", ns, "link", "set", "lo", "up"},
		{"-n", ns, "addr", "add", p.ip.String(), "dev", "eth0"},
		{"-n", ns, "link", "set", "eth0", "up"},
		{"-n", ns, "route", "add", "default", "via", hostInSubnet(f.subnet, 1).Addr().String()},
	} {
		if err := ipCmd(ctx, args...); err != nil {
			return pod{}, err
		}
	}
	return p, nil
}

// measureXnode takes the cross-node figures of pair once, into v.
func measureXnode(ctx context.Context, w io.Writer, v *variant, pair xnodePair, opts options) error {
	for _, t := range []struct {
		key   string
		extra []string
	}{{"xnode_tcp1_gbps", nil}, {"xnode_tcp4_gbps", []string{"-P", "4"}}} {
		drops0, err := pair.drops(ctx)
		if err != nil {
			return err
		}
		sum, err := iperf(ctx, pair.client, pair.server, opts.duration, t.extra...)
		if err != nil {
			return fmt.Errorf("%s: %w", t.key, err)
		}
		drops1, err := pair.drops(ctx)
		if err != nil {
			return err
		}
		v.add(t.key, sum.BitsPerSecond/1e9)
		progress(w, "  %-17s %-15s %8.2f Gbit/s%s", v.name, t.key, sum.BitsPerSecond/1e9, dropDiff(drops0, drops1))
	}
	rtts, err := requestResponse(ctx, pair.client, pair.server, opts.rrs)
	if err != nil {
		return fmt.Errorf("xnode_rr_us: %w", err)
	}
	rr := percentile(rtts, 50)
	v.add("xnode_rr_us", micros(rr))
	progress(w, "  %-17s xnode UDP req/resp %6.1f µs p50, p99 %.1f µs (%d exchanges)", v.name, micros(rr), micros(percentile(rtts, 99)), len(rtts))
	return nil
}

// drops returns the drops by reason of the pair's daemons, added up; nil
// for the kernel pair.
func (p xnodePair) drops(ctx context.Context) (map[string]uint64, error) {
	if len(p.daemons) == 0 {
		return nil, nil
	}
	sum := make(map[string]uint64)
	for _, d := range p.daemons {
		m, err := d.drops(ctx)
		if err != nil {
			return nil, err
		}
		for reason, n := range m {
			sum[reason] += n
		}
	}
	return sum, nil
}
