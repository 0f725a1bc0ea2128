package netstack

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
)

// The DNS forwarder: the gateway answers DNS on port 53 of each of its
// addresses, over UDP and TCP, by relaying each query to the upstream
// resolvers of Options.DNS through host sockets (Options.Dial). It is a
// forwarder, not a resolver or a cache: the pod's query goes upstream
// byte for byte and the answer comes back byte for byte, DNS ID, flags and
// EDNS options included, so the pod's stub resolver sees exactly what the
// upstream said.
//
//   - UDP: one socket per gateway address (udpLoop) reads the queries and
//     runs each in a goroutine of its own, forwarded over UDP. At most
//     dnsMaxUDPQueries run at a time; beyond that a query is dropped and
//     counted, and the client retries as it would after a lost datagram.
//     An answer with TC set goes back as it is, so the client retries over
//     TCP (RFC 1035 section 4.2.1, RFC 7766 section 5).
//   - TCP: one listener per gateway address (acceptLoop), one goroutine per
//     connection (serveTCP, at most dnsMaxTCPConns), messages with a
//     two-byte length prefix (RFC 1035 section 4.2.2), several queries per
//     connection, answered in order and forwarded over TCP, and the
//     connection closed after dnsTCPIdleTimeout without a query (RFC 7766
//     section 6.2.3).
//   - Upstreams are tried in order, each for dnsTryTimeout. A failed dial,
//     a time-out, or a SERVFAIL or REFUSED answer moves on to the next, as
//     a stub resolver does with its nameservers; the pod sees one
//     nameserver, the gateway, and would otherwise never try the others.
//     When no upstream answers, the pod gets SERVFAIL at once rather than
//     a time-out.
//   - Validation is minimal: a query has at least the 12-byte header and
//     QR clear (RFC 1035 section 4.1.1). Anything else is dropped and
//     counted; over TCP it also ends the connection, whose framing can no
//     longer be trusted.
//
// Every goroutine runs in Port.flows. Close cancels Port.ctx, which closes
// the listeners, the pods' connections and the upstream connections in
// flight, so each goroutine returns promptly.

const (
	dnsPort      = 53
	dnsHeaderLen = 12
	// dnsMaxMessage is the largest DNS message over TCP (16-bit length)
	// and, in practice, over UDP.
	dnsMaxMessage = 65535
	// dnsTryTimeout bounds the exchange with one upstream, as a stub
	// resolver's per-server time-out does (glibc: 5s, Go: 5s); shorter,
	// because the pod's own resolver is waiting behind us.
	dnsTryTimeout = 2 * time.Second
	// dnsMaxUDPQueries bounds the UDP queries forwarded at a time, and so
	// the goroutines and host sockets a flood of queries can take.
	dnsMaxUDPQueries = 256
	// dnsMaxTCPConns bounds the pods' open TCP connections to port 53.
	dnsMaxTCPConns = 64
	// dnsTCPIdleTimeout closes a pod's TCP connection after this long
	// without a query (RFC 7766 section 6.2.3 suggests seconds).
	dnsTCPIdleTimeout = 10 * time.Second
)

// DNS header fields (RFC 1035 section 4.1.1).
const (
	dnsFlagQR       = 0x80 // in byte 2
	dnsFlagsOpRD    = 0x79 // opcode and RD, in byte 2
	dnsFlagRA       = 0x80 // in byte 3
	dnsRcodeMask    = 0x0f // in byte 3
	dnsRcodeFail    = 2    // SERVFAIL
	dnsRcodeRefused = 5
)

// DNSStats counts the queries the gateway's DNS forwarder has seen.
type DNSStats struct {
	// Queries is the well-formed queries taken and forwarded.
	Queries uint64
	// Answered is the queries that got an upstream's answer.
	Answered uint64
	// Failed is the queries no upstream answered; the pod got SERVFAIL.
	Failed uint64
	// Dropped is the malformed queries and those beyond the bounds on
	// concurrent UDP queries and TCP connections (a refused connection
	// counts once).
	Dropped uint64
}

