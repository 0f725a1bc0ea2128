package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"golang.org/x/sys/unix"

	"tapswitch/internal/testutil"
)

// Tests of the CNI figures' helpers; only TestNodeExec needs root. The
// figures themselves are taken by TestShortBench.

func TestConflists(t *testing.T) {
	kb, err := kernelConflist("bench-kernel", "/tmp/x/host-local", 1500)
	if err != nil {
		t.Fatal(err)
	}
	tb, err := tapswitchConflist("bench-tapswitch", "/tmp/x/tapswitchd.sock")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		conf       []byte
		name, typ  string
		wantFields map[string]any
	}{
		{kb, "bench-kernel", "bridge", map[string]any{
			"bridge": cniBridge, "isGateway": true, "ipMasq": false, "mtu": float64(1500),
		}},
		{tb, "bench-tapswitch", "tapswitch", map[string]any{"socket": "/tmp/x/tapswitchd.sock"}},
	} {
		list, err := libcni.ConfListFromBytes(tt.conf)
		if err != nil {
			t.Fatalf("ConfListFromBytes(%s): %v", tt.conf, err)
		}
		if list.Name != tt.name || list.CNIVersion != "1.0.0" || len(list.Plugins) != 1 {
			t.Fatalf("%s: name %q, cniVersion %q, %d plugins; want %q, 1.0.0, 1", tt.conf, list.Name, list.CNIVersion, len(list.Plugins), tt.name)
		}
		p := list.Plugins[0]
		if p.Network.Type != tt.typ {
			t.Errorf("%s: type %q, want %q", tt.name, p.Network.Type, tt.typ)
		}
		var raw map[string]any
		if err := json.Unmarshal(p.Bytes, &raw); err != nil {
			t.Fatal(err)
		}
		for k, want := range tt.wantFields {
			if raw[k] != want {
				t.Errorf("%s: %s = %v, want %v", tt.name, k, raw[k], want)
			}
		}
	}

	// host-local gets the subnet, the default route and the data folder
	// in the temporary folder.
	list, _ := libcni.ConfListFromBytes(kb)
	ipam := list.Plugins[0].Network.IPAM
	if ipam.Type != "host-local" {
		t.Errorf("ipam type %q, want host-local", ipam.Type)
	}
	var conf struct {
		IPAM struct {
			Ranges  [][]struct{ Subnet string } `json:"ranges"`
			Routes  []struct{ Dst string }      `json:"routes"`
			DataDir string                      `json:"dataDir"`
		} `json:"ipam"`
	}
	if err := json.Unmarshal(list.Plugins[0].Bytes, &conf); err != nil {
		t.Fatal(err)
	}
	if len(conf.IPAM.Ranges) != 1 || len(conf.IPAM.Ranges[0]) != 1 || conf.IPAM.Ranges[0][0].Subnet != cniKernelSubnet.String() {
		t.Errorf("ipam ranges %+v, want [[%s]]", conf.IPAM.Ranges, cniKernelSubnet)
	}
	if len(conf.IPAM.Routes) != 1 || conf.IPAM.Routes[0].Dst != "0.0.0.0/0" {
		t.Errorf("ipam routes %+v, want the default route", conf.IPAM.Routes)
	}
	if conf.IPAM.DataDir != "/tmp/x/host-local" {
		t.Errorf("ipam dataDir %q, want /tmp/x/host-local", conf.IPAM.DataDir)
	}
}

