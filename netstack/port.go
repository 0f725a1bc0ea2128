package netstack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	vswitch "tapswitch/switch"
)

// nicID is the stack's only NIC, the one on the switch.
const nicID tcpip.NICID = 1

// Defaults of Options.
const (
	defaultMTU            = 1500
	defaultQueueLen       = 1024
	defaultDialTimeout    = 30 * time.Second
	defaultUDPIdleTimeout = 30 * time.Second
	// minIPv6MTU is the smallest link MTU IPv6 allows (RFC 8200 section 5).
	minIPv6MTU = 1280
	// minIPv4MTU is the smallest MTU every IPv4 host must accept (RFC 791).
	minIPv4MTU = 68
)

// Options configure a Port. The zero value of each optional field means its
// default.
type Options struct {
	// Name is the port's name in the switch's counters (default
	// "netstack").
	Name string
	// MAC is the gateway's address on the switch. Required, unicast.
	MAC vswitch.MAC
	// MTU is the IP MTU of the link (default 1500). Frames are up to
	// MTU+14 bytes.
	MTU int
	// Addrs are the gateway's addresses with their subnet prefixes, such
	// as 10.244.0.1/24 and fd00:244::1/64. At least one; IPv6 needs an MTU
	// of at least 1280. A route for each subnet goes to the switch.
	Addrs []netip.Prefix
	// QueueLen bounds the frames the stack has sent and ReadBatch has not
	// taken yet (default 1024). Beyond it they are dropped and counted.
	QueueLen int
	// Dial opens the host side of an egress flow or of a DNS query to an
	// upstream resolver (default: a net.Dialer in the daemon's own
	// namespace). network is "tcp4", "tcp6", "udp4" or "udp6".
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
	// DialTimeout bounds the host-side connect of an egress TCP flow
	// (default 30s). The pod's SYN stays unanswered meanwhile, as behind
	// a kernel NAT whose far side is slow.
	DialTimeout time.Duration
	// UDPIdleTimeout ends an egress UDP flow after this long without a
	// datagram in either direction (default 30s, conntrack's default).
	UDPIdleTimeout time.Duration
	// DNS are the upstream resolvers the gateway forwards DNS queries on
	// port 53 to. Empty: the gateway does not answer DNS.
	DNS []netip.AddrPort
	// Routed says the switch routes the pods' traffic to addresses outside
	// the pod network past the gateway (the daemon's route mode): the
	// stack then takes only what is addressed to it (ARP, ND, ping, DNS,
	// dials into pods) and runs no egress forwarders. Unset, the gateway
	// terminates that traffic and re-originates it from host sockets
	// (proxy mode, egress.go).
	Routed bool
	// HostAddrs are the host port's addresses: never an egress source.
	// Egress re-originates only pods' traffic, from addresses in the pod
	// network other than these, so the node's own traffic routed through
	// the gateway is refused (TCP gets a RST, UDP is dropped) instead of
	// going round from the host's sockets back into the gateway.
	HostAddrs []netip.Addr
	// Logger receives lifecycle events (default: discard).
	Logger *slog.Logger
}

// Port is the gateway netstack as a vswitch.Port. See the package comment
// for its goroutines and what it drops.
type Port struct {
	opts  Options // with defaults filled in
	log   *slog.Logger
	caps  vswitch.Caps
	pools *vswitch.Pools // frames the stack sends, and UDP segments
	stack *stack.Stack
	clock *stackClock // the stack's clock, see stackClock
	ep    *endpoint

	// segs holds the datagrams of the UDP super-frame WriteBatch is
	// delivering, so cutting one allocates nothing. Only WriteBatch uses
	// it, and the switch calls WriteBatch from one goroutine at a time
	// (vswitch.Port).
	segs []*vswitch.Frame

	// ctx is cancelled by Close; the goroutines of egress flows, DNS and
	// router advertisements end with it and are counted in flows, and
	// ReadBatch returns.
	ctx    context.Context
	cancel context.CancelFunc
	flows  sync.WaitGroup

	// mu guards closed. WriteBatch holds it for reading while it delivers
	// into the stack, so Close never destroys the stack under a delivery.
	mu     sync.RWMutex
	closed bool
	once   sync.Once

	egress *egress // set by startEgress

	dns dnsCounters // DNS forwarder counters, see dns.go

	dropBadFrame atomic.Uint64 // too short, too long or a broken UDP super-frame
	dropNoNIC    atomic.Uint64 // no NIC attached (never expected)
	dropNotOurs  atomic.Uint64 // flooded unicast for another MAC, ARP for another IP
}

var _ vswitch.Port = (*Port)(nil)
var _ vswitch.DropCounter = (*Port)(nil)

