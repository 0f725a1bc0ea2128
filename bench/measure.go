package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"tapswitch/internal/pinger"
)

// figure is one measured quantity: a row of the table and a key of each
// variant's JSON object.
type figure struct {
	key         string
	label       string
	format      string // of one value
	lowerBetter bool
}

var figures = []figure{
	{"tcp1_gbps", "TCP 1 stream, Gbit/s", "%.2f", false},
	{"tcp4_gbps", "TCP 4 streams, Gbit/s", "%.2f", false},
	{"udp64_kpps", "UDP 64 B received, kpps", "%.0f", false},
	{"rtt_us", "ping RTT p50, µs", "%.1f", true},
	{"rr_us", "UDP request/response p50, µs", "%.1f", true},
	{"cpu_s_per_gb", "machine CPU in TCP tests, s/GB", "%.2f", true},
	{"switch_cpu_s_per_gb", "switch process CPU in TCP, s/GB", "%.2f", true},
	{"egress_tcp_gbps", "TCP pod → world, Gbit/s", "%.2f", false},
	{"egress_cpu_s_per_gb", "machine CPU, pod → world, s/GB", "%.2f", true},
	{"egress_rr_us", "UDP req/resp pod → world p50, µs", "%.1f", true},
	{"node_tcp_gbps", "TCP pod → node, Gbit/s", "%.2f", false},
	// Pod → pod across two nodes over VXLAN (xnode_linux.go).
	{"xnode_tcp1_gbps", "xnode TCP 1 stream, Gbit/s", "%.2f", false},
	{"xnode_tcp4_gbps", "xnode TCP 4 streams, Gbit/s", "%.2f", false},
	{"xnode_rr_us", "xnode UDP req/resp p50, µs", "%.1f", true},
	// The CNI figures are of -cni-pods calls, not medians of rounds.
	{"cni_add_p50_ms", "CNI ADD p50, ms", "%.1f", true},
	{"cni_add_p99_ms", "CNI ADD p99, ms", "%.1f", true},
	{"cni_add_max_ms", "CNI ADD max, ms", "%.1f", true},
	{"cni_del_p50_ms", "CNI DEL p50, ms", "%.1f", true},
	{"cni_del_p99_ms", "CNI DEL p99, ms", "%.1f", true},
	{"cni_del_max_ms", "CNI DEL max, ms", "%.1f", true},
}

// cniFigureList returns the CNI figures of figures, in order.
func cniFigureList() []figure {
	var out []figure
	for _, f := range figures {
		if strings.HasPrefix(f.key, "cni_") {
			out = append(out, f)
		}
	}
	return out
}

// variant is one set-up under test and what was measured on it: two
// pods and their way out, or, when outsideOnly, one pod (client) and its
// way out.
type variant struct {
	name           string
	client, server pod
	outsideOnly    bool                 // only the figures of the way out: no server pod
	switchPID      int                  // the process that switches; 0 for the kernel
	daemon         *daemonProc          // tapswitch only
	attached       []attachedPod        // the daemon's answers (tapswitch only)
	outside        outside              // the way out of the pod network: egress and pod → node
	samples        map[string][]float64 // figure key → one value per round
}

func (v *variant) add(key string, x float64) {
	if v.samples == nil {
		v.samples = make(map[string][]float64)
	}
	v.samples[key] = append(v.samples[key], x)
}

// medians returns the median of each figure's rounds.
func (v *variant) medians() map[string]float64 {
	m := make(map[string]float64, len(v.samples))
	for k, xs := range v.samples {
		m[k] = median(xs)
	}
	return m
}

// measureRound takes every figure of v once, printing each to w: those
// between its two pods and those of its way out, or only the latter when
// v.outsideOnly.
func measureRound(ctx context.Context, w io.Writer, v *variant, opts options) error {
	if v.outsideOnly {
		return measureOutside(ctx, w, v, opts)
	}
	if err := measureTCP(ctx, w, v, opts.duration); err != nil {
		return err
	}
	if err := measureUDP(ctx, w, v, opts.duration); err != nil {
		return err
	}
	rtt, err := pingP50(ctx, v, opts.pings)
	if err != nil {
		return err
	}
	v.add("rtt_us", micros(rtt))
	progress(w, "  %-15s ping RTT   %8.1f µs p50 (%d echoes)", v.name, micros(rtt), opts.pings)

	rtts, err := requestResponse(ctx, v.client, v.server, opts.rrs)
	if err != nil {
		return err
	}
	rr := percentile(rtts, 50)
	v.add("rr_us", micros(rr))
	progress(w, "  %-15s UDP req/resp %6.1f µs p50, p99 %.1f µs (%d exchanges)", v.name, micros(rr), micros(percentile(rtts, 99)), len(rtts))
	return measureOutside(ctx, w, v, opts)
}

