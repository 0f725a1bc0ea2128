package main

import (
	"context"
	"flag"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"tapswitch/daemon"
	"tapswitch/daemon/api"
)

type runFunc = func(ctx context.Context, c *api.Client, out output) error

func podAddCmd(fs *flag.FlagSet) runFunc {
	id := fs.String("id", "", "pod `id` (required)")
	netns := fs.String("netns", "", "`path` of the pod's network namespace, e.g. /var/run/netns/NAME (required)")
	ifname := fs.String("ifname", daemon.DefaultIfName, "interface `name` inside the netns")
	noOffloads := fs.Bool("no-offloads", false, "turn TSO and checksum offload off on this pod's TAP")
	podNS := fs.String("pod-namespace", "", "Kubernetes `namespace` of the pod, recorded and shown (optional)")
	podName := fs.String("pod-name", "", "Kubernetes `name` of the pod, recorded and shown (optional)")
	return func(ctx context.Context, c *api.Client, out output) error {
		if *id == "" || *netns == "" {
			return fmt.Errorf("%w: pod add needs --id and --netns", errUsage)
		}
		// The daemon resolves paths from its own working directory.
		path, err := filepath.Abs(*netns)
		if err != nil {
			return err
		}
		req := api.PodRequest{ID: *id, NetNS: path, IfName: *ifname, PodNamespace: *podNS, PodName: *podName}
		if *noOffloads {
			off := false
			req.Offloads = &off
		}
		pod, err := c.AddPod(ctx, req)
		if err != nil {
			return err
		}
		if out.json {
			return out.printJSON(pod)
		}
		return printPods(out, []api.Pod{pod})
	}
}

func podDelCmd(fs *flag.FlagSet) runFunc {
	id := fs.String("id", "", "pod `id` (required)")
	return func(ctx context.Context, c *api.Client, out output) error {
		if *id == "" {
			return fmt.Errorf("%w: pod del needs --id", errUsage)
		}
		if err := c.DeletePod(ctx, *id); err != nil {
			return err
		}
		if out.json {
			return out.printJSON(map[string]string{"deleted": *id})
		}
		fmt.Fprintf(out.w, "pod %s deleted\n", *id)
		return nil
	}
}

func podsCmd(fs *flag.FlagSet) runFunc {
	return func(ctx context.Context, c *api.Client, out output) error {
		pods, err := c.Pods(ctx)
		if err != nil {
			return err
		}
		if out.json {
			return out.printJSON(pods)
		}
		return printPods(out, pods)
	}
}

func printPods(out output, pods []api.Pod) error {
	tw := tabwriter.NewWriter(out.w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tPOD\tIFNAME\tMAC\tIPS\tGATEWAYS\tPORT\tNETNS")
	for _, p := range pods {
		port := "detached"
		if p.PortID != 0 {
			port = fmt.Sprint(p.PortID)
		}
		k8s := "-"
		if p.PodName != "" {
			k8s = p.PodNamespace + "/" + p.PodName
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.ID, k8s, p.IfName, p.MAC, join(p.IPs), join(p.Gateways), port, p.NetNS)
	}
	return tw.Flush()
}

func join[T fmt.Stringer](l []T) string {
	s := make([]string, len(l))
	for i, v := range l {
		s[i] = v.String()
	}
	return strings.Join(s, ",")
}

func ipamCmd(fs *flag.FlagSet) runFunc {
	return func(ctx context.Context, c *api.Client, out output) error {
		leases, err := c.Leases(ctx)
		if err != nil {
			return err
		}
		if out.json {
			return out.printJSON(leases)
		}
		tw := tabwriter.NewWriter(out.w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "CONTAINER_ID\tIFNAME\tIPS\tSINCE")
		for _, l := range leases {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", l.Key.ContainerID, l.Key.IfName, join(l.IPs), l.Since.UTC().Format(time.RFC3339))
		}
		return tw.Flush()
	}
}

func fdbCmd(fs *flag.FlagSet) runFunc {
	return func(ctx context.Context, c *api.Client, out output) error {
		fdb, err := c.FDB(ctx)
		if err != nil {
			return err
		}
		if out.json {
			return out.printJSON(fdb)
		}
		tw := tabwriter.NewWriter(out.w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "MAC\tPORT\tPORT_ID\tAGE")
		for _, e := range fdb {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", e.MAC, e.PortName, e.Port, e.Age.Round(time.Second))
		}
		return tw.Flush()
	}
}

func statsCmd(fs *flag.FlagSet) runFunc {
	return func(ctx context.Context, c *api.Client, out output) error {
		st, err := c.Stats(ctx)
		if err != nil {
			return err
		}
		if out.json {
			return out.printJSON(st)
		}
		tw := tabwriter.NewWriter(out.w, 0, 4, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "PORT\tRX_FRAMES\tRX_BYTES\tTX_FRAMES\tTX_BYTES\tROUTED\tARP_REPLIES\tFDB\tDROPS\t")
		for _, p := range st.Ports {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t\n", p.Name, p.RxFrames, p.RxBytes, p.TxFrames, p.TxBytes, p.Routed, p.ARPReplies, p.FDBEntries, drops(p.Drops))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintf(out.w, "%d pods, %d fdb entries, egress %s\n", st.Pods, st.FDBEntries, st.Egress)
		if r := st.Router; r != nil {
			fmt.Fprintf(out.w, "router: icmp errors sent %s (rate-limited %d), no route %d, fragments %d, flows returning through the node %d (evicted %d)\n",
				drops(r.ICMPSent), r.ICMPRateLimited, r.NoRoute, r.Fragments, r.HostFlows, r.HostFlowsEvicted)
		}
		return nil
	}
}

// drops formats the non-zero drop counters as reason=count, sorted by
// reason, or "0" when there are none (-o json shows every reason).
func drops(m map[string]uint64) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if m[k] != 0 {
			parts = append(parts, fmt.Sprintf("%s=%d", k, m[k]))
		}
	}
	if len(parts) == 0 {
		return "0"
	}
	return strings.Join(parts, ",")
}
