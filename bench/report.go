package main

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// results is bench/results/latest.json. Its top level is a fixed interface
// (DESIGN.md): variants.kernel and variants.tapswitch (route mode, the
// default) with the medians of each figure, ratios with tapswitch/kernel
// of each figure both have, and meta with what the numbers depend on.
// variants["tapswitch-proxy"] holds the proxyFigures of a daemon in proxy
// mode, and ratios their proxy/kernel under proxy_KEY.
type results struct {
	Variants map[string]map[string]float64 `json:"variants"`
	Ratios   map[string]float64            `json:"ratios"`
	// Targets are the goals the issues set for ratios, and whether this
	// run met them: figures of this machine, not a promise for another.
	Targets []targetResult `json:"targets"`
	Meta    resultsMeta    `json:"meta"`
}

// target is a goal for the ratio tapswitch/kernel of a figure: at least
// Bound, or at most Bound for a figure where lower is better.
type target struct {
	Figure string  `json:"figure"`
	Bound  float64 `json:"bound"`
	AtMost bool    `json:"at_most"`
	What   string  `json:"what"`
}

type targetResult struct {
	target
	Ratio float64 `json:"ratio"`
	Met   bool    `json:"met"`
}

// targets are route mode's goals (the routed gateway's issue): the way
// out of the pod network nearly as fast as the kernel's; and the
// overlay's (issue 12): pod → pod across nodes against flannel's.
var targets = []target{
	{Figure: "egress_tcp_gbps", Bound: 0.9, What: "TCP pod → world at least 0.9× the kernel"},
	{Figure: "node_tcp_gbps", Bound: 0.9, What: "TCP pod → node at least 0.9× the kernel"},
	{Figure: "egress_rr_us", Bound: 2, AtMost: true, What: "UDP request/response pod → world p50 at most 2× the kernel"},
	{Figure: "xnode_tcp1_gbps", Bound: 0.7, What: "TCP across nodes, 1 stream, at least 0.7× flannel-style"},
}

type resultsMeta struct {
	Date     string `json:"date"`
	Rounds   int    `json:"rounds"`
	Duration string `json:"duration"` // of each iperf3 test
	Pings    int    `json:"pings"`    // per round
	RR       int    `json:"rr"`       // request/response exchanges per round
	env
	// TapswitchPods is what tapswitchctl pod add answered, with the
	// offloads and queues fields when the daemon reports them.
	TapswitchPods []attachedPod `json:"tapswitch_pods"`
	// TapswitchProxyPods is the same for the tapswitch-proxy variant.
	TapswitchProxyPods []attachedPod `json:"tapswitch_proxy_pods,omitempty"`
	// LowerIsBetter lists the figures, and so ratios, where less wins.
	LowerIsBetter []string                        `json:"lower_is_better"`
	Notes         []string                        `json:"notes"`
	Samples       map[string]map[string][]float64 `json:"samples"` // variant → figure → rounds
	// CNI is how the cni_* figures were taken, with each variant's
	// ADD and DEL summaries.
	CNI cniRun `json:"cni"`
}

// proxyFigures are the figures the tapswitch-proxy variant takes, those of
// the way out; their ratios proxy/kernel are under proxyRatioPrefix+key.
var proxyFigures = []string{"egress_tcp_gbps", "egress_cpu_s_per_gb", "egress_rr_us", "node_tcp_gbps"}

const proxyRatioPrefix = "proxy_"