// measureTCP runs the single-stream and the four-stream iperf3 tests and
// the CPU time they cost, per GB the receiver got.
func measureTCP(ctx context.Context, w io.Writer, v *variant, length time.Duration) error {
	var machine, sw time.Duration
	var bytes float64
	for _, t := range []struct {
		key   string
		extra []string
	}{{"tcp1_gbps", nil}, {"tcp4_gbps", []string{"-P", "4"}}} {
		m, err := startCPU(v.switchPID)
		if err != nil {
			return err
		}
		sum, err := iperf(ctx, v.client, v.server, length, t.extra...)
		if err != nil {
			return err
		}
		dm, ds, err := m.stop()
		if err != nil {
			return err
		}
		machine, sw, bytes = machine+dm, sw+ds, bytes+sum.Bytes
		v.add(t.key, sum.BitsPerSecond/1e9)
		progress(w, "  %-15s %-10s %8.2f Gbit/s", v.name, t.key, sum.BitsPerSecond/1e9)
	}
	gb := bytes / 1e9
	v.add("cpu_s_per_gb", machine.Seconds()/gb)
	line := fmt.Sprintf("  %-15s CPU        %8.2f s/GB machine", v.name, machine.Seconds()/gb)
	if v.switchPID > 0 {
		v.add("switch_cpu_s_per_gb", sw.Seconds()/gb)
		line += fmt.Sprintf(", %.2f s/GB switch process", sw.Seconds()/gb)
	}
	progress(w, "%s", line)
	return nil
}

// measureUDP runs the 64-byte UDP test, and says where the datagrams
// that never arrived were lost.
func measureUDP(ctx context.Context, w io.Writer, v *variant, length time.Duration) error {
	drops0, err := v.switchDrops(ctx)
	if err != nil {
		return err
	}
	loss0, err := readLosses(ctx, v)
	if err != nil {
		return err
	}
	udp, err := iperf(ctx, v.client, v.server, length, "-u", "-l", "64", "-b", "0")
	if err != nil {
		return err
	}
	drops1, err := v.switchDrops(ctx)
	if err != nil {
		return err
	}
	loss1, err := readLosses(ctx, v)
	if err != nil {
		return err
	}
	kpps := float64(udp.received()) / udp.Seconds / 1e3
	v.add("udp64_kpps", kpps)
	progress(w, "  %-15s UDP 64 B   %8.0f kpps received (%d of %d datagrams)%s%s",
		v.name, kpps, udp.received(), udp.Packets, dropDiff(drops0, drops1), loss1.since(loss0))
	return nil
}

// switchDrops returns the switch's drop counters by reason, or nil for the
// kernel, whose bridge has none to read.
func (v *variant) switchDrops(ctx context.Context) (map[string]uint64, error) {
	if v.daemon == nil {
		return nil, nil
	}
	return v.daemon.drops(ctx)
}

// dropDiff describes the drops that grew between two snapshots, for a
// progress line: where the datagrams that never arrived were lost.
func dropDiff(before, after map[string]uint64) string {
	var parts []string
	for _, reason := range slices.Sorted(maps.Keys(after)) {
		if n := after[reason] - before[reason]; n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", reason, n))
		}
	}
	if len(parts) == 0 {
		return ""
	}
	return "; switch dropped " + strings.Join(parts, ", ")
}

// pingP50 sends n ICMP echoes from v's client to its server, one after
// the other, and returns the median round trip. More than a tenth lost is
// an error.
func pingP50(ctx context.Context, v *variant, n int) (time.Duration, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	res, err := pinger.Ping(v.client.path, v.server.ip.Addr(), n, time.Second)
	if err != nil {
		return 0, err
	}
	if res.Received < n-n/10 {
		return 0, fmt.Errorf("%s: ping %s: %d of %d echoes answered", v.name, v.server.ip.Addr(), res.Received, n)
	}
	return percentile(res.RTTs, 50), nil
}

// waitReachable pings v's server from its client until it answers, for up
// to 10 s: a new bridge port or TAP may take a moment.
func waitReachable(ctx context.Context, v *variant) error {
	return waitPing(ctx, v.name, v.client, v.server)
}

// waitPing pings to from from until it answers, for up to 10 s, then
// sends a few more to warm up caches, ARP and the FDB before measuring.
func waitPing(ctx context.Context, name string, from, to pod) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		res, err := pinger.Ping(from.path, to.ip.Addr(), 1, 500*time.Millisecond)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if res.Received == 1 {
			_, err := pinger.Ping(from.path, to.ip.Addr(), 20, time.Second)
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %s does not answer pod %s's ping", name, to.ip.Addr(), from.ip.Addr())
		}
	}
}
