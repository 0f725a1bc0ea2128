package main

import (
	"context"
	"encoding/json"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"tapswitch/internal/testutil"
)

// These tests run the harness end to end in its short mode, so make bench
// cannot rot. They check that it finished, wrote results of the fixed
// shape with a positive number for every figure, and removed what it
// made. The numbers themselves are printed (go test -v), never judged.

func TestShortBench(t *testing.T) {
	testutil.RequireRoot(t)
	requireTool(t, "iperf3")
	requireTool(t, "iptables")
	tools := requireCNITools(t)
	bin := buildBinaries(t)
	testutil.CheckGoroutines(t)
	out := filepath.Join(t.TempDir(), "latest.json")

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := run(ctx, []string{"-short", "-bin", bin, "-cni-tools", tools, "-out", out}, &testutil.LineLog{T: t}); err != nil {
		t.Fatalf("bench -short: %v", err)
	}
	checkNothingLeft(t)

	var res struct {
		Variants map[string]map[string]float64 `json:"variants"`
		Ratios   map[string]float64            `json:"ratios"`
		Targets  []targetResult                `json:"targets"`
		Meta     map[string]any                `json:"meta"`
	}
	readJSON(t, out, &res)
	// Every target is judged (met or not: this checks the shape only).
	if len(res.Targets) != len(targets) {
		t.Errorf("targets = %+v, want one verdict for each of %d", res.Targets, len(targets))
	}
	for _, tg := range res.Targets {
		if !(tg.Ratio > 0) { // NaN too
			t.Errorf("target %s: ratio %v, want it positive", tg.Figure, tg.Ratio)
		}
	}
	common := []string{"tcp1_gbps", "tcp4_gbps", "udp64_kpps", "rtt_us", "rr_us", "cpu_s_per_gb",
		"egress_tcp_gbps", "egress_cpu_s_per_gb", "egress_rr_us", "node_tcp_gbps",
		"xnode_tcp1_gbps", "xnode_tcp4_gbps", "xnode_rr_us",
		"cni_add_p50_ms", "cni_add_p99_ms", "cni_add_max_ms", "cni_del_p50_ms", "cni_del_p99_ms", "cni_del_max_ms"}
	for _, name := range []string{"kernel", "tapswitch"} {
		v, ok := res.Variants[name]
		if !ok {
			t.Errorf("variants.%s missing", name)
		}
		checkPositive(t, "variants."+name, v, common...)
	}
	checkPositive(t, "variants.tapswitch", res.Variants["tapswitch"], "switch_cpu_s_per_gb")
	checkPositive(t, "ratios", res.Ratios, common...)
	// The daemon in proxy mode takes only the figures of the way out.
	if _, ok := res.Variants[proxyVariant]; !ok {
		t.Errorf("variants.%s missing", proxyVariant)
	}
	checkPositive(t, "variants."+proxyVariant, res.Variants[proxyVariant], proxyFigures...)
	var proxyRatios []string
	for _, key := range proxyFigures {
		proxyRatios = append(proxyRatios, proxyRatioPrefix+key)
	}
	checkPositive(t, "ratios", res.Ratios, proxyRatios...)
	// The tapswitch ↔ flannel-style pair takes only the figures across
	// nodes.
	if _, ok := res.Variants[mixedVariant]; !ok {
		t.Errorf("variants.%s missing", mixedVariant)
	}
	checkPositive(t, "variants."+mixedVariant, res.Variants[mixedVariant], xnodeFigures...)
	var mixedRatios []string
	for _, key := range xnodeFigures {
		mixedRatios = append(mixedRatios, mixedRatioPrefix+key)
	}
	checkPositive(t, "ratios", res.Ratios, mixedRatios...)
	for _, key := range []string{"kernel", "cpus", "mtu", "offloads", "rounds", "duration", "date"} {
		if res.Meta[key] == nil || res.Meta[key] == "" {
			t.Errorf("meta.%s = %v, want it set", key, res.Meta[key])
		}
	}
	var cni struct {
		Meta struct {
			CNI cniRun `json:"cni"`
		} `json:"meta"`
	}
	readJSON(t, out, &cni)
	if c := cni.Meta.CNI; c.Pods != 20 || c.Variants["kernel"].Add.Samples != 20 || c.Variants["tapswitch"].Del.Samples != 20 {
		t.Errorf("meta.cni = %+v, want 20 pods and 20 samples per call and variant", c)
	}
}