// New creates the gateway stack with IPv4, IPv6, ARP, ICMP, TCP and UDP,
// one NIC with opts.Addrs and a route for each subnet. The returned Port is
// ready to be added to a switch; Close stops it.
func New(opts Options) (*Port, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	frameMTU := opts.MTU + header.EthernetMinimumSize
	p := &Port{
		opts:  opts,
		log:   opts.Logger.With("port", opts.Name),
		caps:  vswitch.Caps{GSO: true, MaxFrame: frameMTU},
		pools: vswitch.NewPools(),
	}
	p.ep = newEndpoint(opts.MAC, frameMTU, opts.QueueLen, p.pools)
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.clock = &stackClock{Clock: tcpip.NewStdClock()}
	p.stack = stack.New(stack.Options{
		Clock: p.clock,
		NetworkProtocols: []stack.NetworkProtocolFactory{
			ipv4.NewProtocol,
			// Zero NDP configurations: the gateway is the router, so it
			// neither sends router solicitations nor lets a pod's router
			// advertisement give it addresses or routes. Zero DAD
			// configurations: the addresses come from the daemon, which
			// hands each out once, so they are usable at once instead of
			// tentative for a second.
			// The link-local address is for router advertisements, which
			// must come from one (RFC 4861 section 6.1.2).
			ipv6.NewProtocolWithOptions(ipv6.Options{AutoGenLinkLocal: true}),
			arp.NewProtocol,
		},
		TransportProtocols: []stack.TransportProtocolFactory{
			icmp.NewProtocol4, icmp.NewProtocol6, tcp.NewProtocol, udp.NewProtocol,
		},
	})
	if err := p.configure(opts); err != nil {
		p.cancel()
		p.destroyStack()
		return nil, err
	}
	if !opts.Routed {
		p.startEgress()
	}
	if err := p.startDNS(); err != nil {
		p.Close()
		return nil, err
	}
	p.startRouterAdvertisements()
	p.log.Info("netstack started", "mac", opts.MAC.String(), "mtu", opts.MTU, "addrs", fmt.Sprint(opts.Addrs))
	return p, nil
}

