package overlay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"tapswitch/internal/testutil"
)

// epoch is when the test cluster's first node was created; kubeNode
// creates each node a minute after the one before it in a test.
var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// kubeNode returns a Node object as flanneld annotates it, created at
// epoch plus age minutes.
func kubeNode(name string, age int, addr, mac string, cidrs ...string) *corev1.Node {
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:              name,
			CreationTimestamp: metav1.NewTime(epoch.Add(time.Duration(age) * time.Minute)),
			Annotations: map[string]string{
				AnnotationBackendType:          "vxlan",
				AnnotationBackendData:          fmt.Sprintf(`{"VNI":1,"VtepMAC":%q}`, mac),
				AnnotationPublicIP:             addr,
				AnnotationKubeSubnetManager:    "true",
				"node.alpha.kubernetes.io/ttl": "0",
			},
		},
		Spec: corev1.NodeSpec{PodCIDR: cidrs[0], PodCIDRs: cidrs},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: "10.0.0.99"},
			{Type: corev1.NodeHostName, Address: name},
		}},
	}
}

// The nodes of the Kubernetes tests: node-a is this node (testSelf), as
// its kubelet registers it, without annotations.
func selfKubeNode() *corev1.Node {
	n := kubeNode("node-a", 0, "192.168.1.10", "0e:00:00:00:00:0a", "10.244.0.0/24", "fd00:10:244::/64")
	n.Annotations = map[string]string{"node.alpha.kubernetes.io/ttl": "0"}
	return n
}

func kubeNodeB() *corev1.Node {
	return kubeNode("node-b", 1, "192.168.1.11", "0e:00:00:00:00:0b", "10.244.1.0/24", "fd00:10:244:1::/64")
}

func kubeNodeC() *corev1.Node {
	return kubeNode("node-c", 2, "192.168.1.12", "0e:00:00:00:00:0c", "10.244.2.0/24")
}

// peerOf is what NodeFromKube should make of n.
func peerOf(t *testing.T, n *corev1.Node) Node {
	t.Helper()
	var cidrs []netip.Prefix
	for _, c := range n.Spec.PodCIDRs {
		cidrs = append(cidrs, netip.MustParsePrefix(c))
	}
	var data backendData
	if err := json.Unmarshal([]byte(n.Annotations[AnnotationBackendData]), &data); err != nil {
		t.Fatal(err)
	}
	return Node{
		Name:     n.Name,
		Address:  netip.MustParseAddr(n.Annotations[AnnotationPublicIP]),
		VTEPMAC:  mustMAC(data.VtepMAC),
		PodCIDRs: cidrs,
	}
}