var resultNotes = []string{
	"every figure is the median of the rounds; ratios are tapswitch/kernel, and proxy_* ratios tapswitch-proxy/kernel, so for the lower_is_better figures a ratio under 1 favours tapswitch",
	"tapswitch is tapswitchd --egress route (the default); tapswitch-proxy is a second tapswitchd with --egress proxy, in a node namespace of its own with one pod and a world of its own, measured for the egress_* and node_* figures only",
	"udp64_kpps: 64-byte UDP payloads received per second by iperf3 -u -b 0 (receiver's count: sent less lost)",
	"rtt_us: ICMP echo round trip, one at a time; rr_us: 32-byte UDP request and echo, one at a time; both p50",
	"cpu_s_per_gb: busy CPU time of the whole machine (/proc/stat) during the two TCP tests, per GB the receiver got, for both variants; the kernel bridge has no process of its own, so its work is only in this figure",
	"switch_cpu_s_per_gb: tapswitchd's utime+stime (/proc/PID/stat) over the same tests; it includes the receiving pod's kernel stack, which runs inside the daemon's TAP writes",
	"egress_*: a pod to a server in a world namespace behind a veth from the node namespace, which has no route back to the pods; kernel: another node namespace with a bridge holding the pods' gateway address, ip_forward and iptables MASQUERADE out of the world veth (all inside that namespace); tapswitch (route mode): tapswitchd runs in its node namespace, its switch routes the pod's packets with the pod's own address through the host port tsw0 into the node's kernel, which forwards them and masquerades them by the daemon's nftables table inet tapswitch (the daemon sets forwarding and the table inside that namespace); tapswitch-proxy: its gateway ends the pod's TCP and UDP and a node socket carries them on, the node forwards nothing",
	"egress_tcp_gbps and node_tcp_gbps: iperf3, 1 stream; egress_cpu_s_per_gb: the machine's busy CPU during the egress TCP test per GB received; egress_rr_us: 32-byte UDP request and echo pod → world, one at a time, p50",
	"node_tcp_gbps: a pod to a server in the node namespace on the node's address in the pod network: kernel, the bridge's address (br0); tapswitch and tapswitch-proxy, the host port tsw0, the last usable address of the pod cidr",
	"xnode_*: pod → pod across two simulated nodes (namespaces) over VXLAN as flannel's vxlan backend carries it (VNI 1, UDP 8472), each node with an underlay veth ul0 to a bridge (198.19.20.0/24), pod MTU 1450 (1500 less VXLAN's 50); kernel: two flannel-style nodes (kernel VXLAN flannel.1, bridge cni0, veth pods, neighbour, FDB entry and onlink route per peer, as flanneld programs them), veth offloads at their defaults; tapswitch: two tapswitchd with --peers (the nodes' tapswitchctl node -o json entries), --node-name, --underlay, --cluster-cidr, a pod each; xnode_tcp1_gbps and xnode_tcp4_gbps: iperf3 with 1 and 4 streams, xnode_rr_us: 32-byte UDP request and echo, one at a time, p50",
	"tapswitch-flannel (mixed_* ratios, mixed/kernel pair): a flannel-style node's pod (client) → a tapswitch node's pod; the flannel-style node's underlay veth has ethtool -K ul0 tx off (checksums summed in software, as a NIC's arrive): with a veth's offloads on, flannel.1 sends VXLAN GSO packets larger than a frame, which tapswitch's VXLAN port cannot take yet (rx_too_big); the kernel pair keeps the defaults, see meta.offloads",
	"cni_*_ms: CNI ADD and DEL latency, p50, p99 and max of meta.cni.pods calls, not medians of rounds: after the rounds, that many pods per variant, each a fresh netns made beforehand, attached one after another with libcni AddNetworkList and then deleted one after another with DelNetworkList (conflist cniVersion 1.0.0, one plugin); each time is one plugin process from start to exit, started inside the variant's node namespace (no ip netns exec in between); kernel: the reference bridge plugin (isGateway, no ipMasq) with host-local IPAM, versions in meta.cni.plugins; tapswitch: bin/tapswitch asking the bench's tapswitchd",
}

