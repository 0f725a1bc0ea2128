package test

import (
	"context"
	"encoding/json"
	"net/netip"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"

	"tapswitch/internal/testutil"
	"tapswitch/tap"
)

// tapswitch as the first plugin of a chain, followed by the reference
// meta plugins, which get its result as their prevResult.

// chainRig is a node with IPv4 forwarding on (in its namespace only), a
// client namespace joined to it by a veth pair (the world of the egress
// tests) and a runtime whose plugin path has the reference plugins.
type chainRig struct {
	*cniRig
	client *world
}

func newChainRig(t *testing.T) *chainRig {
	t.Helper()
	tools := cniTools(t, "portmap", "tuning", "bandwidth")
	d := startDaemon(t, "")
	// The node routes the client's DNAT'd connections on to the pods.
	ipNetnsOutput(t, d.node, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
	return &chainRig{cniRig: newCNIRig(t, d, tools), client: newWorld(t, d.node)}
}

// nodeRuleset is the node's netfilter ruleset, whichever backend portmap
// chose: nft lists iptables-nft's tables and nftables' alike.
func (r *chainRig) nodeRuleset(t *testing.T) string {
	t.Helper()
	return ipNetnsOutput(t, r.d.node, "nft", "list", "ruleset")
}

// tapswitchResult is the result tapswitch printed for the chain's last ADD.
func (r *chainRig) tapswitchResult(t *testing.T) *types100.Result {
	t.Helper()
	var res types100.Result
	if out := r.exec.last(t, "tapswitch", "ADD").stdout; json.Unmarshal(out, &res) != nil {
		t.Fatalf("tapswitch ADD printed %q", out)
	}
	return &res
}

// requirePassedThrough fails t unless the chain's result is tapswitch's
// own: the meta plugins took it as prevResult and passed it on whole.
func requirePassedThrough(t *testing.T, r *chainRig, res types.Result) {
	t.Helper()
	got, err := types100.NewResultFromResult(res)
	if err != nil {
		t.Fatal(err)
	}
	if want := r.tapswitchResult(t); !reflect.DeepEqual(got, want) {
		gb, _ := json.Marshal(got)
		wb, _ := json.Marshal(want)
		t.Errorf("the chain's result\n%s\ndiffers from tapswitch's\n%s", gb, wb)
	}
}

// mentions reports whether text names ip as a whole address (not as the
// start of a longer one: 10.244.0.2 in 10.244.0.254).
func mentions(text string, ip netip.Addr) bool {
	return regexp.MustCompile(regexp.QuoteMeta(ip.String()) + `([^0-9]|$)`).MatchString(text)
}

func TestCNIChainPortmapTuning(t *testing.T) {
	testutil.RequireRoot(t)
	// portmap picks iptables when it can run it (here the nft-based
	// iptables); nftables is its other backend.
	for _, backend := range []string{"default", "nftables"} {
		t.Run(backend, func(t *testing.T) { testChainPortmapTuning(t, backend) })
	}
}

func testChainPortmapTuning(t *testing.T, backend string) {
	r := newChainRig(t)
	portmap := map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true},
		// The pod's default route is the gateway, a netstack that knows
		// nothing of the node's conntrack: the pod's answer to a client
		// outside must go back through the node to be un-DNAT'd. Masking
		// every hostPort connection with the node's address on tsw0,
		// which is on-link for the pod, makes it so.
		"masqAll": true}
	if backend != "default" {
		portmap["backend"] = backend
	}
	l := confList(t, "tsw-chain", "1.1.0",
		tapswitchConf(r.d.socket),
		portmap,
		map[string]any{"type": "tuning", "sysctl": map[string]string{"net.ipv4.conf.eth0.arp_notify": "1"}},
	)
	ns := testutil.NewNetNS(t)
	peers := new(peerLog)
	serveTCPEcho(t, nsListen(t, ns, "tcp4", ":8080"), peers)
	rt := k8sRuntime(uniqueID("chain"), ns, "chained")
	rt.CapabilityArgs = map[string]any{"portMappings": []map[string]any{{"hostPort": 18090, "containerPort": 8080, "protocol": "tcp"}}}

	before := r.nodeRuleset(t)
	res := r.mustAdd(t, l, rt)
	requirePassedThrough(t, r, res)
	p := attachedPod(t, r.d, rt)
	if fws, err := r.d.client.Forwards(context.Background()); err != nil || len(fws) != 0 {
		t.Errorf("daemon forwards = %+v, %v; want none: portMappings are portmap's in this conflist", fws, err)
	}
	if got := strings.TrimSpace(ipNetnsOutput(t, ns, "sysctl", "-n", "net.ipv4.conf.eth0.arp_notify")); got != "1" {
		t.Errorf("arp_notify of the pod's eth0 = %q, want tuning's 1", got)
	}
	ruleset := r.nodeRuleset(t)
	if !mentions(ruleset, p.addr()) {
		t.Errorf("the node's ruleset does not DNAT to the pod's %s:\n%s", p.addr(), ruleset)
	}
	if err := r.check(t, l, rt); err != nil {
		t.Errorf("CHECK of the chain: %v", err)
	}

	// A client outside the node reaches the pod through the node's
	// address and the hostPort; the pod sees the node's tsw0 address.
	nodeHostPort := netip.AddrPortFrom(r.client.node4, 18090)
	echoStream(t, mustDial(t, nsDialer(r.client.ns), nodeHostPort), []byte("from a client outside the node"))
	host, err := tap.Inspect(r.d.node, "tsw0")
	if err != nil || len(host.Addrs) == 0 {
		t.Fatalf("the node's tsw0: %+v, %v", host, err)
	}
	if got := peers.addrs(); len(got) != 1 || got[0] != host.Addrs[0].Addr() {
		t.Errorf("the pod saw clients %v, want the node's tsw0 address %s (masqAll)", got, host.Addrs[0].Addr())
	}
	// A process on the node reaches it through its own addresses.
	echoStream(t, mustDial(t, r.d.nodeDial, nodeHostPort), []byte("from the node to its own address"))
	echoStream(t, mustDial(t, r.d.nodeDial, netip.MustParseAddrPort("127.0.0.1:18090")), []byte("from the node to its loopback"))

	r.mustDel(t, l, rt)
	requireGone(t, r.d, rt)
	after := r.nodeRuleset(t)
	if mentions(after, p.addr()) || strings.Contains(after, "CNI-DN-") || strings.Contains(after, "18090") {
		t.Errorf("the node's ruleset after DEL still has the pod's mapping:\n%s", after)
	}
	t.Logf("ruleset before ADD:\n%s\nafter DEL:\n%s", before, after)
	requireNoLeases(t, r.d)
}

