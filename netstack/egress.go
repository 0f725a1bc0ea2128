package netstack

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

// Egress: TCP and UDP from a pod to an address outside the pod network end
// in the gateway stack and leave again from host sockets opened with
// Options.Dial, as if the gateway were a NAT.
//
//   - TCP (egress_tcp.go): the forwarder hands each new SYN to a flow, which
//     dials the host side first and only then completes the pod's
//     handshake, so a refused connect reaches the pod as a RST, an
//     unreachable destination as an ICMP error and a silent far side as an
//     unanswered SYN. Two goroutines copy the directions, passing on FIN
//     (half-close) and RST both ways.
//   - UDP (egress_udp.go): each (pod address and port, destination address
//     and port) is one flow with its own connected host socket. It ends
//     after Options.UDPIdleTimeout without a datagram either way.
//   - ICMP errors (egress_icmp.go): a host dial that finds the destination
//     unreachable becomes an ICMP or ICMPv6 destination unreachable error
//     to the pod, quoting the packet that started the flow, as a kernel
//     router sends one.
//
// Only pods are egress sources: a SYN or datagram from an address outside
// the pod network or in Options.HostAddrs (the node itself, through its
// host port) is refused, so a node that routes its own traffic through the
// gateway cannot make it dial the node's traffic out again, round and
// round until the flow limits.
//
// Bounds: at most maxTCPFlows and maxUDPFlows flows at once and
// maxTCPHandshakes TCP connects in flight; beyond them a SYN or datagram is
// dropped and counted. A copy buffer is taken from the pool only while data
// is there, so an idle flow holds sockets and goroutine stacks but no
// buffer.
//
// Goroutines, all counted in Port.flows: closeLoop, two per TCP flow (the
// first is the one the forwarder starts for the SYN), two per UDP flow.
// The handlers add a flow's goroutines to Port.flows only under e.mu and
// while closed is unset; closeLoop, counted itself, sets closed under e.mu
// before it ends. So no goroutine joins Port.flows once Close can find it
// at zero, whichever goroutine delivers the packet.

// Limits and sizes of egress.
const (
	// maxTCPFlows bounds the TCP flows being dialled or proxied, like
	// nf_conntrack_max bounds a kernel NAT's table. Each holds a host fd.
	maxTCPFlows = 16384
	// maxUDPFlows bounds the UDP flows.
	maxUDPFlows = 4096
	// maxTCPHandshakes bounds the SYNs whose host dial or pod handshake is
	// in progress (the forwarder's maxInFlight). Beyond it gVisor drops
	// SYNs; the pod retransmits them.
	maxTCPHandshakes = 1024
	// tcpReceiveWindow is the receive buffer of a flow's endpoint, so
	// the most the gateway holds for a pod that sends faster than the
	// far side takes. 1 MiB covers the pod link's bandwidth-delay
	// product many times over; 4 MiB measured no faster on loopback.
	tcpReceiveWindow = 1 << 20
	// copyBufSize is the size of a copy buffer: large, so a busy TCP flow
	// moves data in few system calls, and larger than any UDP datagram
	// (65,535 bytes with headers), so none is cut short.
	copyBufSize = 128 << 10
	// handshakeWakeInterval paces closeLoop's wake-ups of handshakes that
	// Close interrupts; see closeLoop.
	handshakeWakeInterval = 10 * time.Millisecond
)

// EgressStats counts egress flows since New. A TCP flow is one connection
// from a pod; a UDP flow is one pod address and port talking to one
// destination address and port. An unreachable flow is answered with an
// ICMP error (ICMPSent) unless the stack's ICMP rate limit holds it back.
type EgressStats struct {
	TCPActive      uint64 // TCP flows being dialled or proxied now
	TCPTotal       uint64 // TCP flows started: SYNs handed to a host dial
	TCPRefused     uint64 // host dials refused; the pod got a RST
	TCPTimeouts    uint64 // host dials timed out; the pod's SYN went unanswered
	TCPUnreachable uint64 // host dials found the destination unreachable; the pod got an ICMP error
	TCPDropped     uint64 // SYNs dropped: too many flows or connects in flight
	UDPActive      uint64 // UDP flows open now
	UDPTotal       uint64 // UDP flows started
	UDPExpired     uint64 // UDP flows ended by Options.UDPIdleTimeout
	UDPUnreachable uint64 // UDP flows whose dial or first datagram found the destination unreachable; the pod got an ICMP error
	UDPDropped     uint64 // datagrams dropped: flow table full, a socket full or failing
	DialFailures   uint64 // failed host dials, TCP and UDP, refused, unreachable and timed out included
	ICMPSent       uint64 // ICMP and ICMPv6 destination unreachable errors sent to pods
	BadSource      uint64 // egress SYNs (answered with a RST) and datagrams (dropped) from a source that is not a pod
}

