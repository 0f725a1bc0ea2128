package main

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"time"

	"tapswitch/daemon/api"
)

// scaleSubnet is the scale run's pod cidr: a /23 holds 500 pods besides
// the gateway and the host port.
var scaleSubnet = netip.MustParsePrefix("10.253.4.0/23")

// scaleResults is bench/results/scale.json.
type scaleResults struct {
	Date         string             `json:"date"`
	Kernel       string             `json:"kernel"`
	CPUs         int                `json:"cpus"`
	CPUModel     string             `json:"cpu_model"`
	Pods         int                `json:"pods"`
	Attach       latencies          `json:"attach"`
	Detach       latencies          `json:"detach"`
	RSSBefore    int64              `json:"rss_before_bytes"`
	RSSAfter     int64              `json:"rss_after_bytes"`
	RSSPerPodKiB float64            `json:"rss_per_pod_kib"`
	Flood        floodResult        `json:"flood"`
	FDBLookupNs  map[string]float64 `json:"fdb_lookup_ns"` // sub-benchmark → ns/op, 100,000 entries
}

// latencies summarizes one API call made once per pod.
type latencies struct {
	P50Ms   float64 `json:"p50_ms"`
	P99Ms   float64 `json:"p99_ms"`
	MaxMs   float64 `json:"max_ms"`
	TotalS  float64 `json:"total_s"`
	Samples int     `json:"samples"`
}

func summarize(ds []time.Duration) latencies {
	var total time.Duration
	for _, d := range ds {
		total += d
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	return latencies{P50Ms: ms(percentile(ds, 50)), P99Ms: ms(percentile(ds, 99)), MaxMs: ms(percentile(ds, 100)), TotalS: total.Seconds(), Samples: len(ds)}
}

// runScale measures one daemon with opts.pods pods: attach and detach
// time per pod, memory per pod and the cost of a flood, then runs the
// switch's FDB benchmark once the pods are gone.
func runScale(ctx context.Context, opts options, w io.Writer) (err error) {
	cl := new(cleanups)
	defer func() { err = finish(ctx, w, cl, err) }()

	e, _ := collectEnv(ctx, nil)
	res := scaleResults{Date: time.Now().UTC().Format(time.RFC3339), Kernel: e.Kernel, CPUs: e.CPUs, CPUModel: e.CPUModel, Pods: opts.pods}
	if err := measurePods(ctx, w, cl, opts, &res); err != nil {
		return err
	}
	progress(w, "stopping the daemon and removing %d namespaces", opts.pods)
	if err := cl.run(w); err != nil {
		return err
	}
	progress(w, "FDB benchmark (go test -bench %s tapswitch/switch, -benchtime %s)", fdbBenchmark, opts.fdbTime)
	if res.FDBLookupNs, err = runFDBBenchmark(ctx, opts.goCmd, opts.fdbTime); err != nil {
		return err
	}
	printScale(w, res)
	if err := writeJSON(opts.scaleOut, res); err != nil {
		return err
	}
	progress(w, "wrote %s", opts.scaleOut)
	return nil
}

// measurePods starts a daemon in a node namespace of its own, creates the
// pods' namespaces, and measures the
// attaches, the memory, the flood and the detaches into res.
func measurePods(ctx context.Context, w io.Writer, cl *cleanups, opts options, res *scaleResults) error {
	dir, err := newTempDir(cl)
	if err != nil {
		return err
	}
	node, _, err := addNodeNS(ctx, cl, "s-node")
	if err != nil {
		return err
	}
	d, err := startDaemon(ctx, cl, opts.binDir, dir, node, scaleSubnet, benchMTU)
	if err != nil {
		return err
	}
	progress(w, "creating %d namespaces %ss*", opts.pods, nsPrefix())
	paths := make([]string, opts.pods)
	for i := range paths {
		if _, paths[i], err = addNetNS(ctx, cl, fmt.Sprintf("s%03d", i)); err != nil {
			return err
		}
	}
	c := api.NewClient(d.socket)
	if res.RSSBefore, err = processRSS(d.pid()); err != nil {
		return err
	}

	progress(w, "attaching %d pods one after another", opts.pods)
	attached := make([]api.Pod, 0, opts.pods)
	cl.add("scale pods", func() error { return deletePods(c, attached) })
	var times []time.Duration
	for i, path := range paths {
		start := time.Now()
		p, err := c.AddPod(ctx, api.PodRequest{ID: fmt.Sprintf("%ss%03d", nsPrefix(), i), NetNS: path})
		if err != nil {
			return fmt.Errorf("attach pod %d: %w", i, err)
		}
		times = append(times, time.Since(start))
		attached = append(attached, p)
	}
	res.Attach = summarize(times)
	if res.RSSAfter, err = processRSS(d.pid()); err != nil {
		return err
	}
	res.RSSPerPodKiB = float64(res.RSSAfter-res.RSSBefore) / 1024 / float64(opts.pods)

	progress(w, "flooding %d broadcasts, %d/s, from one pod to %d and the daemon's gateway and host port", opts.floods, opts.floodRate, opts.pods-1)
	if res.Flood, err = measureFlood(ctx, c, d.pid(), attached, opts.floods, opts.floodRate); err != nil {
		return err
	}

	progress(w, "detaching %d pods one after another", opts.pods)
	times = times[:0]
	for len(attached) > 0 {
		p := attached[len(attached)-1]
		start := time.Now()
		if err := c.DeletePod(ctx, p.ID); err != nil {
			return fmt.Errorf("detach pod %s: %w", p.ID, err)
		}
		times = append(times, time.Since(start))
		attached = attached[:len(attached)-1]
	}
	res.Detach = summarize(times)
	return nil
}

// deletePods detaches pods still attached when a run ends early.
func deletePods(c *api.Client, pods []api.Pod) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, p := range pods {
		if err := c.DeletePod(ctx, p.ID); err != nil {
			return err
		}
	}
	return nil
}