func TestCNIChainBandwidth(t *testing.T) {
	testutil.RequireRoot(t)
	r := newChainRig(t)
	l := confList(t, "tsw-bw", "1.1.0",
		tapswitchConf(r.d.socket),
		map[string]any{"type": "bandwidth", "capabilities": map[string]bool{"bandwidth": true}},
	)

	// No limit: bandwidth passes the result through.
	rt := k8sRuntime(uniqueID("bw"), testutil.NewNetNS(t), "unlimited")
	res := r.mustAdd(t, l, rt)
	requirePassedThrough(t, r, res)
	// Its CHECK looks for the host side of a veth pair even with no
	// limit, and a TAP has none: a conflist with bandwidth cannot pass
	// CHECK (runtimes that CHECK need "disableCheck": true in it).
	if err := r.check(t, l, rt); err == nil || !strings.Contains(err.Error(), "veth") {
		t.Errorf("CHECK with bandwidth = %v, want its no-veth-peer error", err)
	} else {
		t.Logf("CHECK with bandwidth: %v", err)
	}
	r.mustDel(t, l, rt)
	requireGone(t, r.d, rt)

	// A limit needs the veth peer: the ADD fails after tapswitch's part
	// was made. libcni does not undo it; the runtime's DEL, as containerd
	// and CRI-O send after a failed ADD, does.
	limited := k8sRuntime(uniqueID("bw"), testutil.NewNetNS(t), "limited")
	limited.CapabilityArgs = map[string]any{"bandwidth": map[string]any{"ingressRate": 1000000, "ingressBurst": 100000}}
	_, err := r.add(t, l, limited)
	if err == nil || !strings.Contains(err.Error(), "veth") {
		t.Errorf("ADD with a bandwidth limit = %v, want bandwidth's no-veth-peer error", err)
	} else {
		t.Logf("ADD with a bandwidth limit: %v", err)
	}
	r.mustDel(t, l, limited)
	requireGone(t, r.d, limited)
	if out := ipNetnsOutput(t, r.d.node, "ip", "-o", "link", "show", "type", "ifb"); strings.TrimSpace(out) != "" {
		t.Errorf("ifb devices left in the node: %s", out)
	}
	requireNoLeases(t, r.d)
}
