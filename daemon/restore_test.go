package daemon

import (
	"net/netip"
	"path/filepath"
	"slices"
	"testing"

	"tapswitch/internal/testutil"
	"tapswitch/tap"
)

// newTestDaemon returns a daemon over stateDir that is not serving, and
// closes it when the test ends.
func newTestDaemon(t *testing.T, stateDir string) *Daemon {
	t.Helper()
	d, err := New(Options{
		PodCIDR:  netip.MustParsePrefix("10.252.9.0/29"),
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

// leftoverTAP makes the persistent TAP a crashed daemon would leave.
func leftoverTAP(t *testing.T, pod Pod) {
	t.Helper()
	p, err := tap.Create(tap.Config{NetNS: pod.NetNS, Name: pod.IfName, MAC: pod.MAC, Addrs: pod.IPs})
	if err != nil {
		t.Fatal(err)
	}
	p.Close()
}

func testPod(id, ns, ip string) Pod {
	return Pod{ID: id, NetNS: ns, IfName: "eth0", MAC: podMAC(id, "eth0"), MTU: 1500, Port: id,
		IPs: []netip.Prefix{netip.MustParsePrefix(ip)}, Gateways: []netip.Addr{netip.MustParseAddr("10.252.9.1")}}
}

func TestRestoreFinishesInterruptedWork(t *testing.T) {
	testutil.RequireRoot(t)
	nsAdd, nsDel, nsOK, nsGone := testutil.NewNetNS(t), testutil.NewNetNS(t), testutil.NewNetNS(t), testutil.NewNetNS(t)
	adding := testPod("adding", nsAdd, "10.252.9.2/29")
	deleting := testPod("deleting", nsDel, "10.252.9.3/29")
	ready := testPod("ready", nsOK, "10.252.9.4/29")
	tapGone := testPod("tap-gone", nsGone, "10.252.9.5/29")
	nsMissing := testPod("ns-gone", "/var/run/netns/tsw-test-never-made", "10.252.9.2/29")
	nsMissing.IPs = nil // its address must not clash; it is forgotten anyway
	for _, p := range []Pod{adding, deleting, ready} {
		leftoverTAP(t, p)
	}
	state := t.TempDir()
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
	for _, p := range []Pod{adding, deleting} {
		if ok, err := tap.Exists(p.NetNS, p.IfName); ok || err != nil {
			t.Errorf("TAP of interrupted %s: exists=%v err=%v, want removed", p.ID, ok, err)
		}
	}
	if ok, _ := tap.Exists(ready.NetNS, "eth0"); !ok {
		t.Errorf("TAP of the ready pod is gone")
	}
	// The forgotten pods' addresses are free again: the range hands out
	// exactly .2, .3 and .5, the ready pod keeping .4.
	var got []string
	for range 3 {
		a, err := d.v4.allocate("probe")
		if err != nil {
			t.Fatalf("allocate after restore: %v", err)
		}
		got = append(got, a.Addr().String())
	}
	slices.Sort(got)
	if want := "[10.252.9.2 10.252.9.3 10.252.9.5]"; fmtList(got) != want {
		t.Errorf("free addresses after restore = %v, want %s", got, want)
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
	_, err := d.AddPod(PodRequest{ID: "late", NetNS: ns})
	if err == nil {
		t.Fatal("AddPod with a closed switch succeeded")
	}
	if ok, err := tap.Exists(ns, "eth0"); ok || err != nil {
		t.Errorf("after a failed attach eth0 exists=%v err=%v, want removed", ok, err)
	}
	if len(d.Pods()) != 0 || len(d.v4.used) != 0 {
		t.Errorf("after a failed attach: pods %v, addresses in use %v, want none", d.Pods(), d.v4.used)
	}
	if saved, _ := d.state.load(); len(saved) != 0 {
		t.Errorf("state after a failed attach = %+v, want empty", saved)
	}
}
