package netstack

import (
	"errors"
	"io"
	"net/netip"
	"sync"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// tcpFlow is one TCP connection from a pod, re-originated from a host
// socket. Its life: dial the host side, complete the pod's handshake, copy
// both directions (podToHostLoop on the flow's goroutine, hostToPodLoop on
// a second one), close both sides.
type tcpFlow struct {
	e        *egress
	req      *tcp.ForwarderRequest
	id       stack.TransportEndpointID
	src, dst netip.AddrPort
	wq       waiter.Queue

	// host and ep are set under e.mu once they exist, so closeLoop can
	// abort them; handshakeDone tells it to stop waking the handshake.
	// The flow leaves e.tcpFlows before it closes them.
	host          *hostConn
	ep            tcpip.Endpoint
	handshakeDone bool

	pod          *gonet.TCPConn    // writes to the pod, with waiting for its window
	w            tcpip.SliceWriter // podToHostLoop's target, here so reads do not allocate
	podAbortOnce sync.Once
}

// handleTCPPacket is the stack's handler for TCP segments that match no
// endpoint. It passes them to the forwarder, which starts a goroutine
// running handleTCP for each new SYN. That goroutine joins Port.flows
// here, when it is started, so Close waits for it even if it has not run
// yet: it holds a reference to the SYN.
//
// The forwarder does not say whether it started one. It did if it handled
// the segment (a valid SYN) and neither ignored it as a retransmission of
// a SYN in flight nor dropped it for maxTCPHandshakes (counted in
// ForwardMaxInFlightDrop). synPending mirrors its set of SYNs in flight:
// e.mu is held around every HandlePacket and Complete, the only calls that
// change that set, so the two stay equal. With each SYN it keeps the quote
// of an ICMP error about it (egress_icmp.go), for a dial that finds the
// destination unreachable; the forwarder's request does not give the
// packet back. After Close has begun, segments are dropped.
func (e *egress) handleTCPPacket(id stack.TransportEndpointID, pkt *stack.PacketBuffer) bool {
	drops := e.synDrops
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return true
	}
	_, inFlight := e.synPending[id]
	dropped := drops.Value()
	handled := e.fwd.HandlePacket(id, pkt)
	if handled && !inFlight && drops.Value() == dropped {
		e.synPending[id] = e.icmp.quote(pkt)
		e.p.flows.Add(1)
	}
	return handled
}

// synQuote returns the quote of the SYN of a request not yet completed.
func (e *egress) synQuote(id stack.TransportEndpointID) []byte {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.synPending[id]
}

// complete completes a forwarder request; see handleTCPPacket.
func (e *egress) complete(req *tcp.ForwarderRequest, id stack.TransportEndpointID, reset bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	req.Complete(reset)
	delete(e.synPending, id)
}

// handleTCP is the forwarder's handler for a new SYN, on the goroutine the
// forwarder started for it (counted in Port.flows by handleTCPPacket). An
// egress SYN from a pod becomes a flow, run on this goroutine.
func (e *egress) handleTCP(req *tcp.ForwarderRequest) {
	defer e.p.flows.Done()
	id := req.ID()
	f := &tcpFlow{
		e:   e,
		req: req,
		id:  id,
		src: addrPort(id.RemoteAddress, id.RemotePort),
		dst: addrPort(id.LocalAddress, id.LocalPort),
	}
	if !e.p.isEgress(f.dst.Addr()) {
		// Not egress. A pod address or the gateway's own answers like a
		// host with no listener, with a RST (RFC 9293 section
		// 3.10.7.1); anything else (multicast, broadcast, loopback) is
		// not a destination at all and gets nothing.
		e.complete(req, id, e.p.inPodNetwork(f.dst.Addr()) || e.p.isLocal(f.dst.Addr()))
		return
	}
	if !e.p.isPodSource(f.src.Addr()) {
		// The node itself, or a stranger: a RST, as from a host
		// that serves it nothing. See the comment in egress.go.
		e.badSource.Add(1)
		e.complete(req, id, true)
		return
	}
	if !e.addTCPFlow(f) {
		e.complete(req, id, false)
		return
	}
	defer e.tcpActive.Add(-1)
	f.run()
}

