package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"tapswitch/daemon/api"
	"tapswitch/ipam"
	"tapswitch/netstack"
	"tapswitch/nodenet"
	vswitch "tapswitch/switch"
)

// Defaults of the daemon's flags; DESIGN.md fixes them.
const (
	DefaultPodCIDR  = "10.244.0.0/24"
	DefaultStateDir = "/var/lib/tapswitch"
	DefaultMTU      = 1500
)

// Options configure a Daemon.
type Options struct {
	PodCIDR  netip.Prefix // required
	PodCIDR6 netip.Prefix // optional
	// Reserve are addresses of the pod CIDRs never given to pods, besides
	// the network, broadcast, gateway and host port addresses.
	Reserve  []ipam.Range
	StateDir string
	Socket   string
	MTU      int
	// NoOffloads turns TSO/checksum offload off on new pod TAPs: the
	// pods' kernels then segment and checksum before the switch sees a
	// frame. Offloads are on by default.
	NoOffloads bool
	// Queues is the number of receive queues of each new pod TAP
	// (default: the number of CPUs, at most 4).
	Queues int
	// MetricsAddr, if set, is a TCP address to serve /metrics on, besides
	// the unix socket.
	MetricsAddr string
	// HostPort names the host port, the TAP in the daemon's namespace
	// through which the node reaches pods without NAT (tapswitchd's
	// default: tsw0). Empty: no host port.
	HostPort string
	// DNS are the upstream resolvers the gateway forwards pods' DNS
	// queries to. Empty: the gateway answers no DNS, and pods are given
	// no nameserver.
	DNS []netip.AddrPort
	// Egress is how pods' traffic leaves the pod network (default
	// EgressRoute; see route.go).
	Egress EgressMode
	// ClusterCIDRs are where pods' traffic is not masqueraded in route
	// mode (default: the pod CIDRs). They must contain the pod CIDRs.
	ClusterCIDRs []netip.Prefix
	// KeepRules leaves the node's nftables table in place on Close.
	KeepRules bool
	// Peers is the peers file of the overlay (overlay.go); empty: no
	// overlay. NodeName names this node in it (default: the host name),
	// Underlay is the address or interface VXLAN runs over (default: the
	// default route's), VXLANPort and VNI default to flannel's 8472 and
	// 1. Without an MTU, pods get the underlay's less VXLAN's overhead.
	Peers string
	// Kubernetes takes the overlay's peers from the cluster's Node
	// objects instead (and publishes this node's as flannel does), with
	// the client of Kubeconfig, or in-cluster config when it is empty.
	Kubernetes bool
	Kubeconfig string
	NodeName   string
	Underlay   string
	VXLANPort  int
	VNI        uint32
	// DialTimeout and UDPIdleTimeout tune egress (see netstack.Options).
	DialTimeout    time.Duration
	UDPIdleTimeout time.Duration
	Switch         vswitch.Options
	Logger         *slog.Logger
}

// Daemon is tapswitchd: the switch, the attached pods, their addresses and
// the API on the unix socket.
//
// Goroutines: the switch's (see package vswitch) and the HTTP server's,
// all stopped by Close. Pod changes are serialized by mu, which is never
// held across device creation: an ID is reserved first, the TAP built
// without the lock, and the pod published or the reservation undone.
type Daemon struct {
	opts  Options
	log   *slog.Logger
	sw    *vswitch.Switch
	gw    *netstack.Port // the pods' gateway, a port of sw
	state *stateFile

	gwPortID, hostPortID vswitch.PortID // 0: none

	// Route mode (route.go): the node's nftables table, and rulesLoop's
	// stop and done channels. rulesStale, guarded by mu, says the last
	// sync failed.
	rules      *nodenet.Rules
	rulesStop  chan struct{}
	rulesDone  chan struct{}
	rulesStale bool

	ovl *overlayState // the overlay (overlay.go); nil without --peers

	mu       sync.Mutex // guards pods, forwards
	pods     map[string]*podEntry
	ipam     *ipam.Allocator           // pods' addresses, on disk in StateDir/ipam.db
	forwards map[forwardKey]*forwarder // port forwards, see forwards.go

	metrics http.Handler
	ln      net.Listener
	srv     *http.Server
	msrv    *http.Server // on MetricsAddr, if set
}

