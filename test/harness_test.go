// Package test holds tapswitch's end-to-end tests: the real binaries, real
// network namespaces, real TAP devices and traffic between them. They need
// root; without it they skip, except in CI (CI set), where they fail.
package test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"tapswitch/daemon/api"
	"tapswitch/internal/netnsutil"
	"tapswitch/internal/pinger"
	"tapswitch/internal/testutil"
)

// binDir holds the binaries built once for all tests.
var binDir string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	// Go decides once per process, on the first wildcard listen (or any
	// TCP listen, while MPTCP is on by default), whether IPv6 sockets
	// take IPv4 too, by binding one to ::ffff:127.0.0.1. In a pod's
	// namespace, whose eth0 has an address and whose loopback is down,
	// that bind fails, and every later wildcard "tcp" or "udp" socket of
	// this process, in any namespace, would be IPv4 only. Probe here, in
	// the root namespace, before any test enters another.
	ln, err := net.Listen("tcp", ":0")
	if err != nil {
		fmt.Fprintln(os.Stderr, "probe the kernel's IPv6 support:", err)
		return 1
	}
	ln.Close()
	dir, err := os.MkdirTemp("", "tapswitch-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	// Other users run the binaries too (the socket permission test).
	if err := os.Chmod(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// The daemon runs under the race detector: these tests are its only
	// run with real devices, traffic and API calls at once.
	cmd := exec.Command("go", "build", "-race", "-o", dir+"/", "tapswitch/cmd/tapswitchd", "tapswitch/cmd/tapswitchctl", "tapswitch/cmd/tapswitch")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build binaries:", err)
		return 1
	}
	binDir = dir
	// A program built with -race sleeps a second before it exits, to let
	// reports finish; every tapswitchctl and plugin run would pay it.
	if os.Getenv("GORACE") == "" {
		os.Setenv("GORACE", "atexit_sleep_ms=0")
	}
	code := m.Run()
	if left := leftoverNetNS(); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: namespaces left behind: %v\n", left)
		return 1
	}
	return code
}

// cniToolsDir holds cnitool and the reference plugins (portmap, tuning,
// bandwidth, loopback) at the versions `make cni-tools` pins.
const cniToolsDir = "../bin/cni-tools"

// cniTools returns the absolute path of cniToolsDir after checking it holds
// the named tools. Without them the test skips, except in CI, where it
// fails: `make test` installs them first.
func cniTools(t *testing.T, names ...string) string {
	t.Helper()
	dir, err := filepath.Abs(cniToolsDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if _, err := os.Stat(filepath.Join(dir, n)); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is missing (make cni-tools installs it): %v", n, err)
			}
			t.Skipf("%s is missing; run make cni-tools", n)
		}
	}
	return dir
}

// leftoverNetNS lists the namespaces this test process created and did not
// remove (testutil.NewNetNS names them tsw-test-PID-...).
func leftoverNetNS() []string {
	return namespacesWithPrefix(fmt.Sprintf("tsw-test-%d-", os.Getpid()))
}

// namespacesWithPrefix lists the named network namespaces whose name
// starts with prefix.
func namespacesWithPrefix(prefix string) []string {
	entries, _ := os.ReadDir("/var/run/netns")
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	return out
}

// daemonProc is a tapswitchd started by a test.
type daemonProc struct {
	node     string // path of the netns that plays the node, where it runs
	socket   string
	stateDir string
	client   *api.Client
	cmd      *exec.Cmd
	log      *syncBuffer
	exited   chan error
}

// startDaemon runs tapswitchd in a new netns that plays the node, with a
// private socket and state folder, and stops it when the test ends. extra
// adds flags.
func startDaemon(t *testing.T, stateDir string, extra ...string) *daemonProc {
	t.Helper()
	node := testutil.NewNetNS(t)
	// A node's loopback is up: the daemon's metrics, port forwards and
	// DNS upstreams in tests live there.
	if out, err := exec.Command("ip", "-n", filepath.Base(node), "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up in %s: %v: %s", node, err, out)
	}
	return startDaemonIn(t, node, stateDir, extra...)
}