func TestKubeNodeFromKube(t *testing.T) {
	complete := kubeNodeB()
	edit := func(f func(n *corev1.Node)) *corev1.Node {
		n := kubeNodeB()
		f(n)
		return n
	}
	v6 := edit(func(n *corev1.Node) {
		n.Annotations[AnnotationBackendV6Data] = `{"VNI":1,"VtepMAC":"0e:00:00:00:06:0b"}`
		n.Annotations[AnnotationPublicIPv6] = "fd00::11"
	})
	tests := []struct {
		name    string
		node    *corev1.Node
		ipv6    bool
		want    Node   // when wantErr is ""
		wantErr string // held by the error
	}{
		{"complete", complete, false, peerOf(t, complete), ""},
		{"podCIDR only", edit(func(n *corev1.Node) { n.Spec.PodCIDRs = nil }), false,
			Node{Name: "node-b", Address: netip.MustParseAddr("192.168.1.11"), VTEPMAC: mustMAC("0e:00:00:00:00:0b"),
				PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}}, ""},
		{"InternalIP without public-ip", edit(func(n *corev1.Node) { delete(n.Annotations, AnnotationPublicIP) }), false,
			Node{Name: "node-b", Address: netip.MustParseAddr("10.0.0.99"), VTEPMAC: mustMAC("0e:00:00:00:00:0b"),
				PodCIDRs: peerOf(t, complete).PodCIDRs}, ""},
		{"VNI absent (old flannel)", edit(func(n *corev1.Node) {
			n.Annotations[AnnotationBackendData] = `{"VtepMAC":"0e:00:00:00:00:0b"}`
		}), false, peerOf(t, complete), ""},
		{"IPv6 underlay", v6, true,
			Node{Name: "node-b", Address: netip.MustParseAddr("fd00::11"), VTEPMAC: mustMAC("0e:00:00:00:06:0b"),
				PodCIDRs: peerOf(t, complete).PodCIDRs}, ""},

		{"no backend-type", edit(func(n *corev1.Node) { delete(n.Annotations, AnnotationBackendType) }), false, Node{},
			`node "node-b": annotation flannel.alpha.coreos.com/backend-type missing`},
		{"host-gw", edit(func(n *corev1.Node) { n.Annotations[AnnotationBackendType] = "host-gw" }), false, Node{},
			`annotation flannel.alpha.coreos.com/backend-type is "host-gw"; want "vxlan"`},
		{"no kube-subnet-manager", edit(func(n *corev1.Node) { delete(n.Annotations, AnnotationKubeSubnetManager) }), false, Node{},
			"annotation flannel.alpha.coreos.com/kube-subnet-manager missing"},
		{"no backend-data", edit(func(n *corev1.Node) { delete(n.Annotations, AnnotationBackendData) }), false, Node{},
			"annotation flannel.alpha.coreos.com/backend-data missing"},
		{"backend-data not JSON", edit(func(n *corev1.Node) { n.Annotations[AnnotationBackendData] = "0e:00:00:00:00:0b" }), false, Node{},
			"annotation flannel.alpha.coreos.com/backend-data \"0e:00:00:00:00:0b\": invalid character"},
		{"no VtepMAC", edit(func(n *corev1.Node) { n.Annotations[AnnotationBackendData] = `{"VNI":1}` }), false, Node{},
			"no VtepMAC"},
		{"bad VtepMAC", edit(func(n *corev1.Node) { n.Annotations[AnnotationBackendData] = `{"VNI":1,"VtepMAC":"0e:00"}` }), false, Node{},
			`VtepMAC "0e:00": not a MAC address`},
		{"other VNI", edit(func(n *corev1.Node) {
			n.Annotations[AnnotationBackendData] = `{"VNI":2,"VtepMAC":"0e:00:00:00:00:0b"}`
		}), false, Node{}, "VNI 2; want 1"},
		{"multicast VtepMAC", edit(func(n *corev1.Node) {
			n.Annotations[AnnotationBackendData] = `{"VNI":1,"VtepMAC":"01:00:5e:00:00:01"}`
		}), false, Node{}, "vtep_mac 01:00:5e:00:00:01: multicast"},
		{"bad public-ip", edit(func(n *corev1.Node) { n.Annotations[AnnotationPublicIP] = "node-b" }), false, Node{},
			"annotation flannel.alpha.coreos.com/public-ip: ParseAddr"},
		{"IPv6 public-ip", edit(func(n *corev1.Node) { n.Annotations[AnnotationPublicIP] = "fd00::11" }), false, Node{},
			"annotation flannel.alpha.coreos.com/public-ip fd00::11: not IPv4"},
		{"no address at all", edit(func(n *corev1.Node) {
			delete(n.Annotations, AnnotationPublicIP)
			n.Status.Addresses = n.Status.Addresses[1:]
		}), false, Node{}, "annotation flannel.alpha.coreos.com/public-ip missing, and no IPv4 InternalIP"},
		{"no pod CIDR yet", edit(func(n *corev1.Node) { n.Spec.PodCIDR, n.Spec.PodCIDRs = "", nil }), false, Node{},
			"spec.podCIDRs: none assigned yet"},
		{"bad pod CIDR", edit(func(n *corev1.Node) { n.Spec.PodCIDRs = []string{"10.244.1.0/24", "fd00::1"} }), false, Node{},
			"spec.podCIDRs[1]: netip.ParsePrefix"},
		{"IPv6 underlay without v6 data", complete, true, Node{},
			"annotation flannel.alpha.coreos.com/backend-v6-data missing"},
		{"IPv6 underlay without public-ipv6", edit(func(n *corev1.Node) {
			n.Annotations[AnnotationBackendV6Data] = `{"VNI":1,"VtepMAC":"0e:00:00:00:06:0b"}`
		}), true, Node{}, "annotation flannel.alpha.coreos.com/public-ipv6 missing, and no IPv6 InternalIP"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := NodeFromKube(tt.node, 0, tt.ipv6)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("NodeFromKube() = %+v, %v; want an error holding %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("NodeFromKube() = %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

func TestKubeNodeAnnotations(t *testing.T) {
	got := NodeAnnotations(testSelf, 0)
	want := map[string]string{
		"flannel.alpha.coreos.com/backend-type":        "vxlan",
		"flannel.alpha.coreos.com/backend-data":        `{"VNI":1,"VtepMAC":"0e:00:00:00:00:0a"}`,
		"flannel.alpha.coreos.com/public-ip":           "192.168.1.10",
		"flannel.alpha.coreos.com/kube-subnet-manager": "true",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("NodeAnnotations(IPv4 node) = %v, want %v", got, want)
	}
	self6 := testSelf
	self6.Address = netip.MustParseAddr("fd00::10")
	got = NodeAnnotations(self6, 4096)
	want = map[string]string{
		"flannel.alpha.coreos.com/backend-type":        "vxlan",
		"flannel.alpha.coreos.com/backend-v6-data":     `{"VNI":4096,"VtepMAC":"0e:00:00:00:00:0a"}`,
		"flannel.alpha.coreos.com/public-ipv6":         "fd00::10",
		"flannel.alpha.coreos.com/kube-subnet-manager": "true",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("NodeAnnotations(IPv6 node) = %v, want %v", got, want)
	}
	// What we write, we read back.
	n := selfKubeNode()
	n.Annotations = NodeAnnotations(self6, 4096)
	if p, err := NodeFromKube(n, 4096, true); err != nil || p.VTEPMAC != self6.VTEPMAC || p.Address != self6.Address {
		t.Errorf("NodeFromKube(our own annotations) = %+v, %v; want our VTEP MAC and address", p, err)
	}
}

// kubeRig runs a Kube against a fake clientset and turns its calls and log
// lines into channels the test waits on.
type kubeRig struct {
	t       *testing.T
	client  *fake.Clientset
	k       *Kube
	applied chan []Node
	logs    chan logRecord
}

// logRecord is a log line: its message and attributes as text.
type logRecord struct {
	level slog.Level
	msg   string
	attrs map[string]string
}

func (r logRecord) String() string { return fmt.Sprintf("%s %q %v", r.level, r.msg, r.attrs) }

// recordHandler is a slog.Handler that sends each record to a channel,
// failing the test when the channel is full.
type recordHandler struct {
	t    *testing.T
	recs chan<- logRecord
}

func (h recordHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h recordHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h recordHandler) WithGroup(string) slog.Handler            { return h }
func (h recordHandler) Handle(_ context.Context, r slog.Record) error {
	rec := logRecord{level: r.Level, msg: r.Message, attrs: map[string]string{}}
	r.Attrs(func(a slog.Attr) bool {
		rec.attrs[a.Key] = a.Value.String()
		return true
	})
	select {
	case h.recs <- rec:
	default:
		h.t.Errorf("log line %v dropped: the test does not read them", rec)
	}
	return nil
}

// startKube starts a Kube for node-a over a fake clientset holding nodes;
// the test's cleanup closes it and checks that no goroutine is left.
func startKube(t *testing.T, client *fake.Clientset, opts KubeOptions) *kubeRig {
	t.Helper()
	testutil.CheckGoroutines(t) // registered first, so it runs after Close
	r := &kubeRig{
		t:       t,
		client:  client,
		applied: make(chan []Node, 64),
		logs:    make(chan logRecord, 256),
	}
	opts.Client = client
	opts.NodeName = "node-a"
	if !opts.Self.Address.IsValid() {
		opts.Self = testSelf
	}
	opts.Apply = func(nodes []Node) {
		select {
		case r.applied <- nodes:
		default:
			t.Error("Apply called more often than the test reads")
		}
	}
	opts.Logger = slog.New(recordHandler{t, r.logs})
	// The fake's watch replays objects added and changed since its list,
	// but not deletions, so the tests change nodes only once the informer
	// watches. (The fake runs a watch's reactors under the lock its other
	// calls take, so a change made after this reactor ran is seen.)
	watching := make(chan struct{})
	var once sync.Once
	client.PrependWatchReactor("nodes", func(k8stesting.Action) (bool, watch.Interface, error) {
		once.Do(func() { close(watching) })
		return false, nil, nil // on to the tracker
	})
	k, err := NewKube(opts)
	if err != nil {
		t.Fatalf("NewKube: %v", err)
	}
	r.k = k
	t.Cleanup(func() { k.Close() })
	select {
	case <-watching:
	case <-time.After(10 * time.Second):
		t.Fatal("the informer did not watch Nodes within 10 s")
	}
	return r
}

// wantPeers waits until Apply gets exactly want (in any order), skipping
// sets on the way there, as a debounced burst may or may not split.
func (r *kubeRig) wantPeers(want ...Node) {
	r.t.Helper()
	byName := func(a, b Node) int { return strings.Compare(a.Name, b.Name) }
	want = slices.Clone(want)
	slices.SortFunc(want, byName)
	timeout := time.After(10 * time.Second)
	var last []Node
	for {
		select {
		case got := <-r.applied:
			slices.SortFunc(got, byName)
			if len(got) == len(want) && (len(got) == 0 || reflect.DeepEqual(got, want)) {
				return
			}
			last = got
		case <-timeout:
			r.t.Fatalf("no Apply(%+v) within 10 s; last Apply(%+v)", want, last)
		}
	}
}

// wantLog waits for a log line with the message msg whose attributes
// include attrs (a value "~s" holds s), skipping others, and returns it.
func (r *kubeRig) wantLog(msg string, attrs map[string]string) logRecord {
	r.t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case got := <-r.logs:
			if got.msg == msg && matchAttrs(got.attrs, attrs) {
				return got
			}
		case <-timeout:
			r.t.Fatalf("no log line %q %v within 10 s", msg, attrs)
		}
	}
}

// wantSkips waits for a "node skipped" line for each node in want with
// exactly its error, in any order.
func (r *kubeRig) wantSkips(want map[string]string) {
	r.t.Helper()
	timeout := time.After(10 * time.Second)
	got := map[string]string{}
	for !reflect.DeepEqual(got, want) {
		select {
		case rec := <-r.logs:
			if rec.msg == skipped {
				got[rec.attrs["node"]] = rec.attrs["err"]
			}
		case <-timeout:
			r.t.Fatalf("skipped nodes within 10 s: %q, want %q", got, want)
		}
	}
}

// noLog checks that no line logged since the test last looked has the
// message msg and attrs.
func (r *kubeRig) noLog(msg string, attrs map[string]string) {
	r.t.Helper()
	for {
		select {
		case got := <-r.logs:
			if got.msg == msg && matchAttrs(got.attrs, attrs) {
				r.t.Errorf("log line %v, want none", got)
			}
		default:
			return
		}
	}
}

func matchAttrs(got, want map[string]string) bool {
	for k, v := range want {
		if s, ok := strings.CutPrefix(v, "~"); ok {
			if !strings.Contains(got[k], s) {
				return false
			}
		} else if got[k] != v {
			return false
		}
	}
	return true
}

// waitAnnotations waits until the fake's Node name carries want.
func (r *kubeRig) waitAnnotations(name string, want map[string]string) *corev1.Node {
	r.t.Helper()
	var n *corev1.Node
	testutil.WaitFor(r.t, "annotations of "+name, func() bool {
		var err error
		n, err = r.client.CoreV1().Nodes().Get(context.Background(), name, metav1.GetOptions{})
		return err == nil && hasAnnotations(n, want)
	})
	return n
}

func (r *kubeRig) create(n *corev1.Node) {
	r.t.Helper()
	if _, err := r.client.CoreV1().Nodes().Create(context.Background(), n, metav1.CreateOptions{}); err != nil {
		r.t.Fatalf("create node %s: %v", n.Name, err)
	}
}

func (r *kubeRig) update(n *corev1.Node) {
	r.t.Helper()
	if _, err := r.client.CoreV1().Nodes().Update(context.Background(), n, metav1.UpdateOptions{}); err != nil {
		r.t.Fatalf("update node %s: %v", n.Name, err)
	}
}

func (r *kubeRig) delete(name string) {
	r.t.Helper()
	if err := r.client.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
		r.t.Fatalf("delete node %s: %v", name, err)
	}
}