// egress holds the forwarders' state. See the comment at the top of this
// file.
type egress struct {
	p    *Port
	log  *slog.Logger
	bufs sync.Pool // *[]byte of copyBufSize

	// maxTCP and maxUDP are maxTCPFlows and maxUDPFlows; tests lower
	// them before any traffic.
	maxTCP, maxUDP int64

	fwd *tcp.Forwarder
	// synDrops is the stack's count of SYNs the forwarder dropped for
	// maxTCPHandshakes (ForwardMaxInFlightDrop), kept here because
	// Stack.Stats copies every counter.
	synDrops *tcpip.StatCounter

	// icmp sends destination unreachable errors to pods; see
	// egress_icmp.go.
	icmp *icmpErrors

	// mu guards closed, tcpFlows and synPending, and is held around
	// every call of fwd's HandlePacket and Complete (see
	// handleTCPPacket). Once closed is set, no flow starts. synPending
	// holds each SYN in flight as an ICMP error would quote it.
	mu         sync.Mutex
	closed     bool
	tcpFlows   map[*tcpFlow]struct{}
	synPending map[stack.TransportEndpointID][]byte

	// tcpActive and udpActive are gauges, also the limits' counts. A
	// flow subtracts its 1 only after it has added it, so they never go
	// below zero.
	tcpActive    atomic.Int64
	udpActive    atomic.Int64
	tcpTotal     atomic.Uint64
	tcpRefused   atomic.Uint64
	tcpTimeouts  atomic.Uint64
	tcpUnreach   atomic.Uint64
	tcpDropped   atomic.Uint64
	udpTotal     atomic.Uint64
	udpExpired   atomic.Uint64
	udpUnreach   atomic.Uint64
	udpDropped   atomic.Uint64
	dialFailures atomic.Uint64
	icmpSent     atomic.Uint64
	badSource    atomic.Uint64
}

// startEgress installs the TCP and UDP forwarders, opens the ICMP error
// endpoints and starts closeLoop.
func (p *Port) startEgress() {
	e := &egress{
		p:          p,
		log:        p.log.With("part", "egress"),
		tcpFlows:   make(map[*tcpFlow]struct{}),
		synPending: make(map[stack.TransportEndpointID][]byte),
		maxTCP:     maxTCPFlows,
		maxUDP:     maxUDPFlows,
		synDrops:   p.stack.Stats().TCP.ForwardMaxInFlightDrop,
	}
	e.bufs.New = func() any {
		b := make([]byte, copyBufSize)
		return &b
	}
	p.egress = e
	e.icmp = newICMPErrors(p, e.log)
	e.fwd = tcp.NewForwarder(p.stack, tcpReceiveWindow, maxTCPHandshakes, e.handleTCP)
	p.stack.SetTransportProtocolHandler(tcp.ProtocolNumber, e.handleTCPPacket)
	p.stack.SetTransportProtocolHandler(udp.ProtocolNumber, e.handleUDP)
	p.flows.Go(e.closeLoop)
}

// EgressStats returns a snapshot of the egress counters, all zero when
// the gateway runs no egress (Options.Routed).
func (p *Port) EgressStats() EgressStats {
	e := p.egress
	if e == nil {
		return EgressStats{}
	}
	return EgressStats{
		TCPActive:      uint64(e.tcpActive.Load()),
		TCPTotal:       e.tcpTotal.Load(),
		TCPRefused:     e.tcpRefused.Load(),
		TCPTimeouts:    e.tcpTimeouts.Load(),
		TCPUnreachable: e.tcpUnreach.Load(),
		TCPDropped:     e.tcpDropped.Load() + e.synDrops.Value(),
		UDPActive:      uint64(e.udpActive.Load()),
		UDPTotal:       e.udpTotal.Load(),
		UDPExpired:     e.udpExpired.Load(),
		UDPUnreachable: e.udpUnreach.Load(),
		UDPDropped:     e.udpDropped.Load(),
		DialFailures:   e.dialFailures.Load(),
		ICMPSent:       e.icmpSent.Load(),
		BadSource:      e.badSource.Load(),
	}
}