// startDaemonIn runs tapswitchd inside the netns node (a path under
// /var/run/netns), as startDaemon does. The daemon's host port (tsw0),
// its egress sockets and its loopback are the node's, never the machine's.
// Unless extra says otherwise, it forwards DNS nowhere (--dns none).
func startDaemonIn(t *testing.T, node, stateDir string, extra ...string) *daemonProc {
	t.Helper()
	if stateDir == "" {
		stateDir = filepath.Join(t.TempDir(), "state")
	}
	sock := filepath.Join(t.TempDir(), "tapswitchd.sock")
	args := []string{"netns", "exec", filepath.Base(node), filepath.Join(binDir, "tapswitchd"),
		"--socket", sock, "--state-dir", stateDir, "--log-level", "debug"}
	if !slices.ContainsFunc(extra, func(f string) bool { return strings.HasPrefix(f, "--dns") }) {
		args = append(args, "--dns", "none")
	}
	args = append(args, extra...)
	d := &daemonProc{node: node, socket: sock, stateDir: stateDir, client: api.NewClient(sock), log: new(syncBuffer), exited: make(chan error, 1)}
	// ip netns exec enters the namespace and execs the daemon, so the
	// process the test signals is tapswitchd itself.
	d.cmd = exec.Command("ip", args...)
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("start tapswitchd: %v", err)
	}
	go func() { d.exited <- d.cmd.Wait() }()
	t.Cleanup(func() {
		d.stop(t)
		if t.Failed() {
			t.Logf("tapswitchd log:\n%s", d.log)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := d.client.Pods(context.Background()); err == nil {
			return d
		}
		select {
		case err := <-d.exited:
			d.exited <- err
			t.Fatalf("tapswitchd exited: %v\n%s", err, d.log)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("tapswitchd did not answer within 10s\n%s", d.log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// nodeDial connects from inside the daemon's node namespace, as a process
// on the node would.
func (d *daemonProc) nodeDial(ctx context.Context, network, address string) (net.Conn, error) {
	var c net.Conn
	err := netnsutil.Do(d.node, func() (err error) {
		c, err = (&net.Dialer{}).DialContext(ctx, network, address)
		return err
	})
	return c, err
}

// nodeHTTPClient is an HTTP client on the node, for the daemon's metrics
// address and port forwards on the node's loopback.
func (d *daemonProc) nodeHTTPClient() *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: d.nodeDial, DisableKeepAlives: true}}
}

// stop sends SIGTERM and waits for a clean exit.
func (d *daemonProc) stop(t *testing.T) {
	if d.cmd.ProcessState != nil {
		return
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-d.exited:
		d.exited <- err
		if err != nil {
			t.Errorf("tapswitchd exited with %v after SIGTERM", err)
		}
	case <-time.After(15 * time.Second):
		d.cmd.Process.Kill()
		t.Errorf("tapswitchd did not stop within 15s of SIGTERM")
		<-d.exited
	}
}

// ctl runs "tapswitchctl COMMAND --socket SOCK ARGS..." against the daemon
// and returns its combined output and error.
func (d *daemonProc) ctl(command string, args ...string) (string, error) {
	full := append(strings.Fields(command), "--socket", d.socket)
	return runCtl(append(full, args...)...)
}

func runCtl(args ...string) (string, error) {
	out, err := exec.Command(filepath.Join(binDir, "tapswitchctl"), args...).CombinedOutput()
	return string(out), err
}

// pod is a test pod: a fresh netns attached to the daemon.
type pod struct {
	api.Pod
	ns string
}

func (p pod) addr() netip.Addr { return p.IPs[0].Addr() }

// addPod creates a uniquely named netns and attaches it.
func addPod(t *testing.T, d *daemonProc, id string) pod {
	t.Helper()
	ns := testutil.NewNetNS(t)
	got, err := d.client.AddPod(context.Background(), api.PodRequest{ID: id, NetNS: ns})
	if err != nil {
		t.Fatalf("AddPod(%s): %v", id, err)
	}
	return pod{Pod: got, ns: ns}
}

// mustPing pings dst from src's netns until replies come back, allowing
// the first request to wait for ARP.
func mustPing(t *testing.T, src pod, dst netip.Addr) {
	t.Helper()
	res, err := pinger.Ping(src.ns, dst, 3, 2*time.Second)
	if err != nil {
		t.Fatalf("ping %s -> %s: %v", src.ID, dst, err)
	}
	if res.Received == 0 {
		t.Fatalf("ping %s -> %s: %d sent, none answered", src.ID, dst, res.Sent)
	}
}

// ping pings dst from src and reports an error if nothing came back.
func ping(src, dst pod) error {
	res, err := pinger.Ping(src.ns, dst.addr(), 3, 2*time.Second)
	if err != nil {
		return fmt.Errorf("ping %s -> %s: %w", src.ID, dst.ID, err)
	}
	if res.Received == 0 {
		return fmt.Errorf("ping %s -> %s (%s): %d sent, none answered", src.ID, dst.ID, dst.addr(), res.Sent)
	}
	return nil
}

// pingOnce sends one echo request and reports whether it was answered.
func pingOnce(src, dst pod) (bool, error) {
	res, err := pinger.Ping(src.ns, dst.addr(), 1, 500*time.Millisecond)
	return res.Received > 0, err
}

// syncBuffer is a bytes.Buffer the daemon's output can be written to while
// a test reads it.
type syncBuffer struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