// newResults gathers the medians, the CNI figures, the ratios and meta of
// a finished run. proxy, the tapswitch-proxy variant, may be nil.
func newResults(kernel, tsw, proxy *variant, e env, opts options, cni cniRun) results {
	res := results{
		Variants: map[string]map[string]float64{kernel.name: kernel.medians(), tsw.name: tsw.medians()},
		Ratios:   make(map[string]float64),
		Meta: resultsMeta{
			Date:          time.Now().UTC().Format(time.RFC3339),
			Rounds:        opts.rounds,
			Duration:      opts.duration.String(),
			Pings:         opts.pings,
			RR:            opts.rrs,
			env:           e,
			TapswitchPods: tsw.attached,
			Notes:         resultNotes,
			Samples:       map[string]map[string][]float64{kernel.name: kernel.samples, tsw.name: tsw.samples},
			CNI:           cni,
		},
	}
	if proxy != nil {
		res.Variants[proxy.name] = proxy.medians()
		res.Meta.Samples[proxy.name] = proxy.samples
		res.Meta.TapswitchProxyPods = proxy.attached
	}
	for name, lat := range cni.Variants {
		maps.Copy(res.Variants[name], lat.figures())
	}
	k, t := res.Variants[kernel.name], res.Variants[tsw.name]
	p := res.Variants[proxyVariant] // nil without a proxy variant
	for _, f := range figures {
		isProxy := slices.Contains(proxyFigures, f.key)
		if f.lowerBetter {
			res.Meta.LowerIsBetter = append(res.Meta.LowerIsBetter, f.key)
			if isProxy {
				res.Meta.LowerIsBetter = append(res.Meta.LowerIsBetter, proxyRatioPrefix+f.key)
			}
		}
		kv, ok1 := k[f.key]
		if tv, ok2 := t[f.key]; ok1 && ok2 && kv > 0 {
			res.Ratios[f.key] = tv / kv
		}
		if pv, ok3 := p[f.key]; isProxy && ok1 && ok3 && kv > 0 {
			res.Ratios[proxyRatioPrefix+f.key] = pv / kv
		}
	}
	for _, tg := range targets {
		r, ok := res.Ratios[tg.Figure]
		if !ok {
			continue
		}
		res.Targets = append(res.Targets, targetResult{target: tg, Ratio: r, Met: r >= tg.Bound && !tg.AtMost || r <= tg.Bound && tg.AtMost})
	}
	return res
}

// addMixed adds the tapswitch-flannel variant's medians and samples to
// res, and its ratios to the kernel pair under mixedRatioPrefix+key.
func addMixed(res *results, mixed *variant) {
	m := mixed.medians()
	res.Variants[mixed.name] = m
	res.Meta.Samples[mixed.name] = mixed.samples
	k := res.Variants["kernel"]
	for _, key := range xnodeFigures {
		if kv, mv := k[key], m[key]; kv > 0 && mv > 0 {
			res.Ratios[mixedRatioPrefix+key] = mv / kv
		}
		if slices.Contains(res.Meta.LowerIsBetter, key) {
			res.Meta.LowerIsBetter = append(res.Meta.LowerIsBetter, mixedRatioPrefix+key)
		}
	}
}

// printMixed prints the tapswitch-flannel variant's rows, when res has
// it: its value and the ratio to the kernel pair.
func printMixed(w io.Writer, res results) {
	m := res.Variants[mixedVariant]
	if m == nil {
		return
	}
	fmt.Fprintf(w, "\n%-32s %10s %17s %13s\n", "xnode, mixed pair", "kernel", mixedVariant, "mixed/kernel")
	for _, f := range figures {
		if !slices.Contains(xnodeFigures, f.key) {
			continue
		}
		fmt.Fprintf(w, "%-32s %10s %17s %13s\n", f.label, fmt.Sprintf(f.format, res.Variants["kernel"][f.key]),
			fmt.Sprintf(f.format, m[f.key]), fmt.Sprintf("%.2f", res.Ratios[mixedRatioPrefix+f.key]))
	}
	fmt.Fprintln(w, mixedVariant+": a flannel-style node's pod → a tapswitch node's pod; that node's underlay veth has ethtool -K ul0 tx off (tapswitch's VXLAN port cannot take VXLAN GSO packets yet)")
}

// printEnv prints what the numbers depend on, before the rounds start.
func printEnv(w io.Writer, e env, pods []attachedPod) {
	fmt.Fprintf(w, "\nkernel %s, %d CPUs (%s), MTU %d, %s\n", e.Kernel, e.CPUs, e.CPUModel, e.MTU, e.Iperf3)
	for _, name := range slices.Sorted(maps.Keys(e.Offloads)) {
		fmt.Fprintf(w, "offloads %-31s %s\n", name, formatOffloads(e.Offloads[name]))
	}
	for _, p := range pods {
		var parts []string
		if p.Offloads != nil {
			parts = append(parts, fmt.Sprintf("offloads %v", *p.Offloads))
		}
		if p.Queues != nil {
			parts = append(parts, fmt.Sprintf("queues %d", *p.Queues))
		}
		if len(parts) > 0 {
			fmt.Fprintf(w, "tapswitch pod %s: %s\n", p.ID, strings.Join(parts, ", "))
		}
	}
	fmt.Fprintln(w)
}

