package test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"tapswitch/cni"
	"tapswitch/daemon/api"
	"tapswitch/internal/netnsutil"
	"tapswitch/ipam"
	"tapswitch/tap"
)

// The CNI tests drive the plugin the way a container runtime does: through
// libcni, which finds the plugin by its "type", builds its stdin from the
// conflist and runtime arguments, caches results and chains plugins. Every
// plugin runs inside the namespace that plays the node (nodeExec), so
// portmap's iptables rules and the plugins' sysctls never touch the
// machine's root namespace.

// cniTimeout bounds one libcni call; an ADD runs a few processes.
const cniTimeout = 30 * time.Second

// k8sNamespace is the Kubernetes namespace the tests' pods claim to be in.
const k8sNamespace = "tsw-e2e"

// pluginCall is one plugin run that nodeExec made.
type pluginCall struct {
	plugin  string // base name of the binary: tapswitch, portmap, ...
	command string // CNI_COMMAND
	stdin   []byte
	stdout  []byte
}

// nodeExec is libcni's invoke.Exec for the tests: it runs each plugin
// inside the node's netns with `ip netns exec`, passing stdin and the
// environment as libcni's own RawExec does, and records every call.
type nodeExec struct {
	t    testing.TB
	node string // path of the node's netns

	mu    sync.Mutex // guards calls
	calls []pluginCall
}

var _ invoke.Exec = (*nodeExec)(nil)

func (e *nodeExec) ExecPlugin(ctx context.Context, pluginPath string, stdin []byte, environ []string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	c := exec.CommandContext(ctx, "ip", "netns", "exec", filepath.Base(e.node), pluginPath)
	c.Env = environ
	c.Stdin = bytes.NewReader(stdin)
	c.Stdout, c.Stderr = &stdout, &stderr
	err := c.Run()
	command := envValue(environ, "CNI_COMMAND")
	e.mu.Lock()
	e.calls = append(e.calls, pluginCall{
		plugin: filepath.Base(pluginPath), command: command,
		stdin: slices.Clone(stdin), stdout: slices.Clone(stdout.Bytes()),
	})
	e.mu.Unlock()
	if stderr.Len() > 0 {
		e.t.Logf("%s %s stderr: %s", filepath.Base(pluginPath), command, strings.TrimSpace(stderr.String()))
	}
	if err != nil {
		return nil, pluginError(err, stdout.Bytes(), stderr.Bytes())
	}
	return stdout.Bytes(), nil
}

// pluginError turns a failed run into the *types.Error the plugin printed,
// as libcni's RawExec does.
func pluginError(err error, stdout, stderr []byte) error {
	var e types.Error
	switch {
	case len(stdout) == 0:
		e.Msg = fmt.Sprintf("plugin failed with no error on stdout: %v; stderr: %q", err, stderr)
	case json.Unmarshal(stdout, &e) != nil:
		e.Msg = fmt.Sprintf("plugin failed (%v) and its stdout is not a CNI error: %q", err, stdout)
	}
	return &e
}

func (e *nodeExec) FindInPath(plugin string, paths []string) (string, error) {
	return invoke.FindInPath(plugin, paths)
}

func (e *nodeExec) Decode(b []byte) (version.PluginInfo, error) {
	return (&version.PluginDecoder{}).Decode(b)
}

// commands lists "PLUGIN COMMAND" for each call so far, in order.
func (e *nodeExec) commands() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]string, len(e.calls))
	for i, c := range e.calls {
		out[i] = c.plugin + " " + c.command
	}
	return out
}

// last returns the latest call of plugin with command.
func (e *nodeExec) last(t *testing.T, plugin, command string) pluginCall {
	t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	for i := len(e.calls) - 1; i >= 0; i-- {
		if c := e.calls[i]; c.plugin == plugin && c.command == command {
			return c
		}
	}
	t.Fatalf("no %s %s call among %d", plugin, command, len(e.calls))
	return pluginCall{}
}

func envValue(environ []string, key string) string {
	for _, kv := range slices.Backward(environ) {
		if v, ok := strings.CutPrefix(kv, key+"="); ok {
			return v
		}
	}
	return ""
}

// cniRig is a test's runtime: libcni with its own result cache, running
// plugins in the node of daemon d.
type cniRig struct {
	d    *daemonProc
	exec *nodeExec
	path []string
	cni  *libcni.CNIConfig
}

