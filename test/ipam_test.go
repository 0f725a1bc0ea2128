package test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"tapswitch/internal/testutil"
	"tapswitch/ipam"
)

// TestIPAMLeases checks tapswitchctl ipam against the pods: a lease per
// pod with the pod's addresses, kept across a restart, gone with the pod.
func TestIPAMLeases(t *testing.T) {
	testutil.RequireRoot(t)
	state := filepath.Join(t.TempDir(), "state")
	d := startDaemon(t, state, "--pod-cidr", "10.251.60.0/24", "--pod-cidr6", "fd00:4a4:60::/64")
	a, b := addPod(t, d, "ipam-a"), addPod(t, d, "ipam-b")
	check := func(d *daemonProc, want ...pod) {
		t.Helper()
		out, err := d.ctl("ipam", "-o", "json")
		if err != nil {
			t.Fatalf("tapswitchctl ipam: %v\n%s", err, out)
		}
		var leases []ipam.Lease
		if err := json.Unmarshal([]byte(out), &leases); err != nil {
			t.Fatalf("tapswitchctl ipam -o json: %v\n%s", err, out)
		}
		if len(leases) != len(want) {
			t.Fatalf("leases = %+v, want %d", leases, len(want))
		}
		for i, p := range want {
			l := leases[i]
			if l.Key.ContainerID != p.ID || l.Key.IfName != p.IfName || !slices.Equal(l.IPs, p.IPs) || l.Since.IsZero() {
				t.Errorf("lease %d = %+v, want %s/%s with %v", i, l, p.ID, p.IfName, p.IPs)
			}
		}
	}
	check(d, a, b)
	if out, err := d.ctl("ipam"); err != nil || !strings.Contains(out, "CONTAINER_ID") || !strings.Contains(out, a.IPs[0].String()) {
		t.Errorf("tapswitchctl ipam = %v\n%s", err, out)
	}
	d.stop(t)
	d2 := startDaemonIn(t, d.node, state, "--pod-cidr", "10.251.60.0/24", "--pod-cidr6", "fd00:4a4:60::/64")
	check(d2, a, b)
	if err := d2.client.DeletePod(context.Background(), a.ID); err != nil {
		t.Fatal(err)
	}
	check(d2, b)
}

// failedStart runs tapswitchd in node and returns its output; the daemon
// must exit with an error within 10 s.
func failedStart(t *testing.T, node, stateDir string, extra ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	args := append([]string{"netns", "exec", filepath.Base(node), filepath.Join(binDir, "tapswitchd"),
		"--socket", filepath.Join(t.TempDir(), "sock"), "--state-dir", stateDir, "--dns", "none"}, extra...)
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ctx.Err() != nil {
		t.Fatalf("tapswitchd %v: %v, want it to exit with an error\n%s", extra, err, out)
	}
	return string(out)
}

// TestIPAMRefusesOtherCIDR restarts the daemon with another --pod-cidr
// over a store with leases: it must refuse to start rather than re-number
// the pods, saying why.
func TestIPAMRefusesOtherCIDR(t *testing.T) {
	testutil.RequireRoot(t)
	state := filepath.Join(t.TempDir(), "state")
	d := startDaemon(t, state, "--pod-cidr", "10.251.61.0/24")
	addPod(t, d, "ipam-cidr")
	d.stop(t)
	out := failedStart(t, d.node, state, "--pod-cidr", "10.251.62.0/24")
	for _, want := range []string{"10.251.61.0/24", "10.251.62.0/24", "re-number"} {
		if !strings.Contains(out, want) {
			t.Errorf("start with another cidr says %q, want it to name %q", strings.TrimSpace(out), want)
		}
	}
}

// TestIPAMCorruptStore starts the daemon over an address store that is
// not one: a clear error naming the file, and the file left as it was.
func TestIPAMCorruptStore(t *testing.T) {
	testutil.RequireRoot(t)
	node := testutil.NewNetNS(t)
	state := filepath.Join(t.TempDir(), "state")
	if err := os.MkdirAll(state, 0o700); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(state, "ipam.db")
	garbage := []byte(strings.Repeat("not a bbolt file ", 1000))
	if err := os.WriteFile(file, garbage, 0o600); err != nil {
		t.Fatal(err)
	}
	out := failedStart(t, node, state)
	if !strings.Contains(out, file) {
		t.Errorf("start over a corrupt store says %q, want it to name %s", strings.TrimSpace(out), file)
	}
	if got, _ := os.ReadFile(file); string(got) != string(garbage) {
		t.Errorf("the corrupt store was changed (%d bytes), want it left for the operator", len(got))
	}
}