func formatOffloads(m map[string]string) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, k+" "+m[k])
	}
	return strings.Join(parts, ", ")
}

// printTable prints one row per figure: the medians of both variants and
// the ratio tapswitch/kernel.
func printTable(w io.Writer, res results) {
	fmt.Fprintf(w, "\nmedians of %d round(s), %s per iperf3 test; CNI figures of %d pods per variant\n", res.Meta.Rounds, res.Meta.Duration, res.Meta.CNI.Pods)
	printRows(w, res, figures)
	fmt.Fprintln(w, "cpu: whole machine's busy CPU for both; switch process: tapswitchd only (the kernel bridge has none)")
	fmt.Fprintln(w, "pod → world: kernel: routing + iptables MASQUERADE in a node namespace; tapswitch (--egress route): the switch routes to tsw0, the node forwards and masquerades by the daemon's nftables table;")
	fmt.Fprintln(w, "  proxy (tapswitch-proxy, --egress proxy): tapswitchd's netstack gateway ends the pod's connection and a node socket carries it on")
	fmt.Fprintln(w, "pod → node: the bridge's address against the host port tsw0 (both tapswitch modes)")
	fmt.Fprintln(w, "xnode, pod → pod across nodes: VXLAN (flannel's wire) between node namespaces on an underlay bridge; kernel: two flannel-style nodes (flannel.1 + cni0); tapswitch: two tapswitchd with --peers")
	fmt.Fprintln(w, "CNI: each pod a fresh netns, ADDs one after another then DELs, one plugin process each, run in the node namespace; kernel: bridge + host-local, tapswitch: bin/tapswitch")
	printMixed(w, res)
	if len(res.Targets) > 0 {
		fmt.Fprintln(w, "\ntargets (ratios of this run, on this machine):")
	}
	for _, tg := range res.Targets {
		verdict := "met"
		if !tg.Met {
			verdict = "NOT met"
		}
		fmt.Fprintf(w, "  %-60s %5.2f  %s\n", tg.What, tg.Ratio, verdict)
	}
}

// printRows prints a header and the row of each of figs: the kernel's
// and tapswitch's values and the ratio tapswitch/kernel, then, when res
// has the tapswitch-proxy variant, its value and the ratio proxy/kernel
// ("-" where it takes no such figure).
func printRows(w io.Writer, res results, figs []figure) {
	k, t, p := res.Variants["kernel"], res.Variants["tapswitch"], res.Variants[proxyVariant]
	const cols = "%-32s %10s %10s %17s"
	const proxyCols = " %10s %13s"
	header := fmt.Sprintf(cols, "figure", "kernel", "tapswitch", "tapswitch/kernel")
	if p != nil {
		header += fmt.Sprintf(proxyCols, "proxy", "proxy/kernel")
	}
	fmt.Fprintf(w, "%s  better\n", header)
	cell := func(m map[string]float64, key, format string) string {
		if x, ok := m[key]; ok {
			return fmt.Sprintf(format, x)
		}
		return "-"
	}
	for _, f := range figs {
		line := fmt.Sprintf(cols, f.label, cell(k, f.key, f.format), cell(t, f.key, f.format), cell(res.Ratios, f.key, "%.2f"))
		if p != nil {
			line += fmt.Sprintf(proxyCols, cell(p, f.key, f.format), cell(res.Ratios, proxyRatioPrefix+f.key, "%.2f"))
		}
		better := "higher"
		if f.lowerBetter {
			better = "lower"
		}
		fmt.Fprintf(w, "%s  %s\n", line, better)
	}
}

// writeJSON writes v, indented, to file through a temporary file in the
// same folder, so a reader never sees half a file.
func writeJSON(file string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		return err
	}
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, file)
}