// newCNIRig makes a runtime for d whose plugin path is binDir (the
// tapswitch plugin) and then dirs.
func newCNIRig(t *testing.T, d *daemonProc, dirs ...string) *cniRig {
	ex := &nodeExec{t: t, node: d.node}
	path := append([]string{binDir}, dirs...)
	return &cniRig{d: d, exec: ex, path: path,
		cni: libcni.NewCNIConfigWithCacheDir(path, filepath.Join(t.TempDir(), "cni-cache"), ex)}
}

// freshCache returns a libcni with the rig's plugins but an empty cache: a
// runtime that lost its cache, or another runtime.
func (r *cniRig) freshCache(t *testing.T) *libcni.CNIConfig {
	return libcni.NewCNIConfigWithCacheDir(r.path, filepath.Join(t.TempDir(), "cni-cache"), r.exec)
}

func (r *cniRig) add(t *testing.T, l *libcni.NetworkConfigList, rt *libcni.RuntimeConf) (types.Result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cniTimeout)
	defer cancel()
	return r.cni.AddNetworkList(ctx, l, rt)
}

func (r *cniRig) mustAdd(t *testing.T, l *libcni.NetworkConfigList, rt *libcni.RuntimeConf) types.Result {
	t.Helper()
	res, err := r.add(t, l, rt)
	if err != nil {
		t.Fatalf("ADD %s of %s (cniVersion %s): %v", rt.ContainerID, l.Name, l.CNIVersion, err)
	}
	return res
}

func (r *cniRig) check(t *testing.T, l *libcni.NetworkConfigList, rt *libcni.RuntimeConf) error {
	ctx, cancel := context.WithTimeout(context.Background(), cniTimeout)
	defer cancel()
	return r.cni.CheckNetworkList(ctx, l, rt)
}

func (r *cniRig) del(t *testing.T, l *libcni.NetworkConfigList, rt *libcni.RuntimeConf) error {
	ctx, cancel := context.WithTimeout(context.Background(), cniTimeout)
	defer cancel()
	return r.cni.DelNetworkList(ctx, l, rt)
}

func (r *cniRig) mustDel(t *testing.T, l *libcni.NetworkConfigList, rt *libcni.RuntimeConf) {
	t.Helper()
	if err := r.del(t, l, rt); err != nil {
		t.Fatalf("DEL %s of %s (cniVersion %s): %v", rt.ContainerID, l.Name, l.CNIVersion, err)
	}
}

func (r *cniRig) status(t *testing.T, l *libcni.NetworkConfigList) error {
	ctx, cancel := context.WithTimeout(context.Background(), cniTimeout)
	defer cancel()
	return r.cni.GetStatusNetworkList(ctx, l)
}

// tapswitchConf is the tapswitch entry of a conflist, talking to socket,
// with the named capabilities enabled.
func tapswitchConf(socket string, capabilities ...string) map[string]any {
	conf := map[string]any{"type": "tapswitch", "socket": socket}
	if len(capabilities) > 0 {
		caps := map[string]bool{}
		for _, c := range capabilities {
			caps[c] = true
		}
		conf["capabilities"] = caps
	}
	return conf
}

// confList builds a conflist named name of the plugins, as a runtime loads
// it from /etc/cni/net.d.
func confList(t *testing.T, name, cniVersion string, plugins ...map[string]any) *libcni.NetworkConfigList {
	t.Helper()
	b, err := json.Marshal(map[string]any{"cniVersion": cniVersion, "name": name, "plugins": plugins})
	if err != nil {
		t.Fatal(err)
	}
	l, err := libcni.ConfListFromBytes(b)
	if err != nil {
		t.Fatalf("conflist %s: %v", b, err)
	}
	return l
}

// k8sRuntime is the runtime's part of an attachment of the Kubernetes pod
// k8sNamespace/podName, sandbox containerID, as kubelet's runtime passes
// it: interface eth0 and the four K8S_ arguments with IgnoreUnknown=1.
func k8sRuntime(containerID, netns, podName string) *libcni.RuntimeConf {
	var uid [16]byte
	rand.Read(uid[:])
	return &libcni.RuntimeConf{
		ContainerID: containerID,
		NetNS:       netns,
		IfName:      "eth0",
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", k8sNamespace},
			{"K8S_POD_NAME", podName},
			{"K8S_POD_INFRA_CONTAINER_ID", containerID},
			{"K8S_POD_UID", hex.EncodeToString(uid[:])},
		},
	}
}

