package main

import (
	"context"
	"debug/buildinfo"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
	types100 "github.com/containernetworking/cni/pkg/types/100"

	"tapswitch/daemon/api"
)

// The CNI figures: opts.cniPods pods per variant, each a fresh network
// namespace, attached one after another with libcni's AddNetworkList and
// then deleted one after another with DelNetworkList, as a container
// runtime does, through the real plugin binaries:
//
//   - kernel: the reference bridge plugin with host-local IPAM, its bridge
//     in the kernel set-up's node namespace;
//   - tapswitch: bin/tapswitch against the bench's tapswitchd.
//
// Each plugin process runs inside its variant's node namespace (nodeExec),
// never in the machine's root namespace: the bridge plugin creates a
// bridge and sets ip_forward where it runs. What is timed is each plugin
// process, from its start to its exit.

// cniTools are the reference plugins the kernel variant runs, from
// -cni-tools (make cni-tools installs them).
var cniTools = []string{"bridge", "host-local"}

// The kernel variant's bridge and pod subnet: a bridge of its own beside
// the set-up's br0, and a subnet no other set-up uses.
const cniBridge = "cni0"

var cniKernelSubnet = netip.MustParsePrefix("10.253.8.0/24")

// cniPodsMax is the most pods -cni-pods allows: both variants' subnets are
// /24s, and the tapswitch one also holds the gateway, the host port and
// the bench's two pods.
const cniPodsMax = 250

// cniTimeout bounds one plugin call. A call is not cut short by Ctrl-C: it
// takes milliseconds, and a plugin killed halfway would leave half an
// attachment for the clean-up to find.
const cniTimeout = time.Minute

// cniLatencies are one variant's ADD and DEL times.
type cniLatencies struct {
	Add latencies `json:"add"`
	Del latencies `json:"del"`
}

// figures returns the cni_* figures of the table and of the variant's JSON
// object.
func (l cniLatencies) figures() map[string]float64 {
	return map[string]float64{
		"cni_add_p50_ms": l.Add.P50Ms, "cni_add_p99_ms": l.Add.P99Ms, "cni_add_max_ms": l.Add.MaxMs,
		"cni_del_p50_ms": l.Del.P50Ms, "cni_del_p99_ms": l.Del.P99Ms, "cni_del_max_ms": l.Del.MaxMs,
	}
}

// cniRun is meta.cni: how the cni_* figures were taken, and each
// variant's summaries.
type cniRun struct {
	Pods int `json:"pods"`
	// Plugins maps each reference plugin to the module and version it
	// was built from.
	Plugins  map[string]string       `json:"plugins"`
	Variants map[string]cniLatencies `json:"variants"`
}

// cniVariant is one variant's network: the conflist, the libcni handle
// that runs it, and the pods it attaches.
type cniVariant struct {
	name  string // kernel or tapswitch
	short string // k or t, in namespace names and container IDs
	exec  *nodeExec
	cni   *libcni.CNIConfig
	list  *libcni.NetworkConfigList
	// check tells, after every DEL, what the network still holds; an
	// error means a DEL did not release what its ADD took.
	check func(ctx context.Context) error
	pods  []*libcni.RuntimeConf
	// attached are the pods that may be attached: ADD started and no DEL
	// succeeded yet. The clean-up deletes them.
	attached []*libcni.RuntimeConf
}

// checkCNITools checks, before anything is set up, that the plugins the
// CNI figures run are there.
func checkCNITools(opts options) error {
	if err := checkReferencePlugins(opts.cniTools); err != nil {
		return err
	}
	if err := checkExecutable(filepath.Join(opts.binDir, "tapswitch")); err != nil {
		return fmt.Errorf("CNI plugin tapswitch: %w (make build first?)", err)
	}
	return nil
}

// checkReferencePlugins checks that dir holds the reference plugins.
func checkReferencePlugins(dir string) error {
	for _, tool := range cniTools {
		if err := checkExecutable(filepath.Join(dir, tool)); err != nil {
			return fmt.Errorf("CNI reference plugin %s: %w (make cni-tools installs it, or pass -cni-tools DIR)", tool, err)
		}
	}
	return nil
}

func checkExecutable(file string) error {
	st, err := os.Stat(file)
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file", file)
	}
	return nil
}

// pluginVersions returns the module and version each reference plugin was
// built from, for meta.cni.plugins.
func pluginVersions(dir string) map[string]string {
	m := make(map[string]string)
	for _, tool := range cniTools {
		bi, err := buildinfo.ReadFile(filepath.Join(dir, tool))
		if err != nil {
			m[tool] = "unknown: " + err.Error()
			continue
		}
		m[tool] = bi.Main.Path + "@" + bi.Main.Version
	}
	return m
}

