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
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
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
//     handshake, so a refused connect reaches the pod as a RST and a silent
//     far side as an unanswered SYN. Two goroutines copy the directions,
//     passing on FIN (half-close) and RST both ways.
//   - UDP (egress_udp.go): each (pod address and port, destination address
//     and port) is one flow with its own connected host socket. It ends
//     after Options.UDPIdleTimeout without a datagram either way.
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
// destination address and port.
type EgressStats struct {
	TCPActive    uint64 // TCP flows being dialled or proxied now
	TCPTotal     uint64 // TCP flows started: SYNs handed to a host dial
	TCPRefused   uint64 // host dials refused; the pod got a RST
	TCPTimeouts  uint64 // host dials timed out; the pod's SYN went unanswered
	TCPDropped   uint64 // SYNs dropped: too many flows or connects in flight
	UDPActive    uint64 // UDP flows open now
	UDPTotal     uint64 // UDP flows started
	UDPExpired   uint64 // UDP flows ended by Options.UDPIdleTimeout
	UDPDropped   uint64 // datagrams dropped: flow table full, a socket full or failing
	DialFailures uint64 // failed host dials, TCP and UDP, refused and timed out included
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

	// mu guards closed, tcpFlows and synPending, and is held around
	// every call of fwd's HandlePacket and Complete (see
	// handleTCPPacket). Once closed is set, no flow starts.
	mu         sync.Mutex
	closed     bool
	tcpFlows   map[*tcpFlow]struct{}
	synPending map[stack.TransportEndpointID]struct{}

	tcpActive    atomic.Int64 // a gauge, also the limit's count
	udpActive    atomic.Int64
	tcpTotal     atomic.Uint64
	tcpRefused   atomic.Uint64
	tcpTimeouts  atomic.Uint64
	tcpDropped   atomic.Uint64
	udpTotal     atomic.Uint64
	udpExpired   atomic.Uint64
	udpDropped   atomic.Uint64
	dialFailures atomic.Uint64
}

// startEgress installs the TCP and UDP forwarders and starts closeLoop.
func (p *Port) startEgress() {
	e := &egress{
		p:          p,
		log:        p.log.With("part", "egress"),
		tcpFlows:   make(map[*tcpFlow]struct{}),
		synPending: make(map[stack.TransportEndpointID]struct{}),
		maxTCP:     maxTCPFlows,
		maxUDP:     maxUDPFlows,
	}
	e.bufs.New = func() any {
		b := make([]byte, copyBufSize)
		return &b
	}
	p.egress = e
	e.fwd = tcp.NewForwarder(p.stack, tcpReceiveWindow, maxTCPHandshakes, e.handleTCP)
	p.stack.SetTransportProtocolHandler(tcp.ProtocolNumber, e.handleTCPPacket)
	p.stack.SetTransportProtocolHandler(udp.ProtocolNumber, e.handleUDP)
	p.flows.Go(e.closeLoop)
}

// EgressStats returns a snapshot of the egress counters.
func (p *Port) EgressStats() EgressStats {
	e := p.egress
	return EgressStats{
		TCPActive:    uint64(max(e.tcpActive.Load(), 0)),
		TCPTotal:     e.tcpTotal.Load(),
		TCPRefused:   e.tcpRefused.Load(),
		TCPTimeouts:  e.tcpTimeouts.Load(),
		TCPDropped:   e.tcpDropped.Load() + p.stack.Stats().TCP.ForwardMaxInFlightDrop.Value(),
		UDPActive:    uint64(max(e.udpActive.Load(), 0)),
		UDPTotal:     e.udpTotal.Load(),
		UDPExpired:   e.udpExpired.Load(),
		UDPDropped:   e.udpDropped.Load(),
		DialFailures: e.dialFailures.Load(),
	}
}

// closeLoop waits for Close, then stops every TCP flow: it aborts both
// sides of those that are connected and wakes those in the pod handshake.
// UDP flows and dials watch the context themselves.
//
// gVisor offers no way to cancel the forwarder's handshake
// (ForwarderRequest.CreateEndpoint): it waits for a writable event on the
// flow's queue. A wake-up sent before it registers for that event is lost,
// so closeLoop repeats them until no flow is in the handshake any more.
func (e *egress) closeLoop() {
	<-e.p.ctx.Done()
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
	network := proto + "4"
	if dst.Addr().Is6() {
		network = proto + "6"
	}
	ctx, cancel := context.WithTimeout(e.p.ctx, e.p.opts.DialTimeout)
	defer cancel()
	return e.p.opts.Dial(ctx, network, dst.String())
}

// getBuf takes a copy buffer from the pool; putBuf returns it.
func (e *egress) getBuf() *[]byte  { return e.bufs.Get().(*[]byte) }
func (e *egress) putBuf(b *[]byte) { e.bufs.Put(b) }

// isEgress reports whether the gateway re-originates traffic to dst: a
// unicast address a router forwards (not loopback, link-local, multicast,
// unspecified or broadcast; RFC 1812 section 5.3.7, RFC 4291 section
// 2.5.6) outside the pod network. IPv4-mapped IPv6 addresses are refused:
// a host socket would take them to IPv4.
func (p *Port) isEgress(dst netip.Addr) bool {
	return dst.IsGlobalUnicast() && !dst.Is4In6() && !p.inPodNetwork(dst)
}

// isLocal reports whether a is one of the gateway's own addresses,
// link-local ones included.
func (p *Port) isLocal(a tcpip.Address) bool {
	proto := ipv4.ProtocolNumber
	if a.BitLen() == 128 {
		proto = ipv6.ProtocolNumber
	}
	return p.stack.CheckLocalAddress(nicID, proto, a) != 0
}

// addrPort converts a gVisor address and port.
func addrPort(a tcpip.Address, port uint16) netip.AddrPort {
	ip, _ := netip.AddrFromSlice(a.AsSlice())
	return netip.AddrPortFrom(ip, port)
}

// isTimeout reports whether a dial failed by running out of time.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}

// isRefused reports whether a dial or read failed on a RST or an ICMP port
// unreachable.
func isRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

// dialFailed counts a failed host dial and reports whether the pod gets a
// RST: only when the far side refused a TCP connection. A dial that Close
// interrupted is not a failure.
func (e *egress) dialFailed(proto string, err error) (reset bool) {
	if e.p.ctx.Err() != nil {
		return false
	}
	e.dialFailures.Add(1)
	if proto != "tcp" {
		return false
	}
	switch {
	case isRefused(err):
		e.tcpRefused.Add(1)
		return true
	case isTimeout(err):
		e.tcpTimeouts.Add(1)
	}
	return false
}