// dnsCounters are the DNSStats of a Port.
type dnsCounters struct {
	queries  atomic.Uint64
	answered atomic.Uint64
	failed   atomic.Uint64
	dropped  atomic.Uint64
}

// DNSStats returns the DNS forwarder's counters; all zero without
// Options.DNS.
func (p *Port) DNSStats() DNSStats {
	return DNSStats{
		Queries:  p.dns.queries.Load(),
		Answered: p.dns.answered.Load(),
		Failed:   p.dns.failed.Load(),
		Dropped:  p.dns.dropped.Load(),
	}
}

// dnsForwarder is shared by the DNS goroutines of one Port.
type dnsForwarder struct {
	p        *Port
	udpSlots chan struct{} // one token per UDP query in flight
	tcpSlots chan struct{} // one token per open TCP connection
	// udpBufs holds *[]byte of dnsMaxMessage bytes, for reading upstream
	// answers over UDP: each try needs room for the largest, and most
	// answers are far smaller.
	udpBufs sync.Pool
}

// startDNS listens on UDP and TCP port 53 of every gateway address and
// starts the loops, when Options.DNS names upstreams.
func (p *Port) startDNS() error {
	if len(p.opts.DNS) == 0 {
		return nil
	}
	f := &dnsForwarder{
		p:        p,
		udpSlots: make(chan struct{}, dnsMaxUDPQueries),
		tcpSlots: make(chan struct{}, dnsMaxTCPConns),
	}
	f.udpBufs.New = func() any {
		b := make([]byte, dnsMaxMessage)
		return &b
	}
	var (
		conns     []*gonet.UDPConn
		listeners []*gonet.TCPListener
	)
	fail := func(err error) error {
		for _, c := range conns {
			c.Close()
		}
		for _, l := range listeners {
			l.Close()
		}
		return err
	}
	for _, a := range p.opts.Addrs {
		full, proto := fullAddress(a.Addr(), dnsPort), netProto(a.Addr())
		c, err := gonet.DialUDP(p.stack, &full, nil, proto)
		if err != nil {
			return fail(fmt.Errorf("netstack: dns: listen udp %s: %w", netip.AddrPortFrom(a.Addr(), dnsPort), err))
		}
		conns = append(conns, c)
		l, err := gonet.ListenTCP(p.stack, full, proto)
		if err != nil {
			return fail(fmt.Errorf("netstack: dns: listen tcp %s: %w", netip.AddrPortFrom(a.Addr(), dnsPort), err))
		}
		listeners = append(listeners, l)
	}
	for _, c := range conns {
		p.flows.Go(func() { f.udpLoop(c) })
	}
	for _, l := range listeners {
		p.flows.Go(func() { f.acceptLoop(l) })
	}
	p.log.Info("dns forwarder started", "upstreams", fmt.Sprint(p.opts.DNS))
	return nil
}

// udpLoop reads the queries arriving at c and starts a goroutine for each.
func (f *dnsForwarder) udpLoop(c *gonet.UDPConn) {
	defer c.Close()
	stop := context.AfterFunc(f.p.ctx, func() { c.Close() })
	defer stop()
	buf := make([]byte, dnsMaxMessage)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			if f.p.ctx.Err() != nil || errors.Is(err, io.EOF) {
				return
			}
			// A pending socket error, such as an ICMP error for an
			// earlier answer, reported once; the socket still works.
			continue
		}
		q := buf[:n]
		if !isDNSQuery(q) {
			f.p.dns.dropped.Add(1)
			continue
		}
		select {
		case f.udpSlots <- struct{}{}:
		default:
			f.p.dns.dropped.Add(1)
			continue
		}
		f.p.dns.queries.Add(1)
		q = bytes.Clone(q)
		f.p.flows.Go(func() {
			defer func() { <-f.udpSlots }()
			ans := f.answer(q, false)
			if _, err := c.WriteTo(ans, from); err != nil {
				f.p.log.Debug("dns answer not sent", "client", from.String(), "err", err)
			}
		})
	}
}