// requireCNITools returns the absolute path of the repository's
// bin/cni-tools when the reference plugins the CNI figures run are there;
// else it skips the test, or fails it in CI (make cni-tools).
func requireCNITools(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("..", "bin", "cni-tools"))
	if err != nil {
		t.Fatal(err)
	}
	if err := checkReferencePlugins(dir); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%v", err)
		}
		t.Skipf("%v", err)
	}
	return dir
}

func TestShortScale(t *testing.T) {
	testutil.RequireRoot(t)
	bin := buildBinaries(t)
	out := filepath.Join(t.TempDir(), "scale.json")

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	args := []string{"-scale", "-short", "-pods", "20", "-bin", bin, "-scale-out", out}
	if err := run(ctx, args, &testutil.LineLog{T: t}); err != nil {
		t.Fatalf("bench %s: %v", strings.Join(args, " "), err)
	}
	checkNothingLeft(t)

	var res scaleResults
	readJSON(t, out, &res)
	if res.Pods != 20 || res.Attach.Samples != 20 || res.Detach.Samples != 20 {
		t.Errorf("pods %d, attach samples %d, detach samples %d; want 20 each", res.Pods, res.Attach.Samples, res.Detach.Samples)
	}
	checkPositive(t, "scale", map[string]float64{
		"attach.p50_ms": res.Attach.P50Ms, "attach.p99_ms": res.Attach.P99Ms,
		"detach.p50_ms": res.Detach.P50Ms, "rss_after_bytes": float64(res.RSSAfter),
		"fdb_lookup_ns.hit": res.FDBLookupNs["hit"],
	}, "attach.p50_ms", "attach.p99_ms", "detach.p50_ms", "rss_after_bytes", "fdb_lookup_ns.hit")
	if f := res.Flood; f.Skipped != "" {
		t.Logf("flood skipped: %s", f.Skipped)
	} else if f.SwitchRx == 0 || f.Copies == 0 {
		t.Errorf("flood = %+v, want frames read and copies written", f)
	}
}

// requireTool skips the test, or fails it in CI, when a program the
// harness runs is missing; make deps installs it.
func requireTool(t *testing.T, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s not installed (make deps)", name)
		}
		t.Skipf("%s not installed (make deps)", name)
	}
}

// buildBinaries builds tapswitchd, tapswitchctl and the CNI plugin
// tapswitch into a temporary folder and returns it.
func buildBinaries(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-o", dir+"/", "tapswitch/cmd/tapswitchd", "tapswitch/cmd/tapswitchctl", "tapswitch/cmd/tapswitch")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build binaries: %v\n%s", err, out)
	}
	return dir
}

func checkNothingLeft(t *testing.T) {
	t.Helper()
	if left := leftoverNetNS(); len(left) > 0 {
		t.Errorf("namespaces left behind: %v", left)
	}
	if m, _ := filepath.Glob(filepath.Join(os.TempDir(), nsPrefix()+"*")); len(m) > 0 {
		t.Errorf("temporary folders left behind: %v", m)
	}
}

func readJSON(t *testing.T, file string, v any) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("results: %v", err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("results %s: %v\n%s", file, err, b)
	}
}

// checkPositive fails t for every key of m that is missing or not a
// positive finite number.
func checkPositive(t *testing.T, where string, m map[string]float64, keys ...string) {
	t.Helper()
	for _, k := range keys {
		x, ok := m[k]
		if !ok || !(x > 0) || math.IsInf(x, 0) {
			t.Errorf("%s.%s = %v (present %v), want a positive number", where, k, x, ok)
		}
	}
}
