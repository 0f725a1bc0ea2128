package main

import (
	"context"
	"flag"
	"fmt"
	"text/tabwriter"

	"tapswitch/daemon/api"
)

// podCheckCmd checks a pod's interface against what the daemon made (what
// a CNI CHECK asks the daemon); it fails naming every difference.
func podCheckCmd(fs *flag.FlagSet) runFunc {
	id := fs.String("id", "", "pod `id` (required)")
	return func(ctx context.Context, c *api.Client, out output) error {
		if *id == "" {
			return fmt.Errorf("%w: pod check needs --id", errUsage)
		}
		pod, err := c.CheckPod(ctx, *id)
		if err != nil {
			return err
		}
		if out.json {
			return out.printJSON(pod)
		}
		fmt.Fprintf(out.w, "pod %s is as attached\n", *id)
		return nil
	}
}

// statusCmd prints the pod count and each pod CIDR's free addresses (what
// a CNI STATUS asks the daemon).
func statusCmd(fs *flag.FlagSet) runFunc {
	return func(ctx context.Context, c *api.Client, out output) error {
		st, err := c.Status(ctx)
		if err != nil {
			return err
		}
		if out.json {
			return out.printJSON(st)
		}
		fmt.Fprintf(out.w, "pods: %d\n", st.Pods)
		tw := tabwriter.NewWriter(out.w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "CIDR\tSIZE\tFREE")
		for _, p := range st.Pools {
			fmt.Fprintf(tw, "%s\t%d\t%d\n", p.CIDR, p.Size, p.Free)
		}
		return tw.Flush()
	}
}