// closeLoop waits for Close, then stops every TCP flow: it aborts both
// sides of those that are connected and wakes those in the pod handshake.
// UDP flows and dials watch the context themselves. Last, it closes the
// ICMP error endpoints; a flow that writes to them later gets an error.
//
// gVisor offers no way to cancel the forwarder's handshake
// (ForwarderRequest.CreateEndpoint): it waits for a writable event on the
// flow's queue. A wake-up sent before it registers for that event is lost,
// so closeLoop repeats them until no flow is in the handshake any more.
func (e *egress) closeLoop() {
	<-e.p.ctx.Done()
	defer e.icmp.close()
	tick := time.NewTicker(handshakeWakeInterval)
	defer tick.Stop()
	for first := true; ; first = false {
		e.mu.Lock()
		e.closed = true
		waiting := 0
		for f := range e.tcpFlows {
			if first {
				f.abortLocked()
			}
			if f.inHandshakeLocked() {
				f.wakeHandshake()
				waiting++
			}
		}
		e.mu.Unlock()
		if waiting == 0 {
			return
		}
		<-tick.C
	}
}

// dial opens the host side of a flow to dst within Options.DialTimeout.
func (e *egress) dial(proto string, dst netip.AddrPort) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(e.p.ctx, e.p.opts.DialTimeout)
	defer cancel()
	return e.p.opts.Dial(ctx, hostNetwork(proto, dst.Addr()), dst.String())
}

// getBuf takes a copy buffer from the pool; putBuf returns it.
func (e *egress) getBuf() *[]byte  { return e.bufs.Get().(*[]byte) }
func (e *egress) putBuf(b *[]byte) { e.bufs.Put(b) }

// isEgress reports whether the gateway re-originates traffic to dst, an
// address outside the pod network: a unicast address a router forwards
// (not loopback, link-local, multicast, unspecified or broadcast; RFC 1812
// section 5.3.7, RFC 4291 section 2.5.6), or an IPv4 link-local one.
// IPv4-mapped IPv6 addresses are refused: a host socket would take them to
// IPv4.
//
// IPv4 link-local destinations (169.254.0.0/16) are node services by
// convention: the cloud metadata server at 169.254.169.254, NodeLocal
// DNSCache at 169.254.20.10. Pods reach them through the node, as behind
// a kernel NAT, so the host dials them from its own namespace, where they
// are on the node's link or on the node itself. The gateway opens a
// connection of its own rather than forwarding the pod's packets, so RFC
// 3927 section 7 (routers do not forward link-local packets) does not
// stand in the way. IPv6 link-local destinations (fe80::/10) stay
// excluded: one is meaningful only with a zone, the link it is on, and
// for a pod that link is the pod network itself, which the gateway
// never re-originates to; a host socket would need to guess a zone among
// the node's interfaces.
func (p *Port) isEgress(dst netip.Addr) bool {
	if dst.Is4In6() || p.inPodNetwork(dst) {
		return false
	}
	return dst.IsGlobalUnicast() || dst.Is4() && dst.IsLinkLocalUnicast()
}

// isPodSource reports whether the gateway re-originates traffic from src:
// an address in the pod network that is not one of Options.HostAddrs. The
// node's own traffic, through its host port or from any other address, is
// never egress; see the comment at the top of this file.
func (p *Port) isPodSource(src netip.Addr) bool {
	src = src.Unmap()
	if !p.inPodNetwork(src) {
		return false
	}
	for _, h := range p.opts.HostAddrs {
		if h.Unmap() == src {
			return false
		}
	}
	return true
}

// isLocal reports whether a is one of the gateway's own addresses,
// link-local ones included. An IPv4-mapped IPv6 address never is: New
// refuses them as gateway addresses.
func (p *Port) isLocal(a netip.Addr) bool {
	return !a.Is4In6() && p.stack.CheckLocalAddress(nicID, netProto(a), tcpipAddress(a)) != 0
}

// isTimeout reports whether a dial failed by running out of time.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}

// isRefused reports whether a dial or read failed on a RST or an ICMP port
// unreachable.
func isRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

// dialFailed counts a failed host dial and reports what the pod gets: a
// RST only when the far side refused a TCP connection (reset), an ICMP
// error when the host found the destination unreachable (unreach is not
// notUnreachable), and otherwise nothing, as for a time-out. A dial that
// Close interrupted is not a failure.
func (e *egress) dialFailed(proto string, err error) (reset bool, unreach unreachable) {
	if e.p.ctx.Err() != nil {
		return false, notUnreachable
	}
	e.dialFailures.Add(1)
	unreach = unreachableKind(err)
	switch {
	case proto != "tcp":
		if unreach != notUnreachable {
			e.udpUnreach.Add(1)
		}
	case isRefused(err):
		e.tcpRefused.Add(1)
		return true, notUnreachable
	case unreach != notUnreachable:
		e.tcpUnreach.Add(1)
	case isTimeout(err):
		e.tcpTimeouts.Add(1)
	}
	return false, unreach
}
