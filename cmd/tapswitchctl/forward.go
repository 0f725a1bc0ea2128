package main

import (
	"context"
	"flag"
	"fmt"
	"text/tabwriter"

	"tapswitch/daemon/api"
)

// The port forward commands: forward add, forward del, forward list. The
// daemon checks addresses, ports and the protocol, so its errors are the
// ones users see.

func forwardAddCmd(fs *flag.FlagSet) runFunc {
	listen := fs.String("listen", "", "host `address:port` to listen on, e.g. 127.0.0.1:8080 or [::1]:8080 (required)")
	pod := fs.String("pod", "", "`id` of the pod to forward to (required)")
	port := fs.Int("port", 0, "`port` of the pod to forward to (required)")
	proto := fs.String("proto", api.ProtoTCP, "`protocol`: tcp or udp")
	return func(ctx context.Context, c *api.Client, out output) error {
		if *listen == "" || *pod == "" || *port == 0 {
			return fmt.Errorf("%w: forward add needs --listen, --pod and --port", errUsage)
		}
		fw, err := c.AddForward(ctx, api.ForwardRequest{Listen: *listen, Proto: *proto, Pod: *pod, Port: *port})
		if err != nil {
			return err
		}
		if out.json {
			return out.printJSON(fw)
		}
		return printForwards(out, []api.Forward{fw})
	}
}

func forwardDelCmd(fs *flag.FlagSet) runFunc {
	listen := fs.String("listen", "", "host `address:port` of the forward (required)")
	proto := fs.String("proto", api.ProtoTCP, "`protocol` of the forward: tcp or udp")
	return func(ctx context.Context, c *api.Client, out output) error {
		if *listen == "" {
			return fmt.Errorf("%w: forward del needs --listen", errUsage)
		}
		if err := c.DeleteForward(ctx, *proto, *listen); err != nil {
			return err
		}
		if out.json {
			return out.printJSON(map[string]string{"deleted": *listen, "proto": *proto})
		}
		fmt.Fprintf(out.w, "forward %s %s deleted\n", *proto, *listen)
		return nil
	}
}

func forwardListCmd(fs *flag.FlagSet) runFunc {
	return func(ctx context.Context, c *api.Client, out output) error {
		fws, err := c.Forwards(ctx)
		if err != nil {
			return err
		}
		if out.json {
			return out.printJSON(fws)
		}
		return printForwards(out, fws)
	}
}

func printForwards(out output, fws []api.Forward) error {
	tw := tabwriter.NewWriter(out.w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PROTO\tLISTEN\tPOD\tTARGET\tVIA\tSTATUS")
	for _, f := range fws {
		status := "listening"
		switch {
		case f.Error != "" && f.Via == api.ViaDNAT:
			status = "not in the node's table: " + f.Error
		case f.Error != "":
			status = "not listening: " + f.Error
		case f.Via == api.ViaDNAT:
			status = "in the node's nftables table"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", f.Proto, f.Listen, f.Pod, f.Target, f.Via, status)
	}
	return tw.Flush()
}