func (o *Options) setDefaults() error {
	if o.MAC.Zero() || o.MAC.Multicast() {
		return fmt.Errorf("netstack: mac %s is not a unicast address", o.MAC)
	}
	if o.MTU == 0 {
		o.MTU = defaultMTU
	}
	if o.MTU < minIPv4MTU || o.MTU+header.EthernetMinimumSize > vswitch.SmallBufSize-vswitch.Headroom {
		return fmt.Errorf("netstack: mtu %d out of range", o.MTU)
	}
	if len(o.Addrs) == 0 {
		return errors.New("netstack: no gateway address")
	}
	for _, a := range o.Addrs {
		switch {
		case !a.IsValid() || a.Addr().Is4In6() || a.Addr().Zone() != "" || a.Addr().IsUnspecified():
			return fmt.Errorf("netstack: bad gateway address %s", a)
		case a.Addr().Is6() && o.MTU < minIPv6MTU:
			return fmt.Errorf("netstack: ipv6 address %s needs an mtu of at least %d, have %d", a, minIPv6MTU, o.MTU)
		}
	}
	if o.QueueLen <= 0 {
		o.QueueLen = defaultQueueLen
	}
	if o.Name == "" {
		o.Name = "netstack"
	}
	if o.Dial == nil {
		o.Dial = (&net.Dialer{}).DialContext
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = defaultDialTimeout
	}
	if o.UDPIdleTimeout <= 0 {
		o.UDPIdleTimeout = defaultUDPIdleTimeout
	}
	for _, u := range o.DNS {
		if !u.IsValid() || u.Port() == 0 {
			return fmt.Errorf("netstack: bad dns upstream %s", u)
		}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// configure creates the NIC, adds the addresses, the subnet routes and a
// default route for each address family. Without Options.Routed the NIC
// is promiscuous (it takes packets for any destination address, which the
// egress forwarders terminate) and spoofing (it answers from those
// addresses).
func (p *Port) configure(opts Options) error {
	if err := p.stack.CreateNICWithOptions(nicID, ethernet.New(p.ep), stack.NICOptions{Name: "switch"}); err != nil {
		return tcpipError("create nic", err)
	}
	if !opts.Routed {
		if err := p.stack.SetPromiscuousMode(nicID, true); err != nil {
			return tcpipError("set promiscuous mode", err)
		}
		if err := p.stack.SetSpoofing(nicID, true); err != nil {
			return tcpipError("set spoofing", err)
		}
	}
	var routes []tcpip.Route
	for _, a := range opts.Addrs {
		addr := tcpip.AddressWithPrefix{Address: tcpipAddress(a.Addr()), PrefixLen: a.Bits()}
		pa := tcpip.ProtocolAddress{Protocol: netProto(a.Addr()), AddressWithPrefix: addr}
		if err := p.stack.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); err != nil {
			return tcpipError("add address "+a.String(), err)
		}
		routes = append(routes, tcpip.Route{Destination: addr.Subnet(), NIC: nicID})
	}
	routes = append(routes,
		tcpip.Route{Destination: header.IPv4EmptySubnet, NIC: nicID},
		tcpip.Route{Destination: header.IPv6EmptySubnet, NIC: nicID})
	p.stack.SetRouteTable(routes)
	return nil
}

// gatewayFor returns the gateway's address in the subnet of pod.
func (p *Port) gatewayFor(pod netip.Addr) (netip.Addr, bool) {
	pod = pod.Unmap()
	for _, pfx := range p.opts.Addrs {
		if pfx.Masked().Contains(pod) {
			return pfx.Addr(), true
		}
	}
	return netip.Addr{}, false
}

// inPodNetwork reports whether a is in one of the gateway's subnets: such
// destinations are pods (or the gateway), never egress.
func (p *Port) inPodNetwork(a netip.Addr) bool {
	_, ok := p.gatewayFor(a)
	return ok
}

// arpForOthers reports whether frame is an ARP request for an address
// that is not the gateway's.
func (p *Port) arpForOthers(frame []byte) bool {
	e := vswitch.Ether(frame)
	if e.Type() != vswitch.EtherTypeARP || len(e.Payload()) < header.ARPSize {
		return false
	}
	a := vswitch.ARP(e.Payload())
	if a.Op() != uint16(header.ARPRequest) {
		return false
	}
	tpa := a.TPA()
	for _, pfx := range p.opts.Addrs {
		if pfx.Addr() == tpa {
			return false
		}
	}
	return true
}

// forUs reports whether the switch meant frame for the gateway: addressed
// to its MAC, broadcast or multicast. A flooded frame for another pod's
// unknown MAC is not, and must not reach a promiscuous stack that would
// answer it.
func (p *Port) forUs(frame []byte) bool {
	dst := vswitch.Ether(frame).Dst()
	return dst == p.opts.MAC || dst.Multicast()
}

// tcpipError converts a gVisor error at the package's edge.
func tcpipError(op string, err tcpip.Error) error {
	return fmt.Errorf("netstack: %s: %s", op, err)
}

// Name is Options.Name.
func (p *Port) Name() string { return p.opts.Name }

// Caps: GSO super-frames and partial checksums are welcome (TCP
// super-frames go into the stack whole, see WriteBatch); ordinary frames
// up to MTU+14. WriteBatch runs the stack's input path, so it is not a
// non-blocking write.
func (p *Port) Caps() vswitch.Caps { return p.caps }

// Queues is 1: all the stack's output goes through one queue, so flows stay
// in order.
func (p *Port) Queues() int { return 1 }

// maxSuperFrame is the largest GSO super-frame taken: an IP packet of 64
// KiB and its Ethernet header.
const maxSuperFrame = header.EthernetMinimumSize + 0xffff

// WriteBatch delivers each frame into the stack and releases it, on the
// caller's goroutine. A TCP super-frame is delivered whole, as one large
// segment, the way the kernel's GRO would hand it up: gVisor's TCP takes
// any segment that fits its window, and one delivery replaces dozens. A
// UDP super-frame is cut into its datagrams first. Frames that are too
// short or too long, or flooded for another MAC, are dropped and counted,
// not errors. It never waits on the stack's output: replies the stack
// sends meanwhile go to the bounded queue. After Close it releases the
// frames and returns 0 and an error wrapping vswitch.ErrClosed. Calls must
// not overlap, as vswitch.Port promises: they share p.segs.
func (p *Port) WriteBatch(frames []*vswitch.Frame) (int, error) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		for _, f := range frames {
			f.Release()
		}
		return 0, fmt.Errorf("netstack: write: %w", vswitch.ErrClosed)
	}
	for _, f := range frames {
		p.writeFrame(f)
		f.Release()
	}
	return len(frames), nil
}