// podEntry is a pod in the registry.
type podEntry struct {
	api.Pod
	state podState
}

// podState is where a pod is in its life. Pending states are saved too, so
// a restart can finish what a crash interrupted.
type podState string

const (
	podAdding   podState = "adding"   // reserved; its TAP may exist
	podReady    podState = ""         // attached, or detached after a failure
	podDeleting podState = "deleting" // its TAP may still exist
)

// New validates opts, loads the saved pods, re-attaches their TAPs and
// returns a daemon that is not yet serving.
func New(opts Options) (*Daemon, error) {
	var under underlay
	if opts.overlay() {
		var err error
		if under, err = resolveUnderlay(opts.Underlay); err != nil {
			return nil, err
		}
		if opts.MTU == 0 {
			opts.MTU = under.mtu - vxlanOverhead(under.addr)
		}
	}
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	d := &Daemon{opts: opts, log: opts.Logger, pods: make(map[string]*podEntry), forwards: make(map[forwardKey]*forwarder)}
	var err error
	if err := os.MkdirAll(opts.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	d.state, err = openState(filepath.Join(opts.StateDir, "pods.json"))
	if err != nil {
		return nil, err
	}
	if d.ipam, err = openIPAM(opts, d.log); err != nil {
		d.state.close()
		return nil, err
	}
	d.metrics = d.metricsHandler()
	swOpts := opts.Switch
	swOpts.Logger = d.log
	d.sw = vswitch.New(swOpts)
	if err := d.startGateway(); err != nil {
		d.closeStores()
		return nil, err
	}
	if err := d.ensureHostPort(); err != nil {
		d.closeStores()
		return nil, err
	}
	if err := d.restore(); err != nil {
		d.closeStores()
		return nil, err
	}
	if opts.Egress == EgressProxy && opts.HostPort != "" {
		d.removeLeftoverRules()
	}
	if opts.Egress == EgressRoute {
		if err := d.startRouting(); err != nil {
			if serr := d.stopRouting(); serr != nil {
				d.log.Error("undo route mode", "err", serr)
			}
			d.closeStores()
			return nil, err
		}
	}
	if opts.overlay() {
		if err := d.startOverlay(under); err != nil {
			d.stopOverlay()
			if serr := d.stopRouting(); serr != nil {
				d.log.Error("undo route mode", "err", serr)
			}
			d.closeStores()
			return nil, err
		}
	}
	return d, nil
}

// overlay reports whether the overlay runs: a source of peers is given.
func (o *Options) overlay() bool { return o.Peers != "" || o.Kubernetes }

// setDefaults fills in the defaults of o and checks it.
func (o *Options) setDefaults() error {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.StateDir == "" {
		o.StateDir = DefaultStateDir
	}
	if o.Socket == "" {
		o.Socket = api.DefaultSocket
	}
	if o.MTU == 0 {
		o.MTU = DefaultMTU
	}
	if o.MTU < 576 || o.MTU > 9000 {
		return fmt.Errorf("mtu %d: want 576 to 9000", o.MTU)
	}
	if o.Queues == 0 {
		o.Queues = min(runtime.NumCPU(), 4)
	}
	if o.Queues < 1 || o.Queues > 16 {
		return fmt.Errorf("queues %d: want 1 to 16", o.Queues)
	}
	if o.Egress == "" {
		o.Egress = EgressRoute
	}
	if o.Peers != "" && o.Kubernetes {
		return errors.New("peers come from a peers file or from Kubernetes, not both")
	}
	if o.overlay() {
		if o.NodeName == "" {
			name, err := os.Hostname()
			if err != nil {
				return fmt.Errorf("node name: %w (give --node-name)", err)
			}
			o.NodeName = name
		}
		if o.VXLANPort == 0 {
			o.VXLANPort = DefaultVXLANPort
		}
		if o.VXLANPort < 1 || o.VXLANPort > 65535 {
			return fmt.Errorf("vxlan port %d: want 1 to 65535", o.VXLANPort)
		}
		if o.VNI == 0 {
			o.VNI = DefaultVNI
		}
		if o.VNI >= 1<<24 {
			return fmt.Errorf("vni %d: want 1 to %d (24 bits)", o.VNI, 1<<24-1)
		}
	}
	if _, err := ParseEgressMode(string(o.Egress)); err != nil {
		return fmt.Errorf("egress: %w", err)
	}
	if !o.PodCIDR.Addr().Is4() {
		return fmt.Errorf("pod cidr %q: want an IPv4 cidr", o.PodCIDR)
	}
	pods := []netip.Prefix{o.PodCIDR}
	if o.PodCIDR6.IsValid() {
		if !o.PodCIDR6.Addr().Is6() || o.PodCIDR6.Addr().Is4In6() {
			return fmt.Errorf("pod cidr6 %s: want an IPv6 cidr", o.PodCIDR6)
		}
		pods = append(pods, o.PodCIDR6)
	}
	if len(o.ClusterCIDRs) > 0 {
		if err := CheckClusterCIDRs(pods, o.ClusterCIDRs); err != nil {
			return err
		}
	}
	if o.Egress == EgressRoute && o.HostPort == "" {
		return errors.New("route mode needs the host port (no host port goes with proxy mode)")
	}
	return nil
}

// Serve listens on the unix socket and serves the API until ctx is done,
// then shuts down: the API first, then the switch. TAP devices persist, so
// a restarted daemon re-attaches every pod.
func (d *Daemon) Serve(ctx context.Context) error {
	ln, err := listenUnix(d.opts.Socket, d.log)
	if err != nil {
		d.Close()
		return err
	}
	d.ln = ln
	var mln net.Listener
	if d.opts.MetricsAddr != "" {
		if mln, err = net.Listen("tcp", d.opts.MetricsAddr); err != nil {
			ln.Close()
			d.Close()
			return fmt.Errorf("metrics: %w", err)
		}
	}
	d.srv = &http.Server{Handler: d.handler(), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 2)
	go serveLoop(d.srv, ln, errc)
	if mln != nil {
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", d.metrics)
		d.msrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go serveLoop(d.msrv, mln, errc)
		d.log.Info("serving metrics", "addr", mln.Addr())
	}
	d.log.Info("serving", "socket", d.opts.Socket, "pod_cidr", d.opts.PodCIDR, "pod_cidr6", d.opts.PodCIDR6, "state_dir", d.opts.StateDir)

	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	shutErr := d.srv.Shutdown(sctx)
	if d.msrv != nil {
		shutErr = errors.Join(shutErr, d.msrv.Shutdown(sctx))
	}
	if err == nil || errors.Is(err, http.ErrServerClosed) {
		err = shutErr
	}
	return errors.Join(err, d.Close())
}

// serveLoop serves srv on ln until Shutdown, then reports why it ended.
func serveLoop(srv *http.Server, ln net.Listener, errc chan<- error) {
	errc <- srv.Serve(ln)
}

// Close stops the switch and closes every TAP fd. It does not remove
// devices or forget pods: they are re-attached on the next start.
func (d *Daemon) Close() error {
	d.stopOverlay()
	d.closeForwards()
	err := errors.Join(d.stopRouting(), d.sw.Close())
	if d.ln != nil {
		os.Remove(d.opts.Socket)
	}
	return errors.Join(err, d.ipam.Close(), d.state.close())
}

// closeStores undoes a New that failed after the stores and the switch
// were opened.
func (d *Daemon) closeStores() {
	d.sw.Close()
	d.ipam.Close()
	d.state.close()
}

// Switch returns the daemon's switch, for tests and in-process users.
func (d *Daemon) Switch() *vswitch.Switch { return d.sw }
