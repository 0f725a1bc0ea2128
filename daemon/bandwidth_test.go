package daemon

import (
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"tapswitch/daemon/api"
	"tapswitch/internal/testutil"
	vswitch "tapswitch/switch"
)

func TestValidateBandwidth(t *testing.T) {
	tests := []struct {
		name string
		b    *api.Bandwidth
		ok   bool
	}{
		{"none", nil, true},
		{"both ways", &api.Bandwidth{IngressRate: 1e6, IngressBurst: 1e5, EgressRate: 2e6, EgressBurst: 1e5}, true},
		{"kubelet's unlimited burst", &api.Bandwidth{EgressRate: 1e6, EgressBurst: 1<<31 - 1}, true},
		{"rate without burst", &api.Bandwidth{IngressRate: 1e6}, false},
		{"burst without rate", &api.Bandwidth{EgressBurst: 1e5}, false},
		{"burst of 4 GiB", &api.Bandwidth{IngressRate: 1e6, IngressBurst: 8 << 32}, false},
		{"rate under 1 kbit/s", &api.Bandwidth{IngressRate: 999, IngressBurst: 1e5}, false},
		{"rate of 1 kbit/s", &api.Bandwidth{EgressRate: 1000, EgressBurst: 1e5}, true},
		{"egress burst under a frame", &api.Bandwidth{EgressRate: 1e6, EgressBurst: 1514*8 - 1}, false},
		{"egress burst of a frame", &api.Bandwidth{EgressRate: 1e6, EgressBurst: 1514 * 8}, true},
		{"small ingress burst", &api.Bandwidth{IngressRate: 1e6, IngressBurst: 8}, true}, // the policer lets big frames into debt
	}
	for _, tt := range tests {
		err := validateBandwidth(tt.b, 1500)
		if (err == nil) != tt.ok || (err != nil && !errors.Is(err, ErrInvalid)) {
			t.Errorf("%s: validateBandwidth(%+v) = %v, want ok=%v", tt.name, tt.b, err, tt.ok)
		}
	}
}

// TestAddPodBandwidth checks a pod with limits gets its egress qdisc and
// keeps its limits across a restart, and that CHECK notices the qdisc
// going.
func TestAddPodBandwidth(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNetNS(t)
	state := t.TempDir()
	d := newTestDaemon(t, state)
	bw := &api.Bandwidth{IngressRate: 20e6, IngressBurst: 1e6, EgressRate: 10e6, EgressBurst: 1e6}
	pod, err := d.AddPod(api.PodRequest{ID: "bw", NetNS: ns, Bandwidth: bw})
	if err != nil {
		t.Fatal(err)
	}
	if pod.Bandwidth == nil || *pod.Bandwidth != *bw {
		t.Fatalf("pod bandwidth %+v, want %+v", pod.Bandwidth, bw)
	}
	if _, err := d.CheckPod("bw"); err != nil {
		t.Fatalf("CheckPod: %v", err)
	}
	if _, err := d.AddPod(api.PodRequest{ID: "bad", NetNS: testutil.NewNetNS(t), Bandwidth: &api.Bandwidth{EgressRate: 1}}); !errors.Is(err, ErrInvalid) {
		t.Errorf("AddPod with a rate and no burst = %v, want ErrInvalid", err)
	}

	d.Close()
	d = newTestDaemon(t, state)
	// CheckPod compares the switch's ingress limit too: a restart must
	// have set it again.
	got, err := d.CheckPod("bw")
	if err != nil || got.Bandwidth == nil || *got.Bandwidth != *bw {
		t.Fatalf("after a restart: %+v, %v; want the pod with its limits, as attached", got.Bandwidth, err)
	}

	// The switch's ingress limit gone: CHECK says so.
	if err := d.sw.SetTxLimit(got.PortID, vswitch.Limit{}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.CheckPod("bw"); !errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), "ingress limit is 0 bit/s") {
		t.Errorf("CheckPod without the switch's limit = %v, want the ingress limit named", err)
	}
	if err := d.sw.SetTxLimit(got.PortID, ingressLimit(got)); err != nil {
		t.Fatal(err)
	}

	if out, err := exec.Command("ip", "netns", "exec", filepath.Base(ns), "tc", "qdisc", "del", "dev", "eth0", "root").CombinedOutput(); err != nil {
		t.Fatalf("tc qdisc del: %v: %s", err, out)
	}
	if _, err := d.CheckPod("bw"); !errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), "egress limit is 0 bit/s, want 10000000") {
		t.Errorf("CheckPod without the qdisc = %v, want the egress limit named", err)
	}
}
