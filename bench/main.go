// Command bench is tapswitch's end-to-end benchmark (make bench, make
// bench-scale). Run it as root from the repository root after make build.
//
// The default mode builds three set-ups in one run on one machine and
// measures them with the same tools:
//
//   - kernel: a Linux bridge in a "node" namespace of its own, with one
//     veth pair to each of two pod namespaces; and, in a second node
//     namespace, a bridge holding the pods' gateway address, a pod behind
//     a veth, and routing with iptables MASQUERADE to a "world" namespace
//     behind another veth (ip_forward and the rule set in that namespace
//     only);
//   - tapswitch: bin/tapswitchd --egress route (the default) running
//     inside a node namespace (its host port tsw0, the forwarding it
//     enables and its nftables table are there) with a private socket and
//     state folder, two pod namespaces attached with tapswitchctl, and a
//     world namespace behind a veth from the node;
//   - tapswitch-proxy: a second tapswitchd, with --egress proxy, in a node
//     namespace of its own (its egress sockets are there) with one pod and
//     a world of its own, for the figures of the way out only.
//
// Figures: between two pods, iperf3 TCP with 1 and 4 streams, UDP 64-byte
// datagrams per second at the receiver, ping RTT p50, UDP
// request/response p50, and CPU seconds per GB during the TCP tests; out
// of the pod network, for all three, iperf3 TCP pod → world (kernel:
// routing and MASQUERADE; tapswitch: the switch routes to tsw0, the node
// forwards and masquerades by the daemon's nftables table;
// tapswitch-proxy: the netstack gateway ends the connection) with its CPU
// per GB, UDP request/response pod → world p50, and iperf3 TCP pod → node
// (the bridge's address; tapswitch's host port). Every figure is taken
// -rounds times and the median reported. Then the CNI figures (cni_linux.go): -cni-pods
// pods per variant attached one after another and deleted one after
// another through the real plugin binaries, run by libcni inside the node
// namespaces (kernel: the reference bridge plugin with host-local, from
// -cni-tools; tapswitch: bin/tapswitch against the bench's tapswitchd),
// with the p50, p99 and max of the ADD and the DEL times. -only cni takes
// just those. It prints one table with the ratio tapswitch/kernel of each
// figure and tapswitch-proxy/kernel of its figures, and writes -out
// (bench/results/latest.json).
//
// With -scale it measures one daemon (in a node namespace too) with -pods
// pods instead: attach time per pod, daemon memory per pod, the cost of
// flooding a broadcast to every pod, and the switch's FDB lookup
// benchmark; it writes -scale-out.
//
// Traffic goes only between namespaces the harness creates, and the
// machine's root namespace gets no device, route, sysctl or firewall rule.
// Their names start with tswb-PID-, and everything the harness makes
// (namespaces, processes, the temporary folder) is removed when it ends,
// also on failure, SIGINT and SIGTERM.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// options are the harness's flags.
type options struct {
	binDir    string
	goCmd     string
	rounds    int
	duration  time.Duration
	pings     int // ICMP echoes per round
	rrs       int // UDP request/response exchanges per round
	out       string
	scale     bool
	pods      int
	floods    int // broadcast frames sent in the scale mode's flood test
	floodRate int // per second
	fdbTime   string
	scaleOut  string
	short     bool
	cniTools  string // folder of the reference CNI plugins
	cniPods   int    // pods attached per variant for the CNI figures
	only      string // "cni": only the CNI figures
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// run parses args and runs the benchmark or the scale figures, writing
// progress and the table to w. Everything it creates is gone when it
// returns. Cancelling ctx stops it early, cleanly.
func run(ctx context.Context, args []string, w io.Writer) error {
	opts, err := parseFlags(args, w)
	if err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("run as root: the benchmark creates network namespaces and devices")
	}
	switch {
	case opts.scale:
		return runScale(ctx, opts, w)
	case opts.only == "cni":
		return runCNIOnly(ctx, opts, w)
	}
	return runBench(ctx, opts, w)
}

