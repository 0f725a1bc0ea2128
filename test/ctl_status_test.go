package test

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"tapswitch/internal/testutil"
)

// TestCtlStatusAndCheck checks `tapswitchctl status` counts free addresses
// and `tapswitchctl pod check` passes an untouched pod and fails, naming
// the difference, once the pod's interface was changed behind the daemon.
func TestCtlStatusAndCheck(t *testing.T) {
	testutil.RequireRoot(t)
	// A /29: network, gateway, host port and broadcast leave 4 for pods.
	d := startDaemon(t, "", "--pod-cidr", "10.251.7.0/29")
	out, err := d.ctl("status")
	if err != nil || !strings.Contains(out, "pods: 0") || !strings.Contains(out, "10.251.7.0/29  4     4") {
		t.Fatalf("status: %v\n%s", err, out)
	}
	p := addPod(t, d, "st1")
	out, err = d.ctl("status")
	if err != nil || !strings.Contains(out, "pods: 1") || !strings.Contains(out, "10.251.7.0/29  4     3") {
		t.Errorf("status after one pod: %v\n%s", err, out)
	}

	if out, err := d.ctl("pod check", "--id", "st1"); err != nil || !strings.Contains(out, "is as attached") {
		t.Errorf("pod check of an untouched pod: %v\n%s", err, out)
	}
	if out, err := exec.Command("ip", "-n", filepath.Base(p.ns), "link", "set", "eth0", "mtu", "1280").CombinedOutput(); err != nil {
		t.Fatalf("set mtu: %v: %s", err, out)
	}
	out, err = d.ctl("pod check", "--id", "st1")
	if err == nil || !strings.Contains(out, "mtu is 1280, want 1500") {
		t.Errorf("pod check after an mtu change: %v\n%s", err, out)
	}
	if out, err := d.ctl("pod check"); err == nil || !strings.Contains(out, "needs --id") {
		t.Errorf("pod check without --id: %v\n%s", err, out)
	}
	if out, err := d.ctl("pod check", "--id", "nope"); err == nil || !strings.Contains(out, "not found") {
		t.Errorf("pod check of an unknown pod: %v\n%s", err, out)
	}
}