const skipped = "node skipped"

func TestKubeMembership(t *testing.T) {
	incomplete := kubeNodeC()
	delete(incomplete.Annotations, AnnotationBackendData)
	r := startKube(t, fake.NewClientset(selfKubeNode(), kubeNodeB(), incomplete), KubeOptions{Quiet: 10 * time.Millisecond})

	// Added: node-b is in, node-c skipped saying which annotation, node-a
	// (this node) left out.
	r.wantPeers(peerOf(t, kubeNodeB()))
	r.wantLog(skipped, map[string]string{"node": "node-c", "err": "~annotation flannel.alpha.coreos.com/backend-data missing"})

	// This node's annotations published, exactly as flanneld writes them,
	// and its other annotations kept.
	self := r.waitAnnotations("node-a", NodeAnnotations(testSelf, 1))
	if got, want := self.Annotations[AnnotationBackendData], `{"VNI":1,"VtepMAC":"0e:00:00:00:00:0a"}`; got != want {
		t.Errorf("node-a's %s = %s, want %s", AnnotationBackendData, got, want)
	}
	for key, want := range map[string]string{
		AnnotationBackendType: "vxlan", AnnotationPublicIP: "192.168.1.10", AnnotationKubeSubnetManager: "true",
		"node.alpha.kubernetes.io/ttl": "0",
	} {
		if got := self.Annotations[key]; got != want {
			t.Errorf("node-a's %s = %q, want %q", key, got, want)
		}
	}

	// Updated: a new VTEP MAC changes the set.
	b := kubeNodeB()
	b.Annotations[AnnotationBackendData] = `{"VNI":1,"VtepMAC":"0e:00:00:00:01:0b"}`
	r.update(b)
	r.wantPeers(peerOf(t, b))

	// A change elsewhere recomputes the set; node-c, skipped for the same
	// reason, is not logged again.
	d := kubeNode("node-d", 3, "192.168.1.13", "0e:00:00:00:00:0d", "10.244.3.0/24")
	r.create(d)
	r.wantPeers(peerOf(t, b), peerOf(t, d))
	r.noLog(skipped, map[string]string{"node": "node-c"})

	// A new reason is logged.
	incomplete.Annotations[AnnotationBackendData] = `{"VNI":1,"VtepMAC":"0e:00:00:00:00:0c"}`
	incomplete.Annotations[AnnotationBackendType] = "host-gw"
	r.update(incomplete)
	r.wantLog(skipped, map[string]string{"node": "node-c", "err": `~backend-type is "host-gw"; want "vxlan"`})

	// Completed: node-c joins.
	r.update(kubeNodeC())
	r.wantPeers(peerOf(t, b), peerOf(t, kubeNodeC()), peerOf(t, d))
	r.wantLog("node no longer skipped", map[string]string{"node": "node-c"})

	// Deleted: gone.
	r.delete("node-b")
	r.wantPeers(peerOf(t, kubeNodeC()), peerOf(t, d))
	r.delete("node-c")
	r.delete("node-d")
	r.wantPeers()
}