func TestCNIFiguresInResults(t *testing.T) {
	lat := func(p50, p99, max float64) latencies {
		return latencies{P50Ms: p50, P99Ms: p99, MaxMs: max, Samples: 100}
	}
	run := cniRun{Pods: 100, Variants: map[string]cniLatencies{
		"kernel":    {Add: lat(10, 20, 30), Del: lat(20, 40, 50)},
		"tapswitch": {Add: lat(5, 30, 45), Del: lat(30, 40, 100)},
	}}
	k := &variant{name: "kernel"}
	ts := &variant{name: "tapswitch"}
	k.add("tcp1_gbps", 10)
	ts.add("tcp1_gbps", 5)
	res := newResults(k, ts, nil, env{}, options{rounds: 1, duration: time.Second}, run)

	want := map[string][3]float64{ // kernel, tapswitch, ratio
		"cni_add_p50_ms": {10, 5, 0.5}, "cni_add_p99_ms": {20, 30, 1.5}, "cni_add_max_ms": {30, 45, 1.5},
		"cni_del_p50_ms": {20, 30, 1.5}, "cni_del_p99_ms": {40, 40, 1}, "cni_del_max_ms": {50, 100, 2},
	}
	for key, w := range want {
		if got := res.Variants["kernel"][key]; got != w[0] {
			t.Errorf("variants.kernel.%s = %v, want %v", key, got, w[0])
		}
		if got := res.Variants["tapswitch"][key]; got != w[1] {
			t.Errorf("variants.tapswitch.%s = %v, want %v", key, got, w[1])
		}
		if got := res.Ratios[key]; got != w[2] {
			t.Errorf("ratios.%s = %v, want %v", key, got, w[2])
		}
		if !slices.Contains(res.Meta.LowerIsBetter, key) {
			t.Errorf("lower_is_better lacks %s", key)
		}
	}
	if got := res.Ratios["tcp1_gbps"]; got != 0.5 {
		t.Errorf("ratios.tcp1_gbps = %v, want 0.5: the round figures stay", got)
	}
	if res.Meta.CNI.Pods != 100 {
		t.Errorf("meta.cni.pods = %d, want 100", res.Meta.CNI.Pods)
	}
	if len(cniFigureList()) != len(want) {
		t.Errorf("cniFigureList() has %d figures, want %d", len(cniFigureList()), len(want))
	}
}

func TestParseFlagsCNI(t *testing.T) {
	tests := []struct {
		args    []string
		pods    int
		only    string
		wantErr string
	}{
		{nil, 100, "", ""},
		{[]string{"-short"}, 20, "", ""},
		{[]string{"-short", "-cni-pods", "50"}, 50, "", ""},
		{[]string{"-only", "cni"}, 100, "cni", ""},
		{[]string{"-cni-pods", "1"}, 0, "", "-cni-pods 1"},
		{[]string{"-cni-pods", "251"}, 0, "", "-cni-pods 251"},
		{[]string{"-only", "traffic"}, 0, "", `-only "traffic"`},
		{[]string{"-only", "cni", "-scale"}, 0, "", "-only and -scale"},
	}
	for _, tt := range tests {
		o, err := parseFlags(tt.args, io.Discard)
		switch {
		case tt.wantErr != "":
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("parseFlags(%q) error = %v, want one containing %q", tt.args, err, tt.wantErr)
			}
		case err != nil:
			t.Errorf("parseFlags(%q): %v", tt.args, err)
		case o.cniPods != tt.pods || o.only != tt.only || o.cniTools != "bin/cni-tools":
			t.Errorf("parseFlags(%q): cniPods %d, only %q, cniTools %q; want %d, %q, bin/cni-tools", tt.args, o.cniPods, o.only, o.cniTools, tt.pods, tt.only)
		}
	}
}

func TestCheckCNITools(t *testing.T) {
	tools, bin := t.TempDir(), t.TempDir()
	write := func(file string, mode os.FileMode) {
		t.Helper()
		if err := os.WriteFile(file, []byte("#!/bin/sh\n"), mode); err != nil {
			t.Fatal(err)
		}
	}
	opts := options{cniTools: tools, binDir: bin}
	err := checkCNITools(opts)
	if err == nil || !strings.Contains(err.Error(), "make cni-tools") || !strings.Contains(err.Error(), "bridge") {
		t.Errorf("no tools: error = %v, want one naming bridge and make cni-tools", err)
	}
	write(filepath.Join(tools, "bridge"), 0o755)
	write(filepath.Join(tools, "host-local"), 0o644)
	if err := checkCNITools(opts); err == nil || !strings.Contains(err.Error(), "host-local") || !strings.Contains(err.Error(), "not an executable") {
		t.Errorf("host-local not executable: error = %v, want one saying so", err)
	}
	os.Chmod(filepath.Join(tools, "host-local"), 0o755)
	if err := checkCNITools(opts); err == nil || !strings.Contains(err.Error(), "tapswitch") || !strings.Contains(err.Error(), "make build") {
		t.Errorf("no bin/tapswitch: error = %v, want one naming tapswitch and make build", err)
	}
	write(filepath.Join(bin, "tapswitch"), 0o755)
	if err := checkCNITools(opts); err != nil {
		t.Errorf("every plugin there: %v", err)
	}
}

