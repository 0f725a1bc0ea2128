package main

import (
	"context"
	"flag"
	"fmt"
	"text/tabwriter"
	"time"

	"tapswitch/daemon/api"
)

// nodeCmd prints this node's entry for a peers file; with -o json exactly
// as the file holds it, so a static cluster's file is its nodes' outputs
// in one array.
func nodeCmd(fs *flag.FlagSet) runFunc {
	return func(ctx context.Context, c *api.Client, out output) error {
		n, err := c.Node(ctx)
		if err != nil {
			return err
		}
		if out.json {
			return out.printJSON(n)
		}
		fmt.Fprintf(out.w, "name      %s\naddress   %s\nvtep_mac  %s\npod_cidrs %v\n", n.Name, n.Address, n.VTEPMAC, n.PodCIDRs)
		return nil
	}
}

// peersCmd lists the overlay's peers with the traffic to and from each.
func peersCmd(fs *flag.FlagSet) runFunc {
	return func(ctx context.Context, c *api.Client, out output) error {
		ps, err := c.Peers(ctx)
		if err != nil {
			return err
		}
		if out.json {
			return out.printJSON(ps)
		}
		tw := tabwriter.NewWriter(out.w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NODE\tADDRESS\tVTEP_MAC\tPOD_CIDRS\tTX_FRAMES\tTX_BYTES\tRX_FRAMES\tRX_BYTES\tLAST_SEEN")
		for _, p := range ps {
			seen := "never"
			if !p.LastSeen.IsZero() {
				seen = time.Since(p.LastSeen).Round(time.Second).String() + " ago"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%d\t%d\t%d\t%d\t%s\n", p.Name, p.Address, p.VTEPMAC, p.PodCIDRs, p.TxFrames, p.TxBytes, p.RxFrames, p.RxBytes, seen)
		}
		return tw.Flush()
	}
}
