package daemon

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"tapswitch/daemon/api"
	"tapswitch/internal/testutil"
	"tapswitch/ipam"
	"tapswitch/tap"
)

var testCIDR = netip.MustParsePrefix("10.252.9.0/28")

// newTestDaemon returns a daemon over stateDir that is not serving, and
// closes it when the test ends.
func newTestDaemon(t *testing.T, stateDir string) *Daemon {
	t.Helper()
	d, err := New(Options{
		// In-process daemons share the test's namespace, the
		// machine's: route mode would change its forwarding and
		// nftables. The end-to-end tests run route mode in
		// namespaces of their own.
		Egress:   EgressProxy,
		PodCIDR:  testCIDR,
		StateDir: stateDir,
		Socket:   filepath.Join(t.TempDir(), "sock"),
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// seed writes a state file as a daemon that crashed would have left it.
func seed(t *testing.T, stateDir string, pods ...savedPod) {
	t.Helper()
	s, err := openState(filepath.Join(stateDir, "pods.json"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	if err := s.save(pods); err != nil {
		t.Fatal(err)
	}
}

// seedLeases writes the address leases a crashed daemon would have left
// for pods, allocating in their order on the test CIDR, and checks they got
// the addresses the pods name.
func seedLeases(t *testing.T, stateDir string, pods ...api.Pod) {
	t.Helper()
	store, err := ipam.OpenBolt(filepath.Join(stateDir, "ipam.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	a, err := ipam.New(ipam.Config{V4: testCIDR}, store, nil)
	if err != nil {
		store.Close()
		t.Fatal(err)
	}
	defer a.Close()
	for _, p := range pods {
		l, err := a.Allocate(leaseKey(p))
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(l.IPs, p.IPs) {
			t.Fatalf("seeded lease of %s = %v, want %v", p.ID, l.IPs, p.IPs)
		}
	}
}

// leftoverTAP makes the persistent TAP a crashed daemon would leave.
func leftoverTAP(t *testing.T, pod api.Pod) {
	t.Helper()
	p, err := tap.Create(tap.Config{NetNS: pod.NetNS, Name: pod.IfName, MAC: pod.MAC, Addrs: pod.IPs})
	if err != nil {
		t.Fatal(err)
	}
	p.Close()
}

func testPod(id, ns, ip string) api.Pod {
	return api.Pod{ID: id, NetNS: ns, IfName: "eth0", MAC: podMAC(id, "eth0"), MTU: 1500, Port: id,
		IPs: []netip.Prefix{netip.MustParsePrefix(ip)}, Gateways: []netip.Addr{netip.MustParseAddr("10.252.9.1")}}
}

func TestRestoreFinishesInterruptedWork(t *testing.T) {
	testutil.RequireRoot(t)
	nsAdd, nsDel, nsOK, nsGone := testutil.NewNetNS(t), testutil.NewNetNS(t), testutil.NewNetNS(t), testutil.NewNetNS(t)
	adding := testPod("adding", nsAdd, "10.252.9.2/28")
	deleting := testPod("deleting", nsDel, "10.252.9.3/28")
	ready := testPod("ready", nsOK, "10.252.9.4/28")
	tapGone := testPod("tap-gone", nsGone, "10.252.9.5/28")
	nsMissing := testPod("ns-gone", "/var/run/netns/tsw-test-never-made", "10.252.9.2/28")
	nsMissing.IPs = nil // its address must not clash; it is forgotten anyway
	for _, p := range []api.Pod{adding, deleting, ready} {
		leftoverTAP(t, p)
	}
	state := t.TempDir()
	seedLeases(t, state, adding, deleting, ready, tapGone)
	// A lease whose pod never reached the state file: the daemon crashed
	// between the two writes.
	orphan := testPod("orphan", nsOK, "10.252.9.6/28")
	seedLeases(t, state, orphan)
	seed(t, state,
		savedPod{Pod: adding, State: podAdding},
		savedPod{Pod: deleting, State: podDeleting},
		savedPod{Pod: ready},
		savedPod{Pod: tapGone},
		savedPod{Pod: nsMissing},
	)

	d := newTestDaemon(t, state)
	pods := d.Pods()
	if len(pods) != 1 || pods[0].ID != "ready" || pods[0].PortID == 0 {
		t.Fatalf("Pods() after restore = %+v, want only pod ready, attached", pods)
	}
	for _, p := range []api.Pod{adding, deleting} {
		if ok, err := tap.Exists(p.NetNS, p.IfName); ok || err != nil {
			t.Errorf("TAP of interrupted %s: exists=%v err=%v, want removed", p.ID, ok, err)
		}
	}
	if ok, _ := tap.Exists(ready.NetNS, "eth0"); !ok {
		t.Errorf("TAP of the ready pod is gone")
	}
	// Only the ready pod keeps a lease: the forgotten pods' and the
	// orphan's are released.
	if leases := d.Leases(); len(leases) != 1 || leases[0].Key != leaseKey(ready) || !slices.Equal(leases[0].IPs, ready.IPs) {
		t.Errorf("leases after restore = %+v, want only the ready pod's %v", leases, ready.IPs)
	}
	// What is on disk now is only the ready pod.
	saved, err := d.state.load()
	if err != nil || len(saved) != 1 || saved[0].ID != "ready" || saved[0].State != podReady {
		t.Errorf("state after restore = %+v, %v; want only pod ready", saved, err)
	}
}

func TestFailedAttachLeavesNothing(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNetNS(t)
	d := newTestDaemon(t, t.TempDir())
	// A closed switch refuses the port after the TAP was made: the add
	// must remove the TAP, release the address and forget the pod.
	d.sw.Close()
	_, err := d.AddPod(api.PodRequest{ID: "late", NetNS: ns})
	if err == nil {
		t.Fatal("AddPod with a closed switch succeeded")
	}
	if ok, err := tap.Exists(ns, "eth0"); ok || err != nil {
		t.Errorf("after a failed attach eth0 exists=%v err=%v, want removed", ok, err)
	}
	if v4, _ := d.ipam.InUse(); len(d.Pods()) != 0 || v4 != 0 {
		t.Errorf("after a failed attach: pods %v, %d addresses in use, want none", d.Pods(), v4)
	}
	if saved, _ := d.state.load(); len(saved) != 0 {
		t.Errorf("state after a failed attach = %+v, want empty", saved)
	}
}

// TestRestoreAdoptsPodWithoutLease checks a restart over a store that has
// lost pods' leases (a first start with a store, a store moved away): a
// saved pod keeps its addresses, adopted into the store, and stays
// attached, unless another pod's lease holds them; then it is removed,
// its TAP too, rather than run with an address the store gave away. A
// lease whose attachment is not saved at all is released first.
func TestRestoreAdoptsPodWithoutLease(t *testing.T) {
	testutil.RequireRoot(t)
	nsKept, nsHolder, nsClash := testutil.NewNetNS(t), testutil.NewNetNS(t), testutil.NewNetNS(t)
	kept := testPod("kept", nsKept, "10.252.9.7/28")
	holder := testPod("holder", nsHolder, "10.252.9.2/28")
	clash := testPod("clash", nsClash, "10.252.9.2/28")
	orphan := testPod("orphan", nsKept, "10.252.9.3/28")
	for _, p := range []api.Pod{kept, holder, clash} {
		leftoverTAP(t, p)
	}
	state := t.TempDir()
	seedLeases(t, state, holder, orphan)
	seed(t, state, savedPod{Pod: clash}, savedPod{Pod: holder}, savedPod{Pod: kept})

	d := newTestDaemon(t, state)
	pods := d.Pods()
	if len(pods) != 2 || pods[0].ID != "holder" || pods[1].ID != "kept" || pods[0].PortID == 0 || pods[1].PortID == 0 {
		t.Errorf("Pods() = %+v, want holder and kept, attached", pods)
	}
	l, ok := d.ipam.Get(leaseKey(kept))
	if !ok || !slices.Equal(l.IPs, kept.IPs) {
		t.Errorf("lease of kept = %+v, %v; want its saved %v adopted", l, ok, kept.IPs)
	}
	if ok, err := tap.Exists(nsClash, "eth0"); ok || err != nil {
		t.Errorf("TAP of the pod whose address is leased to another: exists=%v err=%v, want removed", ok, err)
	}
	if _, ok := d.ipam.Get(leaseKey(orphan)); ok {
		t.Errorf("the orphan's lease survived the restart")
	}
}

// TestAddPodFreesOrphanLeases checks that leases whose pods are gone — a
// release that could not be written — do not exhaust the CIDR until the
// next start: an add that finds no free address releases them first.
func TestAddPodFreesOrphanLeases(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNetNS(t)
	d := newTestDaemon(t, t.TempDir())
	for i := 0; ; i++ {
		_, err := d.ipam.Allocate(ipam.Key{ContainerID: fmt.Sprintf("ghost-%d", i), IfName: "eth0"})
		if errors.Is(err, ipam.ErrExhausted) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	pod, err := d.AddPod(api.PodRequest{ID: "after-ghosts", NetNS: ns})
	if err != nil {
		t.Fatalf("AddPod with only orphan leases in the way: %v", err)
	}
	if leases := d.Leases(); len(leases) != 1 || leases[0].Key != leaseKey(pod) {
		t.Errorf("leases = %+v, want only the new pod's", leases)
	}
}