// addTCPFlow registers f unless Close has begun or too many flows run.
func (e *egress) addTCPFlow(f *tcpFlow) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return false
	}
	if e.tcpActive.Load() >= e.maxTCP {
		e.tcpDropped.Add(1)
		return false
	}
	e.tcpActive.Add(1)
	e.tcpTotal.Add(1)
	e.tcpFlows[f] = struct{}{}
	return true
}

// run runs the flow. The host side is dialled first: a kernel NAT passes
// the SYN on and the far side's answer back, so the pod's handshake
// completes only if the far side's does. A refused dial becomes a RST to
// the pod, an unreachable destination an ICMP error quoting the SYN (sent
// before the request completes, while synPending still holds the quote);
// a timed-out or otherwise failed one leaves the SYN unanswered, and the
// pod's own SYN retransmissions decide when it gives up. While the request
// is in flight the forwarder ignores those retransmissions, so one
// connection costs at most one dial at a time.
func (f *tcpFlow) run() {
	e := f.e
	conn, err := e.dial("tcp", f.dst)
	if err != nil {
		reset, unreach := e.dialFailed("tcp", err)
		if unreach != notUnreachable {
			e.sendUnreachable(f.src.Addr(), unreach, e.synQuote(f.id))
		}
		e.complete(f.req, f.id, reset)
		e.removeTCPFlow(f)
		e.log.Debug("egress tcp dial failed", "src", f.src, "dst", f.dst, "reset", reset, "unreachable", unreach != notUnreachable, "err", err)
		return
	}
	host := newHostConn(conn)
	if !f.setHost(host) {
		e.complete(f.req, f.id, false)
		e.removeTCPFlow(f)
		host.abort()
		return
	}
	ep, terr := f.req.CreateEndpoint(&f.wq)
	e.complete(f.req, f.id, false)
	if !f.setEndpoint(ep) {
		// The handshake failed (the pod reset it or stopped
		// answering) or Close interrupted it. The far side gets a RST,
		// as from a NAT whose client vanished.
		e.removeTCPFlow(f)
		host.abort()
		if ep != nil {
			ep.Abort()
			ep.Close()
		}
		e.log.Debug("egress tcp handshake failed", "src", f.src, "dst", f.dst, "err", terr)
		return
	}
	f.pod = gonet.NewTCPConn(&f.wq, ep)
	hostDone := make(chan struct{})
	e.p.flows.Go(func() {
		defer close(hostDone)
		f.hostToPodLoop()
	})
	f.podToHostLoop(hostDone)
	<-hostDone
	e.removeTCPFlow(f)
	// A flow whose far side closed first leaves the endpoint in
	// TIME-WAIT for a minute, and there gVisor drops a new SYN for the
	// same addresses and ports: it reopens a connection only for a
	// listener, which the forwarder is not. A kernel NAT lets that SYN
	// through (conntrack reopens a TIME_WAIT entry, RFC 1122 section
	// 4.2.2.13). In TIME-WAIT both FINs are acknowledged, so a RST loses
	// nothing and the pod, closed already, ignores it.
	if tcp.EndpointState(ep.State()) == tcp.StateTimeWait {
		f.abortPod()
	}
	ep.Close()
	host.Close()
	e.log.Debug("egress tcp flow closed", "src", f.src, "dst", f.dst)
}

// setHost records the host side, or reports false if Close has begun.
func (f *tcpFlow) setHost(h *hostConn) bool {
	f.e.mu.Lock()
	defer f.e.mu.Unlock()
	f.host = h
	return !f.e.closed
}

// setEndpoint records the end of the pod's handshake and its endpoint
// (nil if it failed). It reports whether the flow goes on: the handshake
// succeeded and Close has not begun.
func (f *tcpFlow) setEndpoint(ep tcpip.Endpoint) bool {
	f.e.mu.Lock()
	defer f.e.mu.Unlock()
	f.handshakeDone = true
	if ep == nil || f.e.closed {
		return false
	}
	f.ep = ep
	return true
}

// removeTCPFlow takes f out of the flows closeLoop stops. After it, only
// f's goroutines touch its sockets.
func (e *egress) removeTCPFlow(f *tcpFlow) {
	e.mu.Lock()
	delete(e.tcpFlows, f)
	e.mu.Unlock()
}

// inHandshakeLocked reports whether f waits in the pod's handshake.
func (f *tcpFlow) inHandshakeLocked() bool { return f.host != nil && !f.handshakeDone }

// wakeHandshake makes a waiting CreateEndpoint look at its endpoint again;
// unless the handshake has completed, it gives up.
func (f *tcpFlow) wakeHandshake() { f.wq.Notify(waiter.WritableEvents) }

