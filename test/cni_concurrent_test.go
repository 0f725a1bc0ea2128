package test

import (
	"fmt"
	"net/netip"
	"sync"
	"testing"

	"github.com/containernetworking/cni/libcni"

	"tapswitch/internal/testutil"
)

// TestCNIConcurrentAddDelAndRestart starts pods the way kubelet starts a
// deployment: many ADDs at once. Every pod gets its own address and MAC
// and reaches the others; the daemon is restarted under them, after which
// CHECK still passes and traffic still flows; then all DELs at once leave
// nothing behind.
func TestCNIConcurrentAddDelAndRestart(t *testing.T) {
	testutil.RequireRoot(t)
	const n = 12
	state := t.TempDir()
	d := startDaemon(t, state, "--pod-cidr", "10.251.61.0/24", "--pod-cidr6", "fd00:4a4:61::/64")
	rig := newCNIRig(t, d)
	l := confList(t, "tsw-many", "1.1.0", tapswitchConf(d.socket))

	rts := make([]*libcni.RuntimeConf, n)
	for i := range rts {
		rts[i] = k8sRuntime(uniqueID("many"), testutil.NewNetNS(t), fmt.Sprintf("web-%d", i))
	}
	parallel(t, rts, func(rt *libcni.RuntimeConf) error {
		_, err := rig.add(t, l, rt)
		return err
	})

	pods := make([]pod, n)
	ips, macs := map[netip.Addr]string{}, map[string]string{}
	for i, rt := range rts {
		pods[i] = attachedPod(t, d, rt)
		for _, p := range pods[i].IPs {
			if other, dup := ips[p.Addr()]; dup {
				t.Errorf("%s and %s both have %s", other, pods[i].ID, p.Addr())
			}
			ips[p.Addr()] = pods[i].ID
		}
		if other, dup := macs[pods[i].MAC.String()]; dup {
			t.Errorf("%s and %s both have mac %s", other, pods[i].ID, pods[i].MAC)
		}
		macs[pods[i].MAC.String()] = pods[i].ID
	}
	ringPing := func() {
		t.Helper()
		for i := range pods {
			next := pods[(i+1)%n]
			for _, a := range next.IPs {
				mustPing(t, pods[i], a.Addr())
			}
		}
	}
	ringPing()

	// A restart: the TAPs stay, the new daemon re-attaches them from its
	// state. The plugin's view must not change.
	d.stop(t)
	d = startDaemonIn(t, d.node, state, "--pod-cidr", "10.251.61.0/24", "--pod-cidr6", "fd00:4a4:61::/64")
	l = confList(t, "tsw-many", "1.1.0", tapswitchConf(d.socket)) // the new daemon's socket
	for _, rt := range rts {
		if err := rig.check(t, l, rt); err != nil {
			t.Errorf("CHECK %s after the daemon's restart: %v", rt.ContainerID, err)
		}
	}
	ringPing()

	parallel(t, rts, func(rt *libcni.RuntimeConf) error { return rig.del(t, l, rt) })
	for _, rt := range rts {
		requireGone(t, d, rt)
	}
	requireNoLeases(t, d)
}

// parallel runs fn for every attachment at once and fails the test for
// each error.
func parallel(t *testing.T, rts []*libcni.RuntimeConf, fn func(*libcni.RuntimeConf) error) {
	t.Helper()
	errs := make([]error, len(rts))
	var wg sync.WaitGroup
	for i, rt := range rts {
		wg.Go(func() { errs[i] = fn(rt) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("%s: %v", rts[i].ContainerID, err)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
}