// measureCNI takes the CNI figures: the kernel variant's bridge goes into
// the namespace kernelNode, the tapswitch plugin talks to the tapswitchd
// at socket, which runs in tswNode. Everything it makes is registered on
// cl; the pods are deleted by the measurement itself, or by cl when it
// stops early.
func measureCNI(ctx context.Context, w io.Writer, cl *cleanups, opts options, kernelNode, tswNode, socket string) (cniRun, error) {
	run := cniRun{Pods: opts.cniPods, Plugins: pluginVersions(opts.cniTools), Variants: make(map[string]cniLatencies)}
	dir, err := newTempDir(cl)
	if err != nil {
		return run, err
	}
	kernel, err := newKernelCNI(ctx, cl, w, opts, kernelNode, dir)
	if err != nil {
		return run, err
	}
	tsw, err := newTapswitchCNI(ctx, cl, w, opts, tswNode, socket, dir)
	if err != nil {
		return run, err
	}
	variants := []*cniVariant{kernel, tsw}

	// Every pod namespace of both variants exists before the first call,
	// so both are measured with the same number of namespaces around, and
	// none is torn down (work the kernel defers) while the other measures.
	progress(w, "creating %d pod namespaces per variant for the CNI figures (%s{k,t}-cni*)", opts.cniPods, nsPrefix())
	for _, v := range variants {
		for i := range opts.cniPods {
			_, path, err := addNetNS(ctx, cl, fmt.Sprintf("%s-cni%03d", v.short, i))
			if err != nil {
				return run, err
			}
			v.pods = append(v.pods, podRuntimeConf(v.short, i, path))
		}
		cl.add("CNI pods of "+v.name, v.deleteAttached)
	}
	for _, v := range variants {
		lat, err := v.measure(ctx, w)
		if err != nil {
			return run, fmt.Errorf("CNI, %s: %w", v.name, err)
		}
		run.Variants[v.name] = lat
	}
	return run, nil
}

// podRuntimeConf is what a runtime passes for pod i of a variant: a
// container ID, the pod's netns, eth0, and the CNI_ARGS kubelet's runtimes
// send.
func podRuntimeConf(short string, i int, netnsPath string) *libcni.RuntimeConf {
	id := fmt.Sprintf("%s%s-cni%03d", nsPrefix(), short, i)
	return &libcni.RuntimeConf{
		ContainerID: id,
		NetNS:       netnsPath,
		IfName:      "eth0",
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", "bench"},
			{"K8S_POD_NAME", fmt.Sprintf("pod-%s-%03d", short, i)},
			{"K8S_POD_INFRA_CONTAINER_ID", id},
		},
	}
}

// kernelConflist is the kernel variant's network: the reference bridge
// plugin with host-local IPAM, as a Kubernetes node with the bridge CNI
// has it, without ipMasq (the bench adds no firewall rule for it).
func kernelConflist(name, dataDir string, mtu int) ([]byte, error) {
	return json.Marshal(map[string]any{
		"cniVersion": "1.0.0",
		"name":       name,
		"plugins": []any{map[string]any{
			"type":      "bridge",
			"bridge":    cniBridge,
			"isGateway": true,
			"ipMasq":    false,
			"mtu":       mtu,
			"ipam": map[string]any{
				"type":    "host-local",
				"ranges":  [][]map[string]string{{{"subnet": cniKernelSubnet.String()}}},
				"routes":  []map[string]string{{"dst": "0.0.0.0/0"}},
				"dataDir": dataDir,
			},
		}},
	})
}

// tapswitchConflist is the tapswitch variant's network: the plugin and the
// daemon's socket; the daemon hands out the addresses.
func tapswitchConflist(name, socket string) ([]byte, error) {
	return json.Marshal(map[string]any{
		"cniVersion": "1.0.0",
		"name":       name,
		"plugins":    []any{map[string]any{"type": "tapswitch", "socket": socket}},
	})
}

// newKernelCNI prepares the kernel variant: host-local's data and libcni's
// cache under dir, and the plugins run in node.
func newKernelCNI(ctx context.Context, cl *cleanups, w io.Writer, opts options, node, dir string) (*cniVariant, error) {
	const name = "bench-kernel"
	dataDir := filepath.Join(dir, "host-local")
	conf, err := kernelConflist(name, dataDir, benchMTU)
	if err != nil {
		return nil, err
	}
	v, err := newCNIVariant(ctx, cl, w, "kernel", "k", node, opts.cniTools, filepath.Join(dir, "cache-kernel"), conf)
	if err != nil {
		return nil, err
	}
	v.check = func(context.Context) error { return hostLocalEmpty(filepath.Join(dataDir, name)) }
	return v, nil
}

