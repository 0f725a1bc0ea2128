package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"tapswitch/daemon/api"
	"time"
)

// Bounds of one forward, so a flood of clients costs the daemon a known
// number of sockets and gVisor endpoints. Beyond them TCP clients wait in
// the listen backlog, and UDP datagrams from new clients are dropped and
// counted.
const (
	maxForwardConns = 4096 // TCP connections open at once
	maxForwardFlows = 1024 // UDP flows (client and local address) at once
	// maxDatagram is the largest UDP payload over IPv4 or IPv6 without
	// jumbograms (RFC 768, RFC 8200 section 5).
	maxDatagram = 65535
)

// Defaults for zero Options.DialTimeout and Options.UDPIdleTimeout, the
// same as the gateway's egress (netstack.Options).
const (
	defaultForwardDialTimeout = 30 * time.Second
	defaultForwardUDPIdle     = 30 * time.Second
)

// podDialer connects into the pods; the gateway netstack is one.
// DialTCP's connection has CloseWrite.
type podDialer interface {
	DialTCP(ctx context.Context, dst netip.AddrPort) (net.Conn, error)
	DialUDP(dst netip.AddrPort) (net.Conn, error)
}

// forwarder is one forward's listener and the flows it proxies.
//
// Goroutines, all counted in wg and stopped by close: for TCP, acceptLoop
// and a proxyLoop per connection, which runs the client → pod direction on
// a copyLoop goroutine of its own and waits for it; for UDP, readLoop and a
// flowLoop per flow, a client address and the local address it sent to
// (forwarder_linux.go). close cancels ctx and closes the listening
// socket; every connection and flow closes its sockets when ctx ends, so
// nothing stays blocked.
type forwarder struct {
	fw          api.Forward // Error is guarded by Daemon.mu; the rest is fixed
	dial        podDialer
	log         *slog.Logger
	dialTimeout time.Duration
	udpIdle     time.Duration
	epoch       time.Time // a monotonic base for udpFlow.last

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	ln    net.Listener  // TCP; nil until start
	slots chan struct{} // TCP: one token per open connection

	pc    *net.UDPConn // UDP; nil until start
	mu    sync.Mutex   // guards flows
	flows map[flowKey]*udpFlow

	conns      atomic.Uint64 // TCP connections accepted, UDP flows opened
	dialErrors atomic.Uint64 // connections into the pod that failed
	drops      atomic.Uint64 // UDP datagrams dropped
}

// flowKey names a UDP flow. A client that sends to two addresses of the
// host (a wildcard listen) has a flow for each, so the answers to each
// come from the address it sent to.
type flowKey struct {
	client netip.AddrPort // unmapped
	local  netip.Addr     // the datagrams' destination; the zero Addr if the kernel did not say
}

// udpFlow is one UDP client of a forward, at one local address, and its
// socket into the pod.
type udpFlow struct {
	key  flowKey
	src  []byte // control message that sends from key.local (pktinfoSrc); read-only
	conn net.Conn
	last atomic.Int64 // time of the last datagram either way, since epoch
}

// newForwarder returns a forwarder for fw that is not listening yet.
func (d *Daemon) newForwarder(fw api.Forward) *forwarder {
	fw.Via = api.ViaProxy
	if d.opts.Egress == EgressRoute {
		fw.Via = api.ViaDNAT
	}
	f := &forwarder{
		fw:          fw,
		dial:        d.gw,
		log:         d.log.With("forward", keyOf(fw).String(), "pod", fw.Pod),
		dialTimeout: d.opts.DialTimeout,
		udpIdle:     d.opts.UDPIdleTimeout,
		epoch:       time.Now(),
		slots:       make(chan struct{}, maxForwardConns),
		flows:       make(map[flowKey]*udpFlow),
	}
	if f.dialTimeout <= 0 {
		f.dialTimeout = defaultForwardDialTimeout
	}
	if f.udpIdle <= 0 {
		f.udpIdle = defaultForwardUDPIdle
	}
	f.ctx, f.cancel = context.WithCancel(context.Background())
	return f
}

