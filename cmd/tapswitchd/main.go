// Command tapswitchd is the tapswitch daemon: a userspace Ethernet switch
// between the TAP devices of pod network namespaces, with an HTTP + JSON API
// on a unix socket. See tapswitchctl for the operator's CLI.
package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"tapswitch/daemon"
	"tapswitch/daemon/api"
	"tapswitch/ipam"
	vswitch "tapswitch/switch"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "tapswitchd:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("tapswitchd", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: tapswitchd [flags]\n\nRuns the tapswitch daemon: a userspace switch between pod TAP devices.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	var (
		podCIDR   = fs.String("pod-cidr", daemon.DefaultPodCIDR, "IPv4 `cidr` of the pods: first address is the gateway, last usable the host port")
		podCIDR6  = fs.String("pod-cidr6", "", "optional IPv6 `cidr` of the pods, for dual stack")
		reserve   = fs.String("reserve", "", "pod `addresses` never given to pods, comma-separated: 10.244.0.10, 10.244.0.16/28, 10.244.0.20-10.244.0.29")
		stateDir  = fs.String("state-dir", daemon.DefaultStateDir, "`dir`ectory of the daemon's state")
		socket    = fs.String("socket", api.DefaultSocket, "`path` of the API's unix socket")
		mtu       = fs.Int("mtu", 0, "MTU of the pod interfaces (default 1500; with --peers the underlay's less VXLAN's 50 bytes, 70 over IPv6)")
		noOffload = fs.Bool("no-offloads", false, "turn TSO and checksum offload off on new pod TAPs (the pods' kernels segment instead)")
		queues    = fs.Int("queues", 0, "receive queues per pod TAP (default: CPUs, at most 4)")
		metrics   = fs.String("metrics-addr", "", "TCP `address` to serve Prometheus metrics on, e.g. 127.0.0.1:9650 (off when empty; /metrics is always on the socket)")
		hostPort  = fs.String("host-port", daemon.DefaultHostPort, "`name` of the host port, the TAP in this namespace through which the node reaches pods (none: no host port)")
		dns       = fs.String("dns", "", "upstream DNS `servers` for the gateway's forwarder, comma-separated addr[:port] (default: the nameservers of --resolv-conf; none: no DNS)")
		resolv    = fs.String("resolv-conf", daemon.DefaultResolvConf, "`file` to read upstream DNS servers from when --dns is not given")
		egress    = fs.String("egress", string(daemon.EgressRoute), "how pods' traffic leaves the pod network: `route` (routed to this node's kernel with the pods' own addresses; forwarding on, an nftables table of the daemon's) or proxy (the gateway ends it and re-originates it from the daemon's sockets)")
		cluster   = fs.String("cluster-cidr", "", "`cidrs` of the whole cluster's pod network, comma-separated; route mode masquerades pods' traffic to outside them (default: the pod CIDRs)")
		keepRules = fs.Bool("keep-rules", false, "route mode: leave the nftables table in place when the daemon stops")
		peers     = fs.String("peers", "", "peers `file` of the overlay: a JSON array of {name, address, vtep_mac, pod_cidrs}, re-read when it changes (tapswitchctl node -o json prints this node's entry); empty: no overlay")
		kubecfg   = fs.String("kubeconfig", "", "kubeconfig `file`: the overlay's peers from the cluster's Node objects (flannel's annotations), this node's published; in a pod the in-cluster config is used without it; --peers wins")
		nodeName  = fs.String("node-name", "", "this node's `name` in the peers file or its Node object's (default: $NODE_NAME, else the host name)")
		under     = fs.String("underlay", "", "`address or interface` VXLAN runs over (default: the default route's interface)")
		vxlanPort = fs.Int("vxlan-port", daemon.DefaultVXLANPort, "UDP `port` of VXLAN (flannel's 8472; 4789 is IANA's)")
		vni       = fs.Uint("vni", daemon.DefaultVNI, "VXLAN network identifier (flannel's 1)")
		dialTO    = fs.Duration("dial-timeout", 30*time.Second, "proxy mode: how long an egress TCP connect from the node may take")
		udpIdle   = fs.Duration("udp-idle-timeout", 30*time.Second, "proxy mode: how long an egress UDP flow lives without a datagram")
		aging     = fs.Duration("fdb-aging", 300*time.Second, "how long a learned MAC lives without traffic")
		fdbSize   = fs.Int("fdb-size", 65536, "most MACs the switch learns")
		fdbPort   = fs.Int("fdb-port-limit", 1024, "most MACs learned on one port")
		logLevel  = fs.String("log-level", "info", "log `level`: debug, info, warn or error")
		logFormat = fs.String("log-format", "text", "log `format`: text or json")
	)
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q (see -h)", fs.Args())
	}
	log, err := newLogger(*logLevel, *logFormat)
	if err != nil {
		return err
	}
	// client-go (the overlay's Kubernetes membership) logs through klog.
	klog.SetSlogLogger(log.With("part", "client-go"))
	opts := daemon.Options{
		StateDir:       *stateDir,
		Socket:         *socket,
		MTU:            *mtu,
		MetricsAddr:    *metrics,
		NoOffloads:     *noOffload,
		KeepRules:      *keepRules,
		Peers:          *peers,
		Kubernetes:     *peers == "" && (*kubecfg != "" || os.Getenv("KUBERNETES_SERVICE_HOST") != ""),
		Kubeconfig:     *kubecfg,
		NodeName:       cmp.Or(*nodeName, os.Getenv("NODE_NAME")),
		Underlay:       *under,
		VXLANPort:      *vxlanPort,
		VNI:            uint32(min(*vni, 1<<24)), // checked below
		Queues:         *queues,
		DialTimeout:    *dialTO,
		UDPIdleTimeout: *udpIdle,
		Logger:         log,
		Switch:         vswitch.Options{AgingTime: *aging, FDBSize: *fdbSize, FDBPortLimit: *fdbPort},
	}
	if opts.PodCIDR, err = netip.ParsePrefix(*podCIDR); err != nil {
		return fmt.Errorf("--pod-cidr: %w", err)
	}
	if *podCIDR6 != "" {
		if opts.PodCIDR6, err = netip.ParsePrefix(*podCIDR6); err != nil {
			return fmt.Errorf("--pod-cidr6: %w", err)
		}
	}
	if *vni < 1 || *vni >= 1<<24 {
		return fmt.Errorf("--vni %d: want 1 to %d (24 bits)", *vni, 1<<24-1)
	}
	if opts.Egress, err = daemon.ParseEgressMode(*egress); err != nil {
		return fmt.Errorf("--egress: %w", err)
	}
	if *cluster != "" {
		if opts.ClusterCIDRs, err = parseCIDRs(*cluster); err != nil {
			return fmt.Errorf("--cluster-cidr: %w", err)
		}
		pods := []netip.Prefix{opts.PodCIDR}
		if opts.PodCIDR6.IsValid() {
			pods = append(pods, opts.PodCIDR6)
		}
		if err := daemon.CheckClusterCIDRs(pods, opts.ClusterCIDRs); err != nil {
			return fmt.Errorf("--cluster-cidr: %w", err)
		}
	}
	if opts.Reserve, err = ipam.ParseReserve(*reserve); err != nil {
		return fmt.Errorf("--reserve: %w", err)
	}
	if *hostPort != "none" {
		opts.HostPort = *hostPort
	}
	switch *dns {
	case "none":
	case "":
		if opts.DNS, err = daemon.ReadResolvConf(*resolv); err != nil {
			return fmt.Errorf("--resolv-conf: %w (give --dns servers or --dns none)", err)
		}
		if len(opts.DNS) == 0 {
			log.Warn("no nameserver in resolv.conf; the gateway answers no DNS", "file", *resolv)
		}
	default:
		if opts.DNS, err = daemon.ParseDNSServers(*dns); err != nil {
			return fmt.Errorf("--dns: %w", err)
		}
	}
	d, err := daemon.New(opts)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	err = d.Serve(ctx)
	log.Info("stopped")
	return err
}

// parseCIDRs reads a comma-separated list of prefixes.
func parseCIDRs(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		p, err := netip.ParsePrefix(strings.TrimSpace(f))
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

func newLogger(level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	o := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, o)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, o)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}