// acceptLoop accepts the pods' TCP connections on l and serves each in a
// goroutine of its own.
func (f *dnsForwarder) acceptLoop(l *gonet.TCPListener) {
	defer l.Close()
	addr := fmt.Sprint(l.Addr())
	stop := context.AfterFunc(f.p.ctx, func() {
		l.Shutdown()
		l.Close()
	})
	defer stop()
	for {
		c, err := l.Accept()
		if err != nil {
			if f.p.ctx.Err() == nil {
				f.p.log.Warn("dns tcp listener stopped", "addr", addr, "err", err)
			}
			return
		}
		select {
		case f.tcpSlots <- struct{}{}:
		default:
			f.p.dns.dropped.Add(1)
			c.Close()
			continue
		}
		f.p.flows.Go(func() {
			defer func() { <-f.tcpSlots }()
			f.serveTCP(c)
		})
	}
}

// serveTCP answers the queries on one pod connection in order until the
// pod closes it, it stays idle for dnsTCPIdleTimeout, a query is malformed
// or the Port closes.
func (f *dnsForwarder) serveTCP(c net.Conn) {
	defer c.Close()
	stop := context.AfterFunc(f.p.ctx, func() { c.Close() })
	defer stop()
	for {
		c.SetReadDeadline(time.Now().Add(dnsTCPIdleTimeout))
		q, err := readTCPMessage(c)
		if err != nil {
			return
		}
		if !isDNSQuery(q) {
			f.p.dns.dropped.Add(1)
			return
		}
		f.p.dns.queries.Add(1)
		ans := f.answer(q, true)
		c.SetWriteDeadline(time.Now().Add(dnsTCPIdleTimeout))
		if _, err := c.Write(tcpMessage(ans)); err != nil {
			return
		}
	}
}

// answer returns the answer to query q from the upstreams, or SERVFAIL,
// and counts it.
func (f *dnsForwarder) answer(q []byte, tcp bool) []byte {
	ans, err := f.exchange(q, tcp)
	if err != nil {
		f.p.dns.failed.Add(1)
		f.p.log.Debug("dns query failed", "err", err)
		return servfail(q)
	}
	f.p.dns.answered.Add(1)
	return ans
}

// exchange tries the upstreams in order and returns the first answer that
// is neither SERVFAIL nor REFUSED; failing that, the last such answer; and
// an error if none answered at all.
func (f *dnsForwarder) exchange(q []byte, tcp bool) ([]byte, error) {
	var (
		errs     []error
		fallback []byte
	)
	for _, u := range f.p.opts.DNS {
		if err := f.p.ctx.Err(); err != nil {
			errs = append(errs, fmt.Errorf("netstack: dns: %w", err))
			break
		}
		ans, err := f.exchangeWith(u, q, tcp)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if rcode := ans[3] & dnsRcodeMask; rcode == dnsRcodeFail || rcode == dnsRcodeRefused {
			fallback = ans
			continue
		}
		return ans, nil
	}
	if fallback != nil {
		return fallback, nil
	}
	return nil, errors.Join(errs...)
}

// exchangeWith sends q to upstream u over a new host connection and
// returns its answer, within dnsTryTimeout.
func (f *dnsForwarder) exchangeWith(u netip.AddrPort, q []byte, tcp bool) ([]byte, error) {
	u = netip.AddrPortFrom(u.Addr().Unmap(), u.Port())
	transport := "udp"
	if tcp {
		transport = "tcp"
	}
	network := hostNetwork(transport, u.Addr())
	ctx, cancel := context.WithTimeout(f.p.ctx, dnsTryTimeout)
	defer cancel()
	c, err := f.p.opts.Dial(ctx, network, u.String())
	if err != nil {
		return nil, fmt.Errorf("netstack: dns: dial %s %s: %w", network, u, err)
	}
	defer c.Close()
	// Closing the connection ends the exchange at the try's deadline or
	// when the Port closes.
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	var ans []byte
	if tcp {
		ans, err = exchangeTCP(c, q)
	} else {
		buf := f.udpBufs.Get().(*[]byte)
		ans, err = exchangeUDP(c, q, *buf)
		f.udpBufs.Put(buf)
	}
	if err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return nil, fmt.Errorf("netstack: dns: %s %s: %w", network, u, err)
	}
	return ans, nil
}