func TestHostLocalEmpty(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"lock", "last_reserved_ip.0"} {
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := hostLocalEmpty(dir); err != nil {
		t.Errorf("no lease files: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "10.253.8.7"), []byte("id\r\neth0"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := hostLocalEmpty(dir); err == nil || !strings.Contains(err.Error(), "10.253.8.7") {
		t.Errorf("a lease left: error = %v, want one naming 10.253.8.7", err)
	}
	if err := hostLocalEmpty(filepath.Join(dir, "missing")); err == nil {
		t.Errorf("missing folder: no error, want one: the network never leased anything")
	}
}

func TestCheckAddResult(t *testing.T) {
	ok := &types100.Result{
		CNIVersion: "1.0.0",
		Interfaces: []*types100.Interface{{Name: "eth0", Sandbox: "/var/run/netns/x"}},
		IPs:        []*types100.IPConfig{{Address: mustIPNet(t, "10.253.8.2/24")}},
	}
	if err := checkAddResult(ok); err != nil {
		t.Errorf("complete result: %v", err)
	}
	if err := checkAddResult(&types100.Result{CNIVersion: "1.0.0"}); err == nil {
		t.Errorf("result without IPs: no error")
	}
	if err := checkAddResult(nil); err == nil {
		t.Errorf("nil result: no error")
	}
}

func TestPluginError(t *testing.T) {
	exit := errors.New("exit status 1")
	err := pluginError(exit, []byte(`{"cniVersion":"1.0.0","code":11,"msg":"try again later","details":"no daemon"}`), []byte("warn\n"))
	var e *types.Error
	if !errors.As(err, &e) || e.Code != 11 || e.Msg != "try again later" || !strings.Contains(e.Details, "no daemon") || !strings.Contains(e.Details, "stderr: warn") {
		t.Errorf("plugin's CNI error: got %#v, want code 11, its msg, details with stderr", err)
	}
	err = pluginError(exit, nil, []byte("panic: boom\n"))
	if !errors.As(err, &e) || e.Code != types.ErrInternal || !strings.Contains(e.Msg, "exit status 1") || !strings.Contains(e.Details, "panic: boom") {
		t.Errorf("no CNI error on stdout: got %#v, want an internal error with the exit and stderr", err)
	}
}

// TestNodeExec checks that a process the runner starts is born in the
// runner's namespace, and that checkNetNS refuses another one.
func TestNodeExec(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.CheckGoroutines(t)
	nodePath := testutil.NewNetNS(t)
	otherPath := testutil.NewNetNS(t)
	node := filepath.Base(nodePath)

	e, err := startNodeExec(node, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer e.stop()
	ctx := context.Background()
	if err := e.checkNetNS(ctx); err != nil {
		t.Errorf("checkNetNS in its own namespace: %v", err)
	}

	// A "plugin" printing the namespace it runs in and its CNI_COMMAND.
	plugin := filepath.Join(t.TempDir(), "plugin")
	if err := os.WriteFile(plugin, []byte("#!/bin/sh\nprintf '%s %s' \"$CNI_COMMAND\" \"$(readlink /proc/self/ns/net)\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := e.ExecPlugin(ctx, plugin, []byte("{}"), []string{"CNI_COMMAND=ADD", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"})
	if err != nil {
		t.Fatal(err)
	}
	if want := "ADD " + netnsID(t, nodePath); string(out) != want {
		t.Errorf("plugin printed %q, want %q", out, want)
	}
	if len(e.runs) != 1 || e.runs[0] <= 0 {
		t.Errorf("runs = %v, want one positive duration", e.runs)
	}

	// The same runner, asked to prove it is in another namespace.
	wrong := *e
	wrong.node = filepath.Base(otherPath)
	if err := wrong.checkNetNS(ctx); err == nil || !strings.Contains(err.Error(), "refusing") {
		t.Errorf("checkNetNS against another namespace: error = %v, want a refusal", err)
	}
}

// netnsID is what readlink /proc/self/ns/net prints inside the namespace
// at path.
func netnsID(t *testing.T, path string) string {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("net:[%d]", st.Ino)
}

func mustIPNet(t *testing.T, s string) net.IPNet {
	t.Helper()
	ip, n, err := net.ParseCIDR(s)
	if err != nil {
		t.Fatal(err)
	}
	n.IP = ip
	return *n
}