func parseFlags(args []string, w io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(w)
	fs.StringVar(&o.binDir, "bin", "bin", "`dir`ectory holding tapswitchd and tapswitchctl (make build)")
	fs.StringVar(&o.goCmd, "go", "go", "the go `command`, for the FDB benchmark of -scale")
	fs.IntVar(&o.rounds, "rounds", 3, "times each figure is taken; the median is reported")
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "length of each iperf3 test (whole seconds)")
	fs.IntVar(&o.pings, "pings", 1000, "ICMP echoes per round for the RTT")
	fs.IntVar(&o.rrs, "rr", 2000, "UDP request/response exchanges per round")
	fs.StringVar(&o.out, "out", "bench/results/latest.json", "`file` the results are written to")
	fs.BoolVar(&o.scale, "scale", false, "measure the scale figures instead (make bench-scale)")
	fs.IntVar(&o.pods, "pods", 200, "pods attached by -scale")
	fs.IntVar(&o.floods, "floods", 5000, "broadcast frames sent by -scale's flood test")
	fs.IntVar(&o.floodRate, "flood-rate", 1000, "broadcast frames per second in -scale's flood test")
	fs.StringVar(&o.fdbTime, "fdb-benchtime", "1s", "-benchtime of -scale's FDB lookup benchmark")
	fs.StringVar(&o.scaleOut, "scale-out", "bench/results/scale.json", "`file` the -scale results are written to")
	fs.StringVar(&o.cniTools, "cni-tools", "bin/cni-tools", "`dir`ectory holding the reference CNI plugins bridge and host-local (make cni-tools)")
	fs.IntVar(&o.cniPods, "cni-pods", 100, "pods attached one after another, then deleted, per variant for the CNI ADD and DEL figures")
	fs.StringVar(&o.only, "only", "", "run only part of the bench: cni (the CNI figures; prints them, writes no file)")
	fs.BoolVar(&o.short, "short", false, "CI mode: 1 round, 2 s per test, fewer pings, exchanges, floods and CNI pods (explicit flags still win)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q (see -h)", fs.Args())
	}
	if o.short {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		shorten := func(name string, apply func()) {
			if !set[name] {
				apply()
			}
		}
		shorten("rounds", func() { o.rounds = 1 })
		shorten("duration", func() { o.duration = 2 * time.Second })
		shorten("pings", func() { o.pings = 200 })
		shorten("rr", func() { o.rrs = 500 })
		shorten("floods", func() { o.floods = 1000 })
		shorten("fdb-benchtime", func() { o.fdbTime = "100ms" })
		shorten("cni-pods", func() { o.cniPods = 20 })
	}
	switch {
	case o.rounds < 1:
		return o, fmt.Errorf("-rounds %d: want at least 1", o.rounds)
	case o.duration < time.Second:
		return o, fmt.Errorf("-duration %s: want at least 1s", o.duration)
	case o.pings < 10 || o.rrs < 10:
		return o, fmt.Errorf("-pings %d, -rr %d: want at least 10 each", o.pings, o.rrs)
	case o.pods < 2 || o.pods > 500:
		return o, fmt.Errorf("-pods %d: want 2 to 500 (the scale pod cidr is a /23)", o.pods)
	case o.floods < 1 || o.floodRate < 1:
		return o, fmt.Errorf("-floods %d, -flood-rate %d: want at least 1 each", o.floods, o.floodRate)
	case o.cniPods < 2 || o.cniPods > cniPodsMax:
		return o, fmt.Errorf("-cni-pods %d: want 2 to %d (the CNI pod subnets are /24s)", o.cniPods, cniPodsMax)
	case o.only != "" && o.only != "cni":
		return o, fmt.Errorf("-only %q: want cni", o.only)
	case o.only != "" && o.scale:
		return o, fmt.Errorf("-only and -scale: pick one")
	}
	return o, nil
}

// progress prints one timestamped progress line.
func progress(w io.Writer, format string, args ...any) {
	fmt.Fprintf(w, "%s  %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}
