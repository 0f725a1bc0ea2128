package test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"tapswitch/daemon/api"
	"tapswitch/internal/testutil"
	vswitch "tapswitch/switch"
	"tapswitch/tap"
)

func TestTwoPodsPing(t *testing.T) {
	testutil.RequireRoot(t)
	d := startDaemon(t, "")
	a, b := addPod(t, d, "ping-a"), addPod(t, d, "ping-b")
	mustPing(t, a, b.addr())
	mustPing(t, b, a.addr())

	// The switch answered the pods' ARP requests itself and learned both.
	st, err := d.client.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var replies uint64
	podPorts := 0
	for _, p := range st.Ports {
		replies += p.ARPReplies
		if p.Name != a.ID && p.Name != b.ID {
			continue // the gateway and the host port
		}
		podPorts++
		if p.RxFrames == 0 || p.TxFrames == 0 {
			t.Errorf("port %s: rx %d tx %d frames, want both > 0", p.Name, p.RxFrames, p.TxFrames)
		}
	}
	if podPorts != 2 {
		t.Errorf("the switch's stats have %d ports of pods %s and %s, want 2: %+v", podPorts, a.ID, b.ID, st.Ports)
	}
	if replies == 0 {
		t.Errorf("ARP replies = 0, want the switch to answer the pods' ARP")
	}
	fdb, err := d.client.FDB(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []pod{a, b} {
		if !fdbHas(fdb, p.MAC, p.ID) {
			t.Errorf("FDB lacks %s on port %s: %v", p.MAC, p.ID, fdb)
		}
	}
}

func fdbHas(fdb []vswitch.FDBRecord, mac vswitch.MAC, port string) bool {
	for _, e := range fdb {
		if e.MAC == mac && e.PortName == port {
			return true
		}
	}
	return false
}

func TestTenPodsAllToAll(t *testing.T) {
	testutil.RequireRoot(t)
	d := startDaemon(t, "")
	pods := make([]pod, 10)
	for i := range pods {
		pods[i] = addPod(t, d, fmt.Sprintf("mesh-%d", i))
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(pods)*len(pods))
	for _, src := range pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, dst := range pods {
				if dst.ID == src.ID {
					continue
				}
				if err := ping(src, dst); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestPodDeleteRemovesTAPAndFDB(t *testing.T) {
	testutil.RequireRoot(t)
	d := startDaemon(t, "")
	a, b := addPod(t, d, "del-a"), addPod(t, d, "del-b")
	mustPing(t, a, b.addr())

	out, err := d.ctl("pod del", "--id", b.ID)
	if err != nil {
		t.Fatalf("pod del: %v\n%s", err, out)
	}
	if ok, err := tap.Exists(b.ns, "eth0"); err != nil || ok {
		t.Errorf("after pod del, eth0 in %s: exists=%v err=%v, want gone", b.ns, ok, err)
	}
	fdb, err := d.client.FDB(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range fdb {
		if e.MAC == b.MAC || e.PortName == b.ID {
			t.Errorf("FDB still has %v after pod del", e)
		}
	}
	pods, _ := d.client.Pods(context.Background())
	if len(pods) != 1 || pods[0].ID != a.ID {
		t.Errorf("Pods() = %v, want only %s", pods, a.ID)
	}
	if _, err := d.ctl("pod del", "--id", b.ID); err == nil {
		t.Errorf("second pod del of %s succeeded, want an unknown-pod error", b.ID)
	}
	// Its address is free again (after the range wraps) and a is unharmed.
	if res, err := pingOnce(a, b); err == nil && res {
		t.Errorf("ping to the deleted pod's address was answered")
	}
}

func TestSocketIsRootOnly(t *testing.T) {
	testutil.RequireRoot(t)
	d := startDaemon(t, "")
	fi, err := os.Stat(d.socket)
	if err != nil {
		t.Fatal(err)
	}
	if mode := fi.Mode().Perm(); mode != 0o600 {
		t.Errorf("socket mode = %o, want 600", mode)
	}
	// Open the folder to everyone so only the socket's own mode and the
	// daemon's peer check stand between a non-root user and the API.
	for _, dir := range []string{filepath.Dir(d.socket), filepath.Dir(filepath.Dir(d.socket))} {
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(filepath.Join(binDir, "tapswitchctl"), "pods", "--socket", d.socket)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("tapswitchctl as uid 65534 succeeded, want refused:\n%s", out)
	}
	if !strings.Contains(string(out), "permission denied") {
		t.Errorf("tapswitchctl as uid 65534: %s, want permission denied", out)
	}

	// With the mode opened too, the daemon's SO_PEERCRED check still
	// refuses the peer.
	if err := os.Chmod(d.socket, 0o666); err != nil {
		t.Fatal(err)
	}
	cmd = exec.Command(filepath.Join(binDir, "tapswitchctl"), "pods", "--socket", d.socket)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Fatalf("tapswitchctl as uid 65534 on a 0666 socket succeeded, want refused:\n%s", out)
	}
	if !strings.Contains(d.log.String(), "refused api connection") {
		t.Errorf("daemon log does not report the refused peer:\n%s", d.log)
	}
}

func TestCLIErrors(t *testing.T) {
	testutil.RequireRoot(t)
	d := startDaemon(t, "")
	ns := testutil.NewNetNS(t)
	if out, err := d.ctl("pod add", "--id", "dup", "--netns", ns); err != nil {
		t.Fatalf("pod add: %v\n%s", err, out)
	}
	ns2 := testutil.NewNetNS(t)
	tests := []struct {
		name string
		cmd  string
		args []string
		want string
	}{
		{"missing netns", "pod add", []string{"--id", "x1", "--netns", "/var/run/netns/tsw-does-not-exist"}, "does-not-exist"},
		{"not a netns", "pod add", []string{"--id", "x4", "--netns", "/etc/hostname"}, "not a network namespace"},
		{"duplicate id", "pod add", []string{"--id", "dup", "--netns", ns2}, "already attached"},
		{"bad id", "pod add", []string{"--id", "a/b", "--netns", ns2}, "pod id"},
		{"bad ifname", "pod add", []string{"--id", "x2", "--netns", ns2, "--ifname", "way-too-long-name0"}, "longer than 15"},
		{"missing flags", "pod add", []string{"--id", "x3"}, "needs --id and --netns"},
		{"unknown pod", "pod del", []string{"--id", "nope"}, "not found"},
		{"bad output", "pods", []string{"-o", "yaml"}, "want table or json"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := d.ctl(tt.cmd, tt.args...)
			if err == nil {
				t.Fatalf("tapswitchctl %s %v succeeded, want error:\n%s", tt.cmd, tt.args, out)
			}
			if !strings.Contains(out, tt.want) {
				t.Errorf("tapswitchctl %s %v = %q, want it to mention %q", tt.cmd, tt.args, out, tt.want)
			}
		})
	}
	// Nothing half-made: only the first pod exists, and ns2 has no TAP.
	pods, _ := d.client.Pods(context.Background())
	if len(pods) != 1 {
		t.Errorf("after failed adds, %d pods, want 1: %v", len(pods), pods)
	}
	if ok, _ := tap.Exists(ns2, "eth0"); ok {
		t.Errorf("a failed add left eth0 in %s", ns2)
	}

	t.Run("daemon not running", func(t *testing.T) {
		out, err := runCtl("pods", "--socket", filepath.Join(t.TempDir(), "none.sock"))
		if err == nil || !strings.Contains(out, "is tapswitchd running") {
			t.Errorf("tapswitchctl without daemon = %q, %v; want a not-running error", out, err)
		}
	})
}

func TestCIDRExhausted(t *testing.T) {
	testutil.RequireRoot(t)
	// A /29 has 8 addresses: network, gateway, 4 pods, host port, broadcast.
	d := startDaemon(t, "", "--pod-cidr", "10.251.7.0/29")
	for i := range 4 {
		addPod(t, d, fmt.Sprintf("ex-%d", i))
	}
	ns := testutil.NewNetNS(t)
	_, err := d.client.AddPod(context.Background(), api.PodRequest{ID: "ex-4", NetNS: ns})
	var ae *api.APIError
	if !errors.As(err, &ae) || !strings.Contains(ae.Message, "10.251.7.0/29: no free address (4 of 4 in use)") {
		t.Fatalf("fifth AddPod = %v, want exhausted error naming the cidr", err)
	}
	if ok, _ := tap.Exists(ns, "eth0"); ok {
		t.Errorf("the refused add left eth0 in %s", ns)
	}
}

func TestRestartReattachesPods(t *testing.T) {
	testutil.RequireRoot(t)
	state := filepath.Join(t.TempDir(), "state")
	d := startDaemon(t, state)
	a, b := addPod(t, d, "re-a"), addPod(t, d, "re-b")
	mustPing(t, a, b.addr())
	d.stop(t)

	d2 := startDaemonIn(t, d.node, state)
	pods, err := d2.client.Pods(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(pods) != 2 || pods[0].PortID == 0 || pods[1].PortID == 0 {
		t.Fatalf("after restart Pods() = %+v, want both pods attached", pods)
	}
	if pods[0].MAC != a.MAC || pods[0].IPs[0] != a.IPs[0] {
		t.Errorf("after restart pod a = %v %v, want %v %v", pods[0].MAC, pods[0].IPs, a.MAC, a.IPs)
	}
	mustPing(t, a, b.addr())
	mustPing(t, b, a.addr())
}

func TestPodsJSON(t *testing.T) {
	testutil.RequireRoot(t)
	d := startDaemon(t, "")
	a := addPod(t, d, "json-a")
	out, err := d.ctl("pods", "-o", "json")
	if err != nil {
		t.Fatalf("pods -o json: %v\n%s", err, out)
	}
	var pods []api.Pod
	if err := json.Unmarshal([]byte(out), &pods); err != nil {
		t.Fatalf("pods -o json is not JSON: %v\n%s", err, out)
	}
	if len(pods) != 1 || pods[0].ID != a.ID || pods[0].MAC != a.MAC || pods[0].NetNS != a.ns {
		t.Errorf("pods -o json = %+v, want %+v", pods, a.Pod)
	}
	for _, cmd := range []string{"pods", "fdb", "stats"} {
		if out, err := d.ctl(cmd); err != nil {
			t.Errorf("%s: %v\n%s", cmd, err, out)
		}
	}
}

func TestDualStackPing(t *testing.T) {
	testutil.RequireRoot(t)
	d := startDaemon(t, "", "--pod-cidr", "10.251.8.0/24", "--pod-cidr6", "fd00:7a5::/64")
	a, b := addPod(t, d, "ds-a"), addPod(t, d, "ds-b")
	if len(b.IPs) != 2 || !b.IPs[1].Addr().Is6() || len(b.Gateways) != 2 {
		t.Fatalf("pod b = %v via %v, want an IPv4 and an IPv6 address and gateway", b.IPs, b.Gateways)
	}
	mustPing(t, a, b.addr())
	mustPing(t, a, b.IPs[1].Addr()) // neighbour discovery is flooded between pods
	mustPing(t, b, a.IPs[1].Addr())
}

// TestPodKubernetesNames attaches a pod through the CLI with its
// Kubernetes namespace and name, as the CNI plugin will pass them: they
// are kept across a restart and shown by tapswitchctl pods.
func TestPodKubernetesNames(t *testing.T) {
	testutil.RequireRoot(t)
	state := filepath.Join(t.TempDir(), "state")
	d := startDaemon(t, state)
	ns := testutil.NewNetNS(t)
	if out, err := d.ctl("pod add", "--id", "k8s-a", "--netns", ns, "--pod-namespace", "kube-system", "--pod-name", "coredns-1"); err != nil {
		t.Fatalf("pod add: %v\n%s", err, out)
	}
	if out, err := d.ctl("pod add", "--id", "k8s-b", "--netns", testutil.NewNetNS(t), "--pod-namespace", "bad/ns", "--pod-name", "x"); err == nil || !strings.Contains(out, `pod namespace "bad/ns"`) {
		t.Errorf("pod add with a bad namespace = %v, want an error naming it\n%s", err, out)
	}
	d.stop(t)
	d2 := startDaemonIn(t, d.node, state)
	out, err := d2.ctl("pods")
	if err != nil || !strings.Contains(out, "kube-system/coredns-1") {
		t.Errorf("pods after a restart = %v, want kube-system/coredns-1 shown\n%s", err, out)
	}
}
