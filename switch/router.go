package vswitch

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// The router: with SetRouter, the switch routes IP frames sent to the
// gateway's MAC itself, on the reader's goroutine, without the gateway
// port (its netstack) seeing them. For each such frame it finds the next
// hop — a local pod by its address binding, or the longest matching Route
// — rewrites both MACs, decrements the TTL or hop limit (with an
// incremental checksum update for IPv4) and hands the frame to the next
// hop's port. GSO super-frames stay whole. What a router must not forward
// gets the ICMP or ICMPv6 error a router sends, from the gateway's
// address: TTL expiry, a packet over the next hop's MTU (DF set, or IPv6),
// no route, an unknown local address. IPv4 packets over the MTU without DF
// are fragmented.
//
// Frames for the gateway's own addresses, link-local and multicast
// destinations, and malformed IP headers are not routed: they go to the
// gateway port as any frame for its MAC does, and its netstack answers or
// drops them.
//
// The route table and the router's configuration are immutable snapshots
// behind an atomic pointer: the frame path reads them without locks;
// SetRouter, SetRoute and DeleteRoute publish new ones.

// RouterConfig is the gateway the switch routes for.
type RouterConfig struct {
	// MAC is the gateway's MAC: frames sent to it are routed.
	MAC MAC
	// Port is the gateway's port, where frames for its own addresses go.
	Port PortID
	// Addrs are the gateway's addresses with the prefixes of the local
	// pod subnets, such as 10.244.0.1/24 and fd00:244::1/64. Destinations
	// in those subnets are local pods, found by their bindings (Bind).
	// ICMP errors come from the address of the family concerned.
	Addrs []netip.Prefix
	// HostPort is the port of the node's kernel (the host port), or 0.
	// Traffic the node forwards from one local pod to another (a Service
	// address translated by the node) must have its replies pass the node
	// again, to be translated back: see hostFlows.
	HostPort PortID
	// HostMAC is the host port's MAC, the destination of frames sent back
	// through the node.
	HostMAC MAC
	// Routes, if not nil, replace the route table in the same change, so
	// no frame meets the router without them; nil keeps the table.
	Routes []Route
	// ICMPRate and ICMPBurst bound the ICMP errors sent, other than
	// fragmentation needed and packet too big, which path MTU discovery
	// depends on (default 1000 a second, burst 50, as Linux's
	// icmp_msgs_per_sec and icmp_msgs_burst).
	ICMPRate, ICMPBurst int
}

// ErrNoRouter is returned by route changes before SetRouter.
var ErrNoRouter = errors.New("no router configured")

// router is an immutable snapshot of the router's configuration and
// routes.
type router struct {
	cfg    RouterConfig
	src4   netip.Addr // ICMP errors' source, by family
	src6   netip.Addr
	routes routeTable
}

// own reports whether a is one of the gateway's addresses.
func (r *router) own(a netip.Addr) bool {
	for _, p := range r.cfg.Addrs {
		if p.Addr() == a {
			return true
		}
	}
	return false
}