// writeFrame delivers one frame; the caller, WriteBatch, releases it.
func (p *Port) writeFrame(f *vswitch.Frame) {
	gso := f.Offload.GSOType
	switch {
	case f.Len() < header.EthernetMinimumSize,
		gso == vswitch.GSONone && f.Len() > p.caps.MaxFrame,
		f.Len() > maxSuperFrame:
		p.dropBadFrame.Add(1)
	case !p.forUs(f.Bytes()):
		p.dropNotOurs.Add(1)
	case p.arpForOthers(f.Bytes()):
		// The NIC spoofs (for egress), so gVisor would answer ARP for any
		// address and claim the IPs of pods the switch's responder does
		// not know yet. Only the gateway's own addresses are answered.
		p.dropNotOurs.Add(1)
	case gso == vswitch.GSOUDPL4:
		segs, err := vswitch.Segment(p.segs[:0], f, p.pools)
		if err != nil {
			p.dropBadFrame.Add(1)
			return
		}
		for _, s := range segs {
			if !p.ep.deliver(s.Bytes()) {
				p.dropNoNIC.Add(1)
			}
			s.Release()
		}
		// Keep the grown array for the next super-frame, without
		// pointers to the released frames.
		clear(segs)
		p.segs = segs[:0]
	case !p.ep.deliver(f.Bytes()):
		p.dropNoNIC.Add(1)
	}
}

// ReadBatch blocks until the stack has sent at least one frame, then
// returns up to len(frames) of them; ownership passes to the caller. After
// Close it returns vswitch.ErrClosed.
func (p *Port) ReadBatch(q int, frames []*vswitch.Frame) (int, error) {
	if len(frames) == 0 {
		return 0, nil
	}
	done := p.ctx.Done()
	select {
	case <-done:
		return 0, vswitch.ErrClosed
	default:
	}
	select {
	case frames[0] = <-p.ep.out:
	case <-done:
		return 0, vswitch.ErrClosed
	}
	n := 1
	for n < len(frames) {
		select {
		case frames[n] = <-p.ep.out:
			n++
		default:
			return n, nil
		}
	}
	return n, nil
}

// Close stops the stack and waits for its goroutines, makes ReadBatch
// return ErrClosed and releases the frames still queued. It waits for a
// WriteBatch in progress. It is safe to call more than once.
func (p *Port) Close() error {
	p.once.Do(func() {
		p.mu.Lock()
		p.closed = true
		p.mu.Unlock()
		p.ep.closed.Store(true)
		p.cancel()
		p.destroyStack()
		p.flows.Wait()
		p.drain()
		p.log.Info("netstack stopped")
	})
	return nil
}

// destroyStack stops the stack and waits for its goroutines: those
// Stack.Destroy waits for (TCP processors, endpoints' workers) and the
// clock's callbacks running at that moment, which it does not wait for.
func (p *Port) destroyStack() {
	p.stack.Destroy()
	p.clock.wait()
}

// stackClock is the stack's clock: the standard one, except that it knows
// which of the callbacks it runs for the stack (Clock.AfterFunc) are
// running, so that Close can wait for them. Stack.Destroy does not, and
// some hold packets: when link resolution completes, gVisor sends the
// packets that waited for it from a callback scheduled with AfterFunc(0)
// (stack/neighbor_entry.go, notifyCompletionLocked, and
// packetsPendingLinkResolution.dequeue in stack/pending_packets.go). That
// callback takes the packets out of the queue that Destroy releases
// (nic.remove, linkResQueue.cancel) and holds their references until it
// has written them, possibly after Destroy has returned. A callback that
// starts after Destroy finds nothing to do: the NIC is gone and its
// pending packets released.
type stackClock struct {
	tcpip.Clock
	// running is held for reading by each callback while it runs; wait
	// takes it for writing. It guards no data.
	running sync.RWMutex
}

// AfterFunc runs f after d in its own goroutine, as tcpip.Clock does,
// holding c.running for reading meanwhile.
func (c *stackClock) AfterFunc(d time.Duration, f func()) tcpip.Timer {
	return c.Clock.AfterFunc(d, func() {
		c.running.RLock()
		defer c.running.RUnlock()
		f()
	})
}

// wait returns once the callbacks running when it is called have
// returned.
func (c *stackClock) wait() {
	c.running.Lock()
	c.running.Unlock()
}

// drain releases the frames left in the queue. A frame that a late sender
// queues after it is not released but collected with its Port; the
// endpoint's closed flag makes that a narrow race.
func (p *Port) drain() {
	for {
		select {
		case f := <-p.ep.out:
			f.Release()
		default:
			return
		}
	}
}

// Drops reports the frames dropped inside the Port, by reason:
// out_queue_full, out_too_big and out_closed on the stack's send path,
// in_bad_frame and in_no_nic on the way into the stack. Frames refused by a
// WriteBatch after Close are not here: the switch counts those as write
// errors.
func (p *Port) Drops() map[string]uint64 {
	return map[string]uint64{
		"out_queue_full": p.ep.dropQueueFull.Load(),
		"out_too_big":    p.ep.dropTooBig.Load(),
		"out_closed":     p.ep.dropClosed.Load(),
		"in_bad_frame":   p.dropBadFrame.Load(),
		"in_no_nic":      p.dropNoNIC.Load(),
		"in_not_ours":    p.dropNotOurs.Load(),
	}
}