// exchangeUDP sends q on the connected UDP socket c and returns a copy
// of the first datagram that answers it, read into buf, which must hold
// the largest. Others (stray or forged) are skipped.
func exchangeUDP(c net.Conn, q, buf []byte) ([]byte, error) {
	if _, err := c.Write(q); err != nil {
		return nil, err
	}
	for {
		n, err := c.Read(buf)
		if err != nil {
			return nil, err
		}
		if isDNSAnswerTo(buf[:n], q) {
			return bytes.Clone(buf[:n]), nil
		}
	}
}

// exchangeTCP sends q on the TCP connection c and reads its answer.
func exchangeTCP(c net.Conn, q []byte) ([]byte, error) {
	if _, err := c.Write(tcpMessage(q)); err != nil {
		return nil, err
	}
	ans, err := readTCPMessage(c)
	if err != nil {
		return nil, err
	}
	if !isDNSAnswerTo(ans, q) {
		return nil, errors.New("answer does not match the query")
	}
	return ans, nil
}

// readTCPMessage reads one length-prefixed DNS message (RFC 1035 section
// 4.2.2).
func readTCPMessage(r io.Reader) ([]byte, error) {
	var l [2]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		return nil, err
	}
	m := make([]byte, binary.BigEndian.Uint16(l[:]))
	if _, err := io.ReadFull(r, m); err != nil {
		return nil, err
	}
	return m, nil
}

// tcpMessage returns m with its two-byte length prefix, for one write.
func tcpMessage(m []byte) []byte {
	b := make([]byte, 2+len(m))
	binary.BigEndian.PutUint16(b, uint16(len(m)))
	copy(b[2:], m)
	return b
}

// isDNSQuery reports whether q has a DNS header with QR clear.
func isDNSQuery(q []byte) bool {
	return len(q) >= dnsHeaderLen && q[2]&dnsFlagQR == 0
}

// isDNSAnswerTo reports whether a has a DNS header with QR set and the ID
// of query q.
func isDNSAnswerTo(a, q []byte) bool {
	return len(a) >= dnsHeaderLen && a[2]&dnsFlagQR != 0 && a[0] == q[0] && a[1] == q[1]
}

// servfail returns a SERVFAIL answer to query q (RFC 1035 section 4.1.1):
// q's ID, opcode and RD flag, and q's question when it has exactly one that
// parses, so that the pod's resolver matches it to its query and gives up
// or moves on at once.
func servfail(q []byte) []byte {
	r := make([]byte, dnsHeaderLen, len(q))
	copy(r[:2], q[:2])
	r[2] = dnsFlagQR | q[2]&dnsFlagsOpRD
	r[3] = dnsFlagRA | dnsRcodeFail
	if qdcount := binary.BigEndian.Uint16(q[4:]); qdcount == 1 {
		if end, ok := questionEnd(q); ok {
			r[5] = 1
			r = append(r, q[dnsHeaderLen:end]...)
		}
	}
	return r
}

// questionEnd returns the offset just past the first question of message
// m: a name of uncompressed labels, its type and class (RFC 1035 sections
// 4.1.2 and 3.1).
func questionEnd(m []byte) (int, bool) {
	off := dnsHeaderLen
	for {
		if off >= len(m) {
			return 0, false
		}
		l := int(m[off])
		if l == 0 {
			off++
			break
		}
		if l > 63 { // a compression pointer or a reserved label type
			return 0, false
		}
		off += 1 + l
	}
	off += 4
	if off > len(m) {
		return 0, false
	}
	return off, true
}