// newTapswitchCNI prepares the tapswitch variant: bin/tapswitch against the
// daemon at socket, run in node, with libcni's cache under dir.
func newTapswitchCNI(ctx context.Context, cl *cleanups, w io.Writer, opts options, node, socket, dir string) (*cniVariant, error) {
	conf, err := tapswitchConflist("bench-tapswitch", socket)
	if err != nil {
		return nil, err
	}
	v, err := newCNIVariant(ctx, cl, w, "tapswitch", "t", node, opts.binDir, filepath.Join(dir, "cache-tapswitch"), conf)
	if err != nil {
		return nil, err
	}
	c := api.NewClient(socket)
	v.check = func(ctx context.Context) error { return daemonHasNone(ctx, c, nsPrefix()+"t-cni") }
	return v, nil
}

// newCNIVariant starts the runner in node that the variant's plugins are
// started from, checks that what it starts is born in node, and parses the
// conflist; libcni finds the plugins in pluginDir.
func newCNIVariant(ctx context.Context, cl *cleanups, w io.Writer, name, short, node, pluginDir, cacheDir string, conf []byte) (*cniVariant, error) {
	pluginDir, err := filepath.Abs(pluginDir)
	if err != nil {
		return nil, err
	}
	list, err := libcni.ConfListFromBytes(conf)
	if err != nil {
		return nil, fmt.Errorf("%s conflist %s: %w", name, conf, err)
	}
	e, err := startNodeExec(node, w)
	if err != nil {
		return nil, err
	}
	cl.add("plugin runner in "+node, e.stop)
	if err := e.checkNetNS(ctx); err != nil {
		return nil, err
	}
	return &cniVariant{
		name: name, short: short, exec: e, list: list,
		cni: libcni.NewCNIConfigWithCacheDir([]string{pluginDir}, cacheDir, e),
	}, nil
}

// measure attaches v's pods one after another, then deletes them one
// after another in the same order, timing each plugin process, and checks
// that the network holds nothing afterwards.
func (v *cniVariant) measure(ctx context.Context, w io.Writer) (cniLatencies, error) {
	var lat cniLatencies
	adds := make([]time.Duration, 0, len(v.pods))
	for i, rt := range v.pods {
		if err := ctx.Err(); err != nil {
			return lat, err
		}
		v.attached = append(v.attached, rt)
		took, err := v.call(ctx, rt, "ADD", func(ctx context.Context) error {
			res, err := v.cni.AddNetworkList(ctx, v.list, rt)
			if err != nil {
				return err
			}
			return checkAddResult(res)
		})
		if err != nil {
			return lat, fmt.Errorf("ADD pod %d (%s): %w", i, rt.ContainerID, err)
		}
		adds = append(adds, took)
		if n := i + 1; n%20 == 0 || n == len(v.pods) {
			progress(w, "  %-9s CNI ADD %4d of %d pods, p50 so far %.1f ms", v.name, n, len(v.pods), millis(percentile(adds, 50)))
		}
	}
	dels := make([]time.Duration, 0, len(v.pods))
	for i, rt := range v.pods {
		if err := ctx.Err(); err != nil {
			return lat, err
		}
		took, err := v.call(ctx, rt, "DEL", func(ctx context.Context) error {
			return v.cni.DelNetworkList(ctx, v.list, rt)
		})
		if err != nil {
			return lat, fmt.Errorf("DEL pod %d (%s): %w", i, rt.ContainerID, err)
		}
		dels = append(dels, took)
		v.attached = v.attached[1:]
		if n := i + 1; n%20 == 0 || n == len(v.pods) {
			progress(w, "  %-9s CNI DEL %4d of %d pods, p50 so far %.1f ms", v.name, n, len(v.pods), millis(percentile(dels, 50)))
		}
	}
	if err := v.check(ctx); err != nil {
		return lat, fmt.Errorf("after every DEL: %w", err)
	}
	lat = cniLatencies{Add: summarize(adds), Del: summarize(dels)}
	progress(w, "  %-9s CNI ADD p50 %.1f ms, p99 %.1f ms, max %.1f ms; DEL p50 %.1f ms, p99 %.1f ms, max %.1f ms (%d pods)",
		v.name, lat.Add.P50Ms, lat.Add.P99Ms, lat.Add.MaxMs, lat.Del.P50Ms, lat.Del.P99Ms, lat.Del.MaxMs, len(v.pods))
	return lat, nil
}