// uniqueID returns prefix and a random suffix: a container ID no other
// test uses.
func uniqueID(prefix string) string {
	var rnd [6]byte
	rand.Read(rnd[:])
	return prefix + "-" + hex.EncodeToString(rnd[:])
}

// attachedPod returns the daemon's pod of the attachment rt, with its netns.
func attachedPod(t *testing.T, d *daemonProc, rt *libcni.RuntimeConf) pod {
	t.Helper()
	id := cni.PodID(rt.ContainerID, rt.IfName)
	p, err := d.client.Pod(context.Background(), id)
	if err != nil {
		t.Fatalf("daemon pod %s of container %s: %v", id, rt.ContainerID, err)
	}
	return pod{Pod: p, ns: rt.NetNS}
}

// requireCNIError fails t unless err is (or wraps) a CNI error with code,
// and returns it.
func requireCNIError(t *testing.T, err error, code uint) *types.Error {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want CNI error code %d", code)
	}
	var ce *types.Error
	if !errors.As(err, &ce) {
		t.Fatalf("error %v (%T) is not a CNI error, want code %d", err, err, code)
	}
	if ce.Code != code {
		t.Fatalf("CNI error code %d (%q, %q), want %d", ce.Code, ce.Msg, ce.Details, code)
	}
	return ce
}

// requireGone fails t if anything of the attachment rt is left: the
// daemon's pod, its lease, its port forwards, its interface in the netns
// (when the netns still exists).
func requireGone(t *testing.T, d *daemonProc, rt *libcni.RuntimeConf) {
	t.Helper()
	ctx := context.Background()
	id := cni.PodID(rt.ContainerID, rt.IfName)
	var ae *api.APIError
	if p, err := d.client.Pod(ctx, id); !errors.As(err, &ae) || ae.Status != http.StatusNotFound {
		t.Errorf("daemon pod %s = %+v, %v; want not found", id, p, err)
	}
	leases, err := d.client.Leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range leases {
		if l.Key.ContainerID == id {
			t.Errorf("lease %+v of pod %s is still held", l, id)
		}
	}
	fws, err := d.client.Forwards(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, fw := range fws {
		if fw.Pod == id {
			t.Errorf("forward %+v of pod %s is left", fw, id)
		}
	}
	if rt.NetNS == "" {
		return
	}
	if _, err := tap.Inspect(rt.NetNS, rt.IfName); err == nil {
		t.Errorf("%s is still in netns %s", rt.IfName, rt.NetNS)
	} else if !errors.Is(err, tap.ErrNotFound) && !netnsutil.Gone(err) {
		t.Errorf("inspect %s in %s: %v", rt.IfName, rt.NetNS, err)
	}
}

// daemonState returns the daemon's pods, leases and port forwards.
func daemonState(t *testing.T, d *daemonProc) ([]api.Pod, []ipam.Lease, []api.Forward) {
	t.Helper()
	ctx := context.Background()
	pods, err := d.client.Pods(ctx)
	if err != nil {
		t.Fatal(err)
	}
	leases, err := d.client.Leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fws, err := d.client.Forwards(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return pods, leases, fws
}

// requireNoLeases fails t unless the daemon holds no address lease and
// lists no pod.
func requireNoLeases(t *testing.T, d *daemonProc) {
	t.Helper()
	pods, leases, _ := daemonState(t, d)
	if len(pods) != 0 || len(leases) != 0 {
		t.Errorf("daemon has pods %+v and leases %+v, want none", pods, leases)
	}
}

// deleteNetNS deletes the named namespace at path, as a runtime does when
// the pod sandbox goes.
func deleteNetNS(t *testing.T, path string) {
	t.Helper()
	if out, err := exec.Command("ip", "netns", "delete", filepath.Base(path)).CombinedOutput(); err != nil {
		t.Fatalf("ip netns delete %s: %v: %s", path, err, out)
	}
}

// rootHasMAC reports whether a link in the machine's root namespace has
// mac: a pod's TAP that escaped there when its namespace went.
func rootHasMAC(t *testing.T, mac string) bool {
	t.Helper()
	out, err := exec.Command("ip", "-o", "link", "show").Output()
	if err != nil {
		t.Fatalf("ip link show: %v", err)
	}
	return strings.Contains(strings.ToLower(string(out)), strings.ToLower(mac))
}