func TestKubeClashes(t *testing.T) {
	ours := kubeNode("node-x", 2, "192.168.1.20", "0e:00:00:00:00:20", "10.244.0.128/25")   // inside node-a's 10.244.0.0/24
	sameMAC := kubeNode("node-y", 3, "192.168.1.21", "0e:00:00:00:00:0b", "10.244.9.0/24")  // node-b's VTEP MAC
	sameAddr := kubeNode("node-z", 4, "192.168.1.10", "0e:00:00:00:00:22", "10.244.8.0/24") // node-a's address
	late := kubeNode("node-l", 5, "192.168.1.23", "0e:00:00:00:00:23", "10.244.1.0/24")     // node-b's pod CIDR
	hostGW := kubeNode("node-h", 6, "192.168.1.24", "0e:00:00:00:00:24", "10.244.5.0/24")
	hostGW.Annotations[AnnotationBackendType] = "host-gw"
	r := startKube(t, fake.NewClientset(selfKubeNode(), kubeNodeB(), ours, sameMAC, sameAddr, late, hostGW), KubeOptions{})

	r.wantPeers(peerOf(t, kubeNodeB()))
	want := map[string]string{
		"node-x": `overlay: node "node-x": pod_cidrs[0] 10.244.0.128/25: overlaps 10.244.0.0/24 of this node`,
		"node-y": `overlay: node "node-y": vtep_mac 0e:00:00:00:00:0b: also the VTEP MAC of node "node-b"`,
		"node-z": `overlay: node "node-z": address 192.168.1.10: also the address of this node`,
		"node-l": `overlay: node "node-l": pod_cidrs[0] 10.244.1.0/24: overlaps 10.244.1.0/24 of node "node-b"`,
		"node-h": `overlay: node "node-h": annotation flannel.alpha.coreos.com/backend-type is "host-gw"; want "vxlan"`,
	}
	r.wantSkips(want)

	// The older node keeps its place when a newer one clashes with it;
	// once it is gone, the newer one takes it.
	r.delete("node-b")
	r.wantPeers(peerOf(t, sameMAC), peerOf(t, late))
}