// printScale prints the scale figures with the targets beside them.
func printScale(w io.Writer, r scaleResults) {
	fmt.Fprintf(w, "\nscale figures, %d pods, kernel %s, %d CPUs (%s)\n", r.Pods, r.Kernel, r.CPUs, r.CPUModel)
	const row = "%-34s %s\n"
	fmt.Fprintf(w, row, "attach per pod p50 / p99 / max", fmt.Sprintf("%.1f / %.1f / %.1f ms (total %.1f s; target p99 <= 50 ms)", r.Attach.P50Ms, r.Attach.P99Ms, r.Attach.MaxMs, r.Attach.TotalS))
	fmt.Fprintf(w, row, "detach per pod p50 / p99 / max", fmt.Sprintf("%.1f / %.1f / %.1f ms (total %.1f s)", r.Detach.P50Ms, r.Detach.P99Ms, r.Detach.MaxMs, r.Detach.TotalS))
	fmt.Fprintf(w, row, "daemon RSS before / after", fmt.Sprintf("%.1f / %.1f MiB: %.0f KiB per pod (target <= 1024 KiB)", float64(r.RSSBefore)/(1<<20), float64(r.RSSAfter)/(1<<20), r.RSSPerPodKiB))
	if f := r.Flood; f.Skipped != "" {
		fmt.Fprintf(w, row, "flood", "skipped: "+f.Skipped)
	} else {
		fmt.Fprintf(w, row, fmt.Sprintf("flood, 1 pod to %d ports", f.Ports-1), fmt.Sprintf("%.1f µs daemon CPU per broadcast, %.0f ns per copy", f.CPUUsPerFrame, f.CPUNsPerCopy))
		fmt.Fprintf(w, row, "", fmt.Sprintf("%d sent, %d read by the switch (%.0f/s), %d copies (%.0f/s), %d dropped", f.Sent, f.SwitchRx, f.FramesReadRate, f.Copies, f.CopiesPerSec, f.Drops))
	}
	fmt.Fprintf(w, row, "FDB lookup, 100,000 entries", fmt.Sprintf("hit %.1f ns, miss %.1f ns, refresh %.1f ns", r.FDBLookupNs["hit"], r.FDBLookupNs["miss"], r.FDBLookupNs["refresh"]))
}