// start listens on the forward's address in the daemon's namespace and
// starts serving. The network names the family ("tcp4", "udp6"), so
// [::]:80 is IPv6 only (IPV6_V6ONLY) and may coexist with 0.0.0.0:80 with
// another pod behind it. A port in use is ErrConflict, an address the host
// does not have ErrInvalid. On failure nothing is open. A DNAT forward
// (route mode) opens nothing.
func (f *forwarder) start() error {
	if f.fw.Via == api.ViaDNAT {
		return nil // a rule in the node's table, which the daemon syncs
	}
	network := f.fw.Proto + "4"
	if f.fw.Listen.Addr().Is6() {
		network = f.fw.Proto + "6"
	}
	switch f.fw.Proto {
	case api.ProtoTCP:
		ln, err := net.Listen(network, f.fw.Listen.String())
		if err != nil {
			return listenError(err)
		}
		f.ln = ln
		f.wg.Go(f.acceptLoop)
	case api.ProtoUDP:
		pc, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(f.fw.Listen))
		if err != nil {
			return listenError(err)
		}
		if err := enablePktinfo(pc, f.fw.Listen.Addr().Is6()); err != nil {
			pc.Close()
			return fmt.Errorf("udp %s: %w", f.fw.Listen, err)
		}
		f.pc = pc
		f.wg.Go(f.readLoop)
	default:
		return fmt.Errorf("%w: proto %q: want tcp or udp", ErrInvalid, f.fw.Proto)
	}
	return nil
}

func listenError(err error) error {
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		return fmt.Errorf("%w: %w", ErrConflict, err)
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return fmt.Errorf("%w: %w (not an address of this host)", ErrInvalid, err)
	}
	return err
}

// close stops listening, ends every connection and flow and waits for the
// forwarder's goroutines. It is safe to call more than once.
func (f *forwarder) close() {
	f.cancel()
	if f.ln != nil {
		f.ln.Close()
	}
	if f.pc != nil {
		f.pc.Close()
	}
	f.wg.Wait()
}

// backOff waits after a failed accept or read — out of fds and the like —
// rather than retry at once: 5 ms, doubling up to 1 s. It reports false
// when the forwarder is closing.
func (f *forwarder) backOff(backoff *time.Duration, op string, err error) bool {
	if f.ctx.Err() != nil {
		return false
	}
	*backoff = min(max(2**backoff, 5*time.Millisecond), time.Second)
	f.log.Warn(op, "err", err, "retry_in", *backoff)
	select {
	case <-time.After(*backoff):
		return true
	case <-f.ctx.Done():
		return false
	}
}

// acceptLoop accepts TCP clients and proxies each on a proxyLoop
// goroutine. With maxForwardConns open it waits for one to end before it
// accepts the next: new clients wait in the listen backlog.
func (f *forwarder) acceptLoop() {
	var backoff time.Duration
	for {
		c, err := f.ln.Accept()
		if err != nil {
			if !f.backOff(&backoff, "accept", err) {
				return
			}
			continue
		}
		backoff = 0
		select {
		case f.slots <- struct{}{}:
		case <-f.ctx.Done():
			c.Close()
			return
		}
		f.conns.Add(1)
		f.wg.Go(func() {
			defer func() { <-f.slots }()
			f.proxyLoop(c)
		})
	}
}

// proxyLoop connects the client to the pod and copies both ways until both
// directions ended, then closes both connections. A connection the pod
// refuses (RST) or that times out is reset on the client's side, as the
// pod's refusal would look without the forward.
func (f *forwarder) proxyLoop(client net.Conn) {
	defer client.Close()
	ctx, cancel := context.WithTimeout(f.ctx, f.dialTimeout)
	pod, err := f.dial.DialTCP(ctx, f.fw.Target)
	cancel()
	if err != nil {
		f.dialErrors.Add(1)
		f.log.Debug("connect to pod", "client", client.RemoteAddr().String(), "err", err)
		reset(client)
		return
	}
	defer pod.Close()
	stop := context.AfterFunc(f.ctx, func() {
		reset(client)
		client.Close()
		pod.Close()
	})
	defer stop()
	var up sync.WaitGroup
	up.Go(func() { copyLoop(pod, client) })
	copyLoop(client, pod)
	up.Wait()
}

// copyLoop copies src to dst until src ends. An orderly end (src's peer
// sent FIN) is passed on as a half-close, dst.CloseWrite (RFC 9293 section
// 3.6), and the other direction goes on. Any error (a RST from either
// side, a write that fails) aborts the connection: both sides are closed,
// the client's with a RST, so the other direction ends too.
func copyLoop(dst, src net.Conn) {
	_, err := io.Copy(dst, src)
	if err == nil {
		cw, ok := dst.(interface{ CloseWrite() error })
		if ok && cw.CloseWrite() == nil {
			return
		}
	}
	reset(dst)
	reset(src)
	dst.Close()
	src.Close()
}