// local reports whether a is in a local pod subnet.
func (r *router) local(a netip.Addr) bool {
	for _, p := range r.cfg.Addrs {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// routerState is the switch's router: the published snapshot, the lock
// that serializes its writers, and the counters of what it did.
type routerState struct {
	mu  sync.Mutex // serializes SetRouter, SetRoute, DeleteRoute
	cur atomic.Pointer[router]

	icmp      icmpLimiter
	icmpSent  [numICMPKinds]atomic.Uint64
	icmpLimit atomic.Uint64 // errors not sent: over the rate limit
	noRoute   atomic.Uint64 // packets without a route (each answered, or limited)
	fragments atomic.Uint64 // IPv4 fragments made

	flows hostFlows
}

// SetRouter makes the switch route frames sent to cfg.MAC, keeping the
// routes it has. The gateway's port must be attached.
func (s *Switch) SetRouter(cfg RouterConfig) error {
	if cfg.MAC.Multicast() || cfg.MAC.Zero() {
		return fmt.Errorf("vswitch: router mac %s is not unicast", cfg.MAC)
	}
	if len(cfg.Addrs) == 0 {
		return errors.New("vswitch: router has no address")
	}
	t := s.ports.Load()
	if _, ok := t.byID[cfg.Port]; !ok {
		return fmt.Errorf("vswitch: router port %d: %w", cfg.Port, ErrNoPort)
	}
	if cfg.HostPort != 0 {
		if _, ok := t.byID[cfg.HostPort]; !ok {
			return fmt.Errorf("vswitch: router host port %d: %w", cfg.HostPort, ErrNoPort)
		}
	}
	r := &router{cfg: cfg}
	r.cfg.Addrs = slices.Clone(cfg.Addrs)
	for i, p := range r.cfg.Addrs {
		if !p.IsValid() {
			return fmt.Errorf("vswitch: router address %v is not valid", p)
		}
		a := p.Addr().Unmap()
		r.cfg.Addrs[i] = netip.PrefixFrom(a, p.Bits())
		switch {
		case a.Is4() && !r.src4.IsValid():
			r.src4 = a
		case a.Is6() && !r.src6.IsValid():
			r.src6 = a
		}
	}
	if r.cfg.ICMPRate <= 0 {
		r.cfg.ICMPRate = 1000
	}
	if r.cfg.ICMPBurst <= 0 {
		r.cfg.ICMPBurst = 50
	}
	cfg.Routes = slices.Clone(cfg.Routes)
	for i := range cfg.Routes {
		if err := s.checkRoute(&cfg.Routes[i]); err != nil {
			return err
		}
	}
	r.cfg.Routes = nil
	s.rt.mu.Lock()
	defer s.rt.mu.Unlock()
	if old := s.rt.cur.Load(); cfg.Routes == nil && old != nil {
		r.routes = old.routes
	} else {
		r.routes = buildRoutes(cfg.Routes)
	}
	s.rt.icmp.set(r.cfg.ICMPRate, r.cfg.ICMPBurst, s.opts.Now())
	s.rt.cur.Store(r)
	s.log.Info("router set", "mac", cfg.MAC.String(), "addrs", fmt.Sprint(r.cfg.Addrs), "host_port", cfg.HostPort)
	return nil
}

// RouterStats counts what the router did since the switch started.
type RouterStats struct {
	// ICMPSent counts the errors sent, by kind (ICMPKind.String).
	ICMPSent map[string]uint64
	// ICMPRateLimited counts errors not sent for the rate limit.
	ICMPRateLimited uint64
	// NoRoute counts packets for which no route or local pod was found.
	NoRoute uint64
	// Fragments counts the IPv4 fragments made for next hops whose MTU
	// was too small.
	Fragments uint64
	// HostFlows is how many flows return through the node now (a UDP
	// flow counts twice: it also records its address pair for later
	// fragments); HostFlowsEvicted counts those a full table
	// dropped for new ones (see hostFlows).
	HostFlows        int
	HostFlowsEvicted uint64
}

// RouterStats returns the router's counters.
func (s *Switch) RouterStats() RouterStats {
	st := RouterStats{
		ICMPSent:         map[string]uint64{},
		ICMPRateLimited:  s.rt.icmpLimit.Load(),
		NoRoute:          s.rt.noRoute.Load(),
		Fragments:        s.rt.fragments.Load(),
		HostFlows:        s.rt.flows.len(),
		HostFlowsEvicted: s.rt.flows.evicted.Load(),
	}
	for k := range numICMPKinds {
		st.ICMPSent[k.String()] = s.rt.icmpSent[k].Load()
	}
	return st
}

// noteHostFlow records f's flow when f, from the host port, carries a
// local pod's source address: the node forwarded it from that pod, so
// the replies must pass the node too (hostFlows).
func (s *Switch) noteHostFlow(f *Frame, r *router, now int64) {
	k, closing, ok := flowOf(f.Bytes(), f.Offload.GSOType != GSONone)
	if !ok || !r.local(k.src) {
		return
	}
	if bd, ok := s.binds.lookup(k.src); !ok || bd.Port == r.cfg.HostPort || bd.Port == r.cfg.Port {
		return
	}
	s.rt.flows.record(k, closing, now)
}

// viaHost sends f, switched from in to the local pod port out, to the
// host port instead when its flow must return through the node. It
// reports whether it did.
func (s *Switch) viaHost(t *portTable, in, out *portState, f *Frame, r *router, now int64, h *handoff) bool {
	hp := r.cfg.HostPort
	if hp == 0 || in.id == hp || out.id == hp || out.id == r.cfg.Port || !s.rt.flows.returnsViaHost(f, now) {
		return false
	}
	host := t.byID[hp]
	if host == nil {
		return false
	}
	Ether(f.Bytes()).SetDst(r.cfg.HostMAC)
	s.send(host, f, h)
	return true
}

// ipHeader is what the router reads of an IP packet.
type ipHeader struct {
	v6       bool
	src, dst netip.Addr
	ttl      uint8
	size     int // the IP packet's length, for the MTU check (per segment for GSO)
	df       bool
}

// parseIP reads f's IP header. It reports false for frames the router
// does not take: other ethertypes and malformed headers.
func parseIP(f *Frame) (ipHeader, bool) {
	e := Ether(f.Bytes())
	gso := f.Offload.GSOType != GSONone
	var h ipHeader
	switch e.Type() {
	case EtherTypeIP4:
		ip := IPv4(e.Payload())
		// A header whose checksum is wrong is not routed (RFC 1812
		// section 5.2.2), as Linux's ip_rcv drops it. Super-frames are
		// spared the check: their header is rewritten per segment.
		if !ip.Valid(gso) || !gso && !ip.ChecksumValid() {
			return h, false
		}
		h = ipHeader{src: ip.Src(), dst: ip.Dst(), ttl: ip.TTL(), size: int(ip.TotalLen()), df: ip.DF()}
		if gso {
			h.size = segmentSize(ip.HeaderLen(), ip.Protocol(), ip.Payload(), f.Offload.GSOSize)
		}
	case EtherTypeIP6:
		ip := IPv6(e.Payload())
		if !ip.Valid(gso) {
			return h, false
		}
		h = ipHeader{v6: true, src: ip.Src(), dst: ip.Dst(), ttl: ip.HopLimit(), size: IPv6HdrLen + int(ip.PayloadLen()), df: true}
		if gso {
			h.size = segmentSize(IPv6HdrLen, ip.NextHeader(), ip.Payload(), f.Offload.GSOSize)
		}
	default:
		return h, false
	}
	return h, h.size > 0
}

// segmentSize is the IP length of each segment of a super-frame: its IP
// and transport headers, read from the packet (the offload's HdrLen is
// only a hint, skb_headlen), and gsoSize bytes of payload. It returns 0
// for a transport it cannot read, which the router does not take.
func segmentSize(ipHdr int, proto uint8, l4 []byte, gsoSize uint16) int {
	switch {
	case proto == ProtoTCP && len(l4) >= 20:
		return ipHdr + int(l4[12]>>4)*4 + int(gsoSize)
	case proto == ProtoUDP && len(l4) >= 8:
		return ipHdr + 8 + int(gsoSize)
	}
	return 0
}

// routable reports whether the router forwards packets to dst at all:
// not to multicast, broadcast, loopback or unspecified addresses, nor to
// IPv6 link-local ones, which need a zone. IPv4 link-local destinations
// are routed: the node may hold them (a metadata server, NodeLocal
// DNSCache's 169.254.20.10).
func routable(dst netip.Addr) bool {
	return dst.IsValid() && !dst.IsUnspecified() && !dst.IsMulticast() && !dst.IsLoopback() &&
		!(dst.Is6() && dst.IsLinkLocalUnicast()) && dst != netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

// route forwards f, an IP frame sent to the router's MAC from port in,
// and reports true: f is then handed on, answered with an ICMP error or
// dropped. It reports false, having done nothing, for frames that are not
// its to route, which the caller switches to the gateway port as usual.
func (s *Switch) route(t *portTable, in *portState, f *Frame, r *router, now int64, h *handoff) bool {
	ip, ok := parseIP(f)
	if !ok || !routable(ip.dst) || r.own(ip.dst) {
		return false
	}
	out, mac, mtu, unreachable := s.nextHop(t, r, ip.dst)
	if out == nil {
		s.rt.noRoute.Add(1)
		s.sendICMP(in, f, unreachable, 0, r, h)
		return true
	}
	if out == in {
		// Back out of the port it came from: the sender should have
		// used the next hop itself. Refuse rather than loop.
		s.drop(in, f, DropHairpin)
		return true
	}
	if ip.ttl <= 1 {
		s.sendICMP(in, f, ICMPTimeExceeded, 0, r, h)
		return true
	}
	if out.id != r.cfg.HostPort && in.id != r.cfg.HostPort && s.rt.flows.returnsViaHost(f, now) {
		if host := t.byID[r.cfg.HostPort]; host != nil {
			out, mac, mtu = host, r.cfg.HostMAC, 0
		}
	}
	if mtu == 0 {
		mtu = out.caps.MaxFrame - EtherHdrLen
	}
	if ip.size > mtu && (ip.v6 || ip.df) {
		// Checked before the TTL changes: the error quotes the packet
		// as it arrived, as Linux's ip_forward does.
		s.sendICMP(in, f, ICMPFragNeeded, mtu, r, h)
		return true
	}
	e := Ether(f.Bytes())
	if ip.v6 {
		IPv6(e.Payload()).DecHopLimit()
	} else {
		IPv4(e.Payload()).DecTTL()
	}
	e.SetSrc(r.cfg.MAC)
	e.SetDst(mac)
	if ip.size > mtu {
		s.fragment(out, f, mtu, h)
		return true
	}
	out.c.routed.Add(1)
	s.send(out, f, h)
	return true
}

// nextHop finds where a packet for dst goes: the port, the MAC to send
// it to and the next hop's MTU (0: the port's). A local pod is found by
// its binding, anything else by the routes. Without a next hop out is
// nil and unreachable says which error to send.
func (s *Switch) nextHop(t *portTable, r *router, dst netip.Addr) (out *portState, mac MAC, mtu int, unreachable ICMPKind) {
	if r.local(dst) {
		bd, ok := s.binds.lookup(dst)
		if !ok || bd.Port == r.cfg.Port {
			return nil, MAC{}, 0, ICMPHostUnreachable
		}
		return t.byID[bd.Port], bd.MAC, 0, ICMPHostUnreachable
	}
	if rt, ok := r.routes.lookup(dst); ok {
		return t.byID[rt.Port], rt.NextHop, rt.MTU, ICMPNetUnreachable
	}
	return nil, MAC{}, 0, ICMPNetUnreachable
}

// fragment cuts f, an IPv4 packet without DF over the next hop's mtu,
// into fragments for out (RFC 791, RFC 1812 section 4.2.2.7), and takes
// ownership of f. A GSO super-frame without DF whose segments do not fit
// is dropped: TCP sets DF, and segmenting to fragment again is not worth
// its code.
func (s *Switch) fragment(out *portState, f *Frame, mtu int, h *handoff) {
	if f.Offload.GSOType != GSONone {
		s.drop(out, f, DropTooBig)
		return
	}
	frags, err := FragmentIPv4(h.segs[:0], f, mtu, s.pools)
	if err != nil {
		s.drop(out, f, DropTooBig)
		return
	}
	f.Release()
	s.rt.fragments.Add(uint64(len(frags)))
	out.c.routed.Add(uint64(len(frags)))
	for i, fr := range frags {
		s.send(out, fr, h)
		frags[i] = nil
	}
	h.segs = frags[:0]
}

// sendICMP answers f, which arrived on in, with an ICMP error of kind from
// the router, and releases f. Errors other than fragmentation needed are
// rate limited.
func (s *Switch) sendICMP(in *portState, f *Frame, kind ICMPKind, mtu int, r *router, h *handoff) {
	defer f.Release()
	if kind != ICMPFragNeeded && !s.rt.icmp.allow(s.opts.Now()) {
		s.rt.icmpLimit.Add(1)
		return
	}
	src := r.src4
	if Ether(f.Bytes()).Type() == EtherTypeIP6 {
		src = r.src6
	}
	if !src.IsValid() {
		return
	}
	reply := s.pools.Small.Get()
	n := WriteICMPError(reply.ReadBuf(0), f.Bytes(), kind, mtu, r.cfg.MAC, src)
	if n == 0 {
		reply.Release()
		return
	}
	reply.SetLen(n)
	s.rt.icmpSent[kind].Add(1)
	s.send(in, reply, h)
}

// icmpLimiter is a token bucket for ICMP errors, shared by every reader.
// Errors are the exception path, so it takes a lock and reads the clock.
type icmpLimiter struct {
	mu     sync.Mutex // guards the fields below
	rate   float64    // tokens a second
	burst  float64
	tokens float64
	last   time.Time
}

func (l *icmpLimiter) set(rate, burst int, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.rate, l.burst, l.tokens, l.last = float64(rate), float64(burst), float64(burst), now
}

// allow takes a token if there is one.
func (l *icmpLimiter) allow(now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if d := now.Sub(l.last); d > 0 {
		l.tokens = min(l.tokens+d.Seconds()*l.rate, l.burst)
		l.last = now
	}
	if l.tokens < 1 {
		return false
	}
	l.tokens--
	return true
}
