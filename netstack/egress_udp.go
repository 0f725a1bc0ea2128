package netstack

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// udpFlow is one pod address and port talking UDP to one destination
// address and port, re-originated from a connected host socket. It ends
// after Options.UDPIdleTimeout without a datagram either way, as a
// conntrack entry does; the pod's next datagram starts a new flow.
type udpFlow struct {
	e        *egress
	src, dst netip.AddrPort
	ep       tcpip.Endpoint // connected to the pod, from dst
	wq       waiter.Queue
	host     *hostConn
	w        tcpip.SliceWriter // podToHostLoop's target, here so reads do not allocate

	// quote is the flow's first datagram as an ICMP error quotes it
	// (egress_icmp.go), kept until that datagram has been sent; only the
	// flow's goroutine uses it.
	quote []byte

	start time.Time
	last  atomic.Int64 // time of the latest datagram either way, as time.Since(start)
}

// handleUDP handles a datagram that matches no endpoint, on the goroutine
// that delivers it into the stack. For an egress destination and a pod
// source it opens a flow: an endpoint connected to the pod, which gets
// this datagram and from then on the flow's next ones, and a goroutine for
// the host side. A datagram to an egress destination from another source
// is dropped and counted (see the comment in egress.go).
//
// It does what udp.Forwarder does, without its copy of the packet: that
// copy is never released (gVisor's ForwarderRequest keeps a Clone of the
// packet and nothing DecRefs it), which the leak checker reports. The
// request here lives only during this call, while the caller holds its
// reference to pkt.
func (e *egress) handleUDP(id stack.TransportEndpointID, pkt *stack.PacketBuffer) bool {
	f := &udpFlow{
		e:   e,
		src: addrPort(id.RemoteAddress, id.RemotePort),
		dst: addrPort(id.LocalAddress, id.LocalPort),
	}
	if !e.p.isEgress(f.dst.Addr()) {
		// Not handled for the gateway's own addresses, so the stack
		// answers port unreachable (RFC 1122 section 4.1.3.1).
		// Anything else is dropped: other pods, multicast and
		// broadcast are not the gateway's to answer.
		return !e.p.isLocal(f.dst.Addr())
	}
	if !e.p.isPodSource(f.src.Addr()) {
		e.badSource.Add(1)
		return true
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return true
	}
	if e.udpActive.Load() >= e.maxUDP {
		e.udpDropped.Add(1)
		return true
	}
	// Quoted only now, for a flow that starts, and before the endpoint
	// takes the packet.
	f.quote = e.icmp.quote(pkt)
	ep, err := udp.NewForwarderRequest(e.p.stack, id, pkt).CreateEndpoint(&f.wq)
	if err != nil {
		e.udpDropped.Add(1)
		return true
	}
	f.ep = ep
	f.start = time.Now()
	e.udpActive.Add(1)
	e.udpTotal.Add(1)
	e.p.flows.Go(f.run)
	return true
}

// run is the flow's goroutine: it dials the host side, starts
// hostToPodLoop and runs podToHostLoop, which decides when the flow ends.
// Datagrams the pod sends during the dial wait in the endpoint. A dial that
// finds the destination unreachable ends the flow with an ICMP error to
// the pod about the first datagram; the pod's next datagram starts a new
// flow and dials again, as a kernel router looks up its route again.
func (f *udpFlow) run() {
	e := f.e
	defer e.udpActive.Add(-1)
	defer f.ep.Close()
	conn, err := e.dial("udp", f.dst)
	if err != nil {
		if _, unreach := e.dialFailed("udp", err); unreach != notUnreachable {
			e.sendUnreachable(f.src.Addr(), unreach, f.quote)
		}
		e.log.Debug("egress udp dial failed", "src", f.src, "dst", f.dst, "err", err)
		return
	}
	f.host = newHostConn(conn)
	hostDone := make(chan struct{})
	e.p.flows.Go(func() {
		defer close(hostDone)
		f.hostToPodLoop()
	})
	expired := f.podToHostLoop(hostDone)
	f.host.Close()
	<-hostDone
	if expired {
		e.udpExpired.Add(1)
	}
	e.log.Debug("egress udp flow closed", "src", f.src, "dst", f.dst, "expired", expired)
}

// touch records a datagram, for the idle timeout.
func (f *udpFlow) touch() { f.last.Store(int64(time.Since(f.start))) }

// podToHostLoop sends the pod's datagrams to the host side until the flow
// has been idle for Options.UDPIdleTimeout (it returns true), Close, or
// the end of the other direction.
func (f *udpFlow) podToHostLoop(hostDone <-chan struct{}) (expired bool) {
	entry, ch := waiter.NewChannelEntry(waiter.ReadableEvents | waiter.EventHUp | waiter.EventErr)
	f.wq.EventRegister(&entry)
	defer f.wq.EventUnregister(&entry)
	idle := f.e.p.opts.UDPIdleTimeout
	timer := time.NewTimer(idle)
	defer timer.Stop()
	for {
		if !f.copyPodToHost() {
			return false
		}
		select {
		case <-ch:
		case <-timer.C:
			quiet := time.Since(f.start) - time.Duration(f.last.Load())
			if quiet >= idle {
				return true
			}
			timer.Reset(idle - quiet)
		case <-hostDone:
			return false
		case <-f.e.p.ctx.Done():
			return false
		}
	}
}

// copyPodToHost sends the datagrams waiting in the endpoint. It reports
// false when the endpoint or the host socket is closed.
func (f *udpFlow) copyPodToHost() bool {
	b := f.e.getBuf()
	defer f.e.putBuf(b)
	for {
		f.w = tcpip.SliceWriter(*b)
		res, terr := f.ep.Read(&f.w, tcpip.ReadOptions{})
		switch terr.(type) {
		case nil:
		case *tcpip.ErrWouldBlock:
			return true
		default:
			return false
		}
		f.touch()
		if res.Count < res.Total {
			// Larger than copyBufSize: cannot happen for IP.
			f.e.udpDropped.Add(1)
			continue
		}
		_, err := f.host.Write((*b)[:res.Count])
		quote := f.quote
		f.quote = nil
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return false
			}
			// A full socket buffer, or an earlier datagram's port
			// unreachable (ECONNREFUSED): lost, as on a wire. If the
			// first datagram finds the destination unreachable, the
			// pod learns it as from a router; later datagrams are
			// not quoted, so their loss is silent.
			f.e.udpDropped.Add(1)
			if u := unreachableKind(err); u != notUnreachable && quote != nil {
				f.e.udpUnreach.Add(1)
				f.e.sendUnreachable(f.src.Addr(), u, quote)
			}
		}
	}
}

// hostToPodLoop sends the far side's datagrams to the pod until the host
// socket is closed.
func (f *udpFlow) hostToPodLoop() {
	var r bytes.Reader
	for {
		err := f.host.awaitData()
		if err == nil {
			err = f.copyHostToPod(&r)
		}
		// A port unreachable from the far side is reported once on a
		// connected socket; the flow goes on, as conntrack's does.
		if err != nil && !isRefused(err) {
			return
		}
	}
}

// copyHostToPod reads one datagram from the host side and sends it to the
// pod. A datagram the endpoint cannot take is dropped and counted.
func (f *udpFlow) copyHostToPod(r *bytes.Reader) error {
	b := f.e.getBuf()
	defer f.e.putBuf(b)
	n, err := f.host.Read(*b)
	if err != nil {
		return err
	}
	f.touch()
	r.Reset((*b)[:n])
	if _, terr := f.ep.Write(r, tcpip.WriteOptions{}); terr != nil {
		f.e.udpDropped.Add(1)
	}
	return nil
}