// reset makes the next Close of a host TCP connection send RST instead of
// FIN (SO_LINGER with a zero timeout, socket(7)). Other connections are
// left as they are.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
}

// readLoop reads the UDP clients' datagrams and sends each into the pod on
// its flow (client and local address), opening the flow on the first
// datagram.
func (f *forwarder) readLoop() {
	buf := make([]byte, maxDatagram)
	oob := newPktinfoBuffer()
	var backoff time.Duration
	for {
		n, oobn, _, client, err := f.pc.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			if !f.backOff(&backoff, "read", err) {
				return
			}
			continue
		}
		backoff = 0
		fl := f.flowFor(flowKey{
			client: netip.AddrPortFrom(client.Addr().Unmap(), client.Port()),
			local:  pktinfoDst(oob[:oobn]),
		})
		if fl == nil {
			f.drops.Add(1)
			continue
		}
		fl.last.Store(int64(time.Since(f.epoch)))
		if _, err := fl.conn.Write(buf[:n]); err != nil {
			f.drops.Add(1)
			f.log.Debug("send to pod", "client", client.String(), "err", err)
		}
	}
}

// flowFor returns key's flow, opening it if there is room; nil if the
// flow table is full or the socket into the pod cannot be made.
func (f *forwarder) flowFor(key flowKey) *udpFlow {
	f.mu.Lock()
	defer f.mu.Unlock()
	if fl, ok := f.flows[key]; ok {
		return fl
	}
	if len(f.flows) >= maxForwardFlows {
		return nil
	}
	conn, err := f.dial.DialUDP(f.fw.Target)
	if err != nil {
		f.dialErrors.Add(1)
		f.log.Warn("open udp flow into pod", "client", key.client.String(), "local", key.local.String(), "err", err)
		return nil
	}
	fl := &udpFlow{key: key, src: pktinfoSrc(key.local, f.fw.Listen.Addr().Is6()), conn: conn}
	fl.last.Store(int64(time.Since(f.epoch))) // before flowLoop looks
	f.flows[key] = fl
	f.conns.Add(1)
	f.wg.Go(func() { f.flowLoop(fl) })
	return fl
}

// flowLoop sends the pod's answers on a flow back to its client, from the
// local address the client sent to, until the flow was idle for udpIdle
// in both directions or the forward closes.
func (f *forwarder) flowLoop(fl *udpFlow) {
	stop := context.AfterFunc(f.ctx, func() { fl.conn.Close() })
	defer stop()
	defer f.endFlow(fl)
	buf := make([]byte, maxDatagram)
	for {
		idleSince := f.epoch.Add(time.Duration(fl.last.Load()))
		if time.Since(idleSince) >= f.udpIdle {
			return
		}
		fl.conn.SetReadDeadline(idleSince.Add(f.udpIdle))
		n, err := fl.conn.Read(buf)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			continue // the loop's head decides whether a client datagram came meanwhile
		}
		if err != nil {
			return
		}
		fl.last.Store(int64(time.Since(f.epoch)))
		if _, _, err := f.pc.WriteMsgUDPAddrPort(buf[:n], fl.src, fl.key.client); err != nil {
			f.drops.Add(1)
			f.log.Debug("send to client", "client", fl.key.client.String(), "local", fl.key.local.String(), "err", err)
		}
	}
}

// endFlow forgets a flow and closes its socket into the pod.
func (f *forwarder) endFlow(fl *udpFlow) {
	f.mu.Lock()
	if f.flows[fl.key] == fl {
		delete(f.flows, fl.key)
	}
	f.mu.Unlock()
	fl.conn.Close()
}

// forwardStats is a snapshot of one forward's counters.
type forwardStats struct {
	api.Forward
	conns, dialErrors, drops uint64
	active                   int // open TCP connections or UDP flows
}

func (f *forwarder) stats() forwardStats {
	st := forwardStats{Forward: f.fw, conns: f.conns.Load(), dialErrors: f.dialErrors.Load(), drops: f.drops.Load()}
	if f.fw.Proto == api.ProtoTCP {
		st.active = len(f.slots)
	} else {
		f.mu.Lock()
		st.active = len(f.flows)
		f.mu.Unlock()
	}
	return st
}

// forwardStats returns every forward's counters, sorted as Forwards.
func (d *Daemon) forwardStats() []forwardStats {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]forwardStats, 0, len(d.forwards))
	for _, f := range d.forwards {
		out = append(out, f.stats())
	}
	slices.SortFunc(out, func(a, b forwardStats) int { return compareForwards(a.Forward, b.Forward) })
	return out
}