// call runs one libcni call and returns how long the one plugin process it
// started ran. The conflists have one plugin each, so one call is one
// process; anything else would time the wrong thing.
func (v *cniVariant) call(ctx context.Context, rt *libcni.RuntimeConf, command string, f func(context.Context) error) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cniTimeout)
	defer cancel()
	before := len(v.exec.runs)
	if err := f(ctx); err != nil {
		return 0, err
	}
	if n := len(v.exec.runs) - before; n != 1 {
		return 0, fmt.Errorf("%s ran %d plugin processes, want 1", command, n)
	}
	return v.exec.runs[len(v.exec.runs)-1], nil
}

// checkAddResult checks that an ADD answered with an address, so a plugin
// that did nothing is not timed as if it worked.
func checkAddResult(res any) error {
	r, ok := res.(*types100.Result)
	if !ok {
		return fmt.Errorf("result is a %T, want a cniVersion 1.0.0 result", res)
	}
	if len(r.IPs) == 0 || len(r.Interfaces) == 0 {
		return fmt.Errorf("result has %d IPs and %d interfaces, want at least one of each", len(r.IPs), len(r.Interfaces))
	}
	return nil
}

// deleteAttached deletes the pods that may still be attached when the
// measurement stopped early, newest first, as a runtime would tear them
// down. It runs during clean-up, after a Ctrl-C too.
func (v *cniVariant) deleteAttached() error {
	var errs []error
	for i := len(v.attached) - 1; i >= 0; i-- {
		rt := v.attached[i]
		ctx, cancel := context.WithTimeout(context.Background(), cniTimeout)
		err := v.cni.DelNetworkList(ctx, v.list, rt)
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("DEL %s: %w", rt.ContainerID, err))
		}
	}
	v.attached = nil
	return errors.Join(errs...)
}

// hostLocalEmpty checks that host-local's folder for the network holds no
// lease: one file named after each leased address.
func hostLocalEmpty(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("host-local data: %w", err)
	}
	var left []string
	for _, e := range entries {
		if _, err := netip.ParseAddr(e.Name()); err == nil {
			left = append(left, e.Name())
		}
	}
	if len(left) > 0 {
		return fmt.Errorf("host-local still leases %v", left)
	}
	return nil
}

// daemonHasNone checks that the daemon holds no pod whose container ID
// starts with prefix.
func daemonHasNone(ctx context.Context, c *api.Client, prefix string) error {
	pods, err := c.Pods(ctx)
	if err != nil {
		return fmt.Errorf("tapswitchd pods: %w", err)
	}
	var left []string
	for _, p := range pods {
		if strings.HasPrefix(p.ContainerID, prefix) {
			left = append(left, p.ID)
		}
	}
	if len(left) > 0 {
		return fmt.Errorf("tapswitchd still has pods %v", left)
	}
	return nil
}

// formatPlugins lists the reference plugins and their versions.
func formatPlugins(m map[string]string) string {
	var parts []string
	for _, tool := range cniTools {
		parts = append(parts, tool+" "+m[tool])
	}
	return strings.Join(parts, ", ")
}

func millis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// runCNIOnly takes only the CNI figures (-only cni), on two bare node
// namespaces: one for the kernel variant's bridge, one running a
// tapswitchd of its own. It prints them and writes no file, since
// latest.json holds a whole run.
func runCNIOnly(ctx context.Context, opts options, w io.Writer) (err error) {
	if err := checkCNITools(opts); err != nil {
		return err
	}
	cl := new(cleanups)
	defer func() { err = finish(ctx, w, cl, err) }()

	progress(w, "setting up: a kernel node namespace and tapswitchd from %s in another (namespaces %s{k,t}-node)", opts.binDir, nsPrefix())
	kernelNode, _, err := addNodeNS(ctx, cl, "k-node")
	if err != nil {
		return err
	}
	dir, err := newTempDir(cl)
	if err != nil {
		return err
	}
	tswNode, _, err := addNodeNS(ctx, cl, "t-node")
	if err != nil {
		return err
	}
	d, err := startDaemon(ctx, cl, opts.binDir, dir, tswNode, tapswitchSubnet, benchMTU)
	if err != nil {
		return err
	}
	cni, err := measureCNI(ctx, w, cl, opts, kernelNode, tswNode, d.socket)
	if err != nil {
		return err
	}
	res := newResults(&variant{name: "kernel"}, &variant{name: "tapswitch"}, nil, env{}, opts, cni)
	fmt.Fprintf(w, "\nCNI ADD and DEL, %d pods per variant; kernel: %s\n", cni.Pods, formatPlugins(cni.Plugins))
	printRows(w, res, cniFigureList())
	fmt.Fprintln(w, "not written to", opts.out+": -only runs part of the bench")
	return nil
}