func TestKubePublishRetries(t *testing.T) {
	client := fake.NewClientset(selfKubeNode())
	var mu sync.Mutex
	failures := 2
	client.PrependReactor("patch", "nodes", func(a k8stesting.Action) (bool, runtime.Object, error) {
		mu.Lock()
		defer mu.Unlock()
		if failures == 0 {
			return false, nil, nil // on to the tracker
		}
		failures--
		return true, nil, errors.New("etcdserver: request timed out")
	})
	r := startKube(t, client, KubeOptions{})
	r.wantPeers()
	for range 2 {
		r.wantLog("publishing this node's annotations failed; retrying", map[string]string{"err": "~request timed out"})
	}
	r.wantLog("published this node's annotations", nil)
	r.waitAnnotations("node-a", NodeAnnotations(testSelf, 1))

	// Someone changes them: published again.
	n, err := client.CoreV1().Nodes().Get(context.Background(), "node-a", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n.Annotations[AnnotationBackendData] = `{"VNI":1,"VtepMAC":"0e:00:00:00:99:99"}`
	r.update(n)
	r.wantLog("this node's annotations were changed soon after publishing; published them again (is flanneld running here too?)", nil)
	r.waitAnnotations("node-a", NodeAnnotations(testSelf, 1))

	// Patches: two failed, two succeeded, and none more.
	var patches int
	for _, a := range client.Actions() {
		if a.GetVerb() == "patch" {
			patches++
			if pt := a.(k8stesting.PatchAction).GetPatchType(); pt != types.MergePatchType {
				t.Errorf("patch type %s, want %s", pt, types.MergePatchType)
			}
		}
	}
	if patches != 4 {
		t.Errorf("%d patches, want 4 (2 failed, 2 succeeded)", patches)
	}
}

func TestKubeOwnNodeLater(t *testing.T) {
	r := startKube(t, fake.NewClientset(kubeNodeB()), KubeOptions{})
	r.wantPeers(peerOf(t, kubeNodeB()))
	r.wantLog("this node's Node object not found; publishing its annotations once it is there", nil)
	r.create(selfKubeNode())
	r.waitAnnotations("node-a", NodeAnnotations(testSelf, 1))
}

func TestKubeIPv6Underlay(t *testing.T) {
	self := testSelf
	self.Address = netip.MustParseAddr("fd00::10")
	b := kubeNodeB()
	b.Annotations[AnnotationBackendV6Data] = `{"VNI":1,"VtepMAC":"0e:00:00:00:06:0b"}`
	b.Annotations[AnnotationPublicIPv6] = "fd00::11"
	r := startKube(t, fake.NewClientset(selfKubeNode(), b, kubeNodeC()), KubeOptions{Self: self})
	want := peerOf(t, b)
	want.Address, want.VTEPMAC = netip.MustParseAddr("fd00::11"), mustMAC("0e:00:00:00:06:0b")
	r.wantPeers(want)
	r.wantLog(skipped, map[string]string{"node": "node-c", "err": "~backend-v6-data missing"})
	n := r.waitAnnotations("node-a", NodeAnnotations(self, 1))
	if _, ok := n.Annotations[AnnotationBackendData]; ok {
		t.Errorf("node-a has %s over an IPv6 underlay", AnnotationBackendData)
	}
}

func TestKubeOptionsChecked(t *testing.T) {
	client := fake.NewClientset()
	apply := func([]Node) {}
	bad := testSelf
	bad.VTEPMAC = mustMAC("01:00:5e:00:00:01")
	for _, tt := range []struct {
		name string
		opts KubeOptions
		want string
	}{
		{"no client", KubeOptions{NodeName: "node-a", Self: testSelf, Apply: apply}, "Client, NodeName and Apply are required"},
		{"other name", KubeOptions{Client: client, NodeName: "node-b", Self: testSelf, Apply: apply}, `Self.Name "node-a" is not NodeName "node-b"`},
		{"bad self", KubeOptions{Client: client, NodeName: "node-a", Self: bad, Apply: apply}, "this node: vtep_mac 01:00:5e:00:00:01: multicast"},
		{"big VNI", KubeOptions{Client: client, NodeName: "node-a", Self: testSelf, Apply: apply, VNI: 1 << 24}, "vni 16777216"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			k, err := NewKube(tt.opts)
			if err == nil {
				k.Close()
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("NewKube() error = %v, want one holding %q", err, tt.want)
			}
		})
	}
}

func TestKubeClientFromKubeconfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kubeconfig")
	const kubeconfig = `apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`
	if err := os.WriteFile(path, []byte(kubeconfig), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ClientFromKubeconfig(path); err != nil {
		t.Errorf("ClientFromKubeconfig(%s) error = %v", path, err)
	}
	missing := filepath.Join(t.TempDir(), "none")
	if _, err := ClientFromKubeconfig(missing); err == nil || !strings.Contains(err.Error(), "kubeconfig "+missing) {
		t.Errorf("ClientFromKubeconfig(missing file) error = %v, want one naming the file", err)
	}
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	if _, err := ClientFromKubeconfig(""); err == nil || !strings.Contains(err.Error(), "in-cluster") {
		t.Errorf("ClientFromKubeconfig(\"\") outside a pod: error = %v, want one about in-cluster config", err)
	}
}
