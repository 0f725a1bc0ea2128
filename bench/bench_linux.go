package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os/exec"
	"slices"
	"time"
)

// benchMTU is the pod interfaces' MTU in both set-ups.
const benchMTU = 1500

// runBench builds the kernel, the tapswitch (route mode) and the
// tapswitch-proxy set-ups, measures them for opts.rounds rounds, prints
// the table and writes opts.out. Whatever happens, it removes everything
// it made before it returns.
func runBench(ctx context.Context, opts options, w io.Writer) (err error) {
	for _, tool := range []string{"iperf3", "iptables"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found (make deps installs it): %w", tool, err)
		}
	}
	if err := checkCNITools(opts); err != nil {
		return err
	}
	cl := new(cleanups)
	defer func() { err = finish(ctx, w, cl, err) }()

	progress(w, "setting up: kernel bridge + veth, and routing + MASQUERADE to a world (namespaces %sk-*)", nsPrefix())
	kernel, err := setupKernel(ctx, cl, benchMTU)
	if err != nil {
		return err
	}
	progress(w, "setting up: tapswitchd --egress route from %s in a node namespace, with a world (namespaces %st-*)", opts.binDir, nsPrefix())
	tsw, err := setupTapswitch(ctx, cl, opts, benchMTU)
	if err != nil {
		return err
	}
	progress(w, "setting up: tapswitchd --egress proxy in another node namespace, one pod and a world (namespaces %sp-*)", nsPrefix())
	proxy, err := setupTapswitchProxy(ctx, cl, opts, benchMTU)
	if err != nil {
		return err
	}
	progress(w, "setting up: pod → pod across nodes over VXLAN: two flannel-style kernel nodes, two tapswitchd with --peers and a flannel-style node among them (namespaces %sx-*)", nsPrefix())
	xn, err := setupXnode(ctx, cl, opts)
	if err != nil {
		return err
	}
	mixed := &variant{name: mixedVariant}
	xpairs := []struct {
		v    *variant
		pair xnodePair
	}{{kernel, xn.kernel}, {tsw, xn.tapswitch}, {mixed, xn.mixed}}
	for _, x := range xpairs {
		if err := waitPing(ctx, x.v.name+" across nodes", x.pair.client, x.pair.server); err != nil {
			return err
		}
	}
	variants := []*variant{kernel, tsw, proxy}
	for _, v := range variants {
		if !v.outsideOnly {
			if err := waitReachable(ctx, v); err != nil {
				return err
			}
		}
		if err := waitOutside(ctx, v); err != nil {
			return err
		}
	}
	e, err := collectEnv(ctx, variants)
	if err != nil {
		return err
	}
	maps.Copy(e.Offloads, xn.offloads)
	printEnv(w, e, append(slices.Clone(tsw.attached), proxy.attached...))

	start := time.Now()
	for r := range opts.rounds {
		progress(w, "round %d of %d", r+1, opts.rounds)
		// Rotate which set-up goes first, so a drift of the machine
		// during a round does not always favour the same one.
		i := r % len(variants)
		order := append(slices.Clone(variants[i:]), variants[:i]...)
		for _, v := range order {
			if err := measureRound(ctx, w, v, opts); err != nil {
				return fmt.Errorf("round %d, %s: %w", r+1, v.name, err)
			}
		}
		for j := range xpairs {
			x := xpairs[(r+j)%len(xpairs)]
			if err := measureXnode(ctx, w, x.v, x.pair, opts); err != nil {
				return fmt.Errorf("round %d, %s across nodes: %w", r+1, x.v.name, err)
			}
		}
	}
	progress(w, "measured in %s", time.Since(start).Round(time.Second))

	// After the rounds: the CNI pods come and go while nothing else is
	// measured, so the traffic figures never see them.
	progress(w, "CNI: %d pods per variant attached one after another, then deleted, through the plugins run in the node namespaces", opts.cniPods)
	cni, err := measureCNI(ctx, w, cl, opts, kernel.outside.node.ns, tsw.outside.node.ns, tsw.daemon.socket)
	if err != nil {
		return err
	}

	res := newResults(kernel, tsw, proxy, e, opts, cni)
	addMixed(&res, mixed)
	printTable(w, res)
	if err := writeJSON(opts.out, res); err != nil {
		return err
	}
	progress(w, "wrote %s", opts.out)
	return nil
}

// finish runs the clean-ups, checks no namespace is left and returns err
// joined with whatever went wrong there. An interrupted run says so.
func finish(ctx context.Context, w io.Writer, cl *cleanups, err error) error {
	if ctx.Err() != nil {
		fmt.Fprintln(w, "bench: interrupted")
		if !errors.Is(err, ctx.Err()) {
			err = errors.Join(context.Cause(ctx), err)
		}
	}
	progress(w, "cleaning up")
	err = errors.Join(err, cl.run(w))
	if left := leftoverNetNS(); len(left) > 0 {
		err = errors.Join(err, fmt.Errorf("namespaces left behind: %v", left))
	}
	return err
}