// abortLocked resets both sides of f, for Close.
func (f *tcpFlow) abortLocked() {
	if f.host != nil {
		f.host.abort()
	}
	if f.ep != nil {
		f.abortPod()
	}
}

// abortPod resets the pod's connection. gVisor's Abort must run at most
// once: on an endpoint it has already reset, it closes it.
func (f *tcpFlow) abortPod() { f.podAbortOnce.Do(f.ep.Abort) }

// podToHostLoop copies the pod's data to the host side until the pod's
// FIN, which it passes on as a FIN, or a RST either way, which it passes on
// as a RST. After the FIN it goes on watching for a RST from the pod until
// the other direction is done.
func (f *tcpFlow) podToHostLoop(hostDone <-chan struct{}) {
	entry, ch := waiter.NewChannelEntry(waiter.ReadableEvents | waiter.EventHUp | waiter.EventErr)
	f.wq.EventRegister(&entry)
	defer f.wq.EventUnregister(&entry)
	for {
		terr, hostErr := f.copyPodToHost()
		if hostErr != nil {
			// The far side reset the connection, or Close closed
			// the socket.
			f.abortPod()
			return
		}
		switch terr.(type) {
		case *tcpip.ErrWouldBlock:
			<-ch
		case *tcpip.ErrClosedForReceive:
			f.host.closeWrite()
			f.awaitPodReset(ch, hostDone)
			return
		default:
			// ErrConnectionReset: the pod's RST. Or the endpoint was
			// aborted: by the other direction, whose side is gone
			// already, or by Close.
			f.host.abort()
			return
		}
	}
}

// copyPodToHost reads what the pod sent and writes it to the host side,
// until the endpoint has nothing more (ErrWouldBlock) or fails. The buffer
// is held only meanwhile.
func (f *tcpFlow) copyPodToHost() (tcpip.Error, error) {
	b := f.e.getBuf()
	defer f.e.putBuf(b)
	for {
		f.w = tcpip.SliceWriter(*b)
		res, terr := f.ep.Read(&f.w, tcpip.ReadOptions{})
		if terr != nil {
			return terr, nil
		}
		// As gonet's Read does, so receive buffer auto-tuning works
		// when the stack enables it.
		f.ep.ModerateRecvBuf(res.Count)
		if _, err := f.host.Write((*b)[:res.Count]); err != nil {
			return nil, err
		}
	}
}

// awaitPodReset waits, after the pod's FIN, until the other direction is
// done; a RST from the pod meanwhile resets the host side at once, as a
// NAT passes it on.
func (f *tcpFlow) awaitPodReset(ch <-chan struct{}, hostDone <-chan struct{}) {
	for {
		select {
		case <-hostDone:
			return
		case <-ch:
			if tcp.EndpointState(f.ep.State()) == tcp.StateError {
				f.host.abort()
				return
			}
		}
	}
}

// hostToPodLoop copies the host side's data to the pod until the far
// side's FIN, which it passes on as a FIN, or a RST either way, which it
// passes on as a RST.
func (f *tcpFlow) hostToPodLoop() {
	for {
		hostErr := f.host.awaitData()
		var podErr error
		if hostErr == nil {
			hostErr, podErr = f.copyHostToPod()
		}
		switch {
		case podErr != nil:
			// The pod reset the connection, or Close aborted it.
			f.host.abort()
			return
		case hostErr == nil:
		case errors.Is(hostErr, io.EOF):
			f.pod.CloseWrite()
			return
		default:
			// ECONNRESET: the far side's RST. Or the socket failed
			// (a timeout, an unreachable far side) or was aborted by
			// the other direction or Close.
			f.abortPod()
			return
		}
	}
}

// copyHostToPod reads from the host side and writes to the pod until a
// read comes back short, which means the socket is drained for now. The
// buffer is held only meanwhile.
func (f *tcpFlow) copyHostToPod() (hostErr, podErr error) {
	b := f.e.getBuf()
	defer f.e.putBuf(b)
	buf := *b
	for {
		n, err := f.host.Read(buf)
		if n > 0 {
			if _, werr := f.pod.Write(buf[:n]); werr != nil {
				return nil, werr
			}
		}
		if err != nil {
			return err, nil
		}
		if n < len(buf) {
			return nil, nil
		}
	}
}
