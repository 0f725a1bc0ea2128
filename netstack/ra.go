package netstack

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"net/netip"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/transport/raw"
	"gvisor.dev/gvisor/pkg/waiter"

	vswitch "tapswitch/switch"
)

// Router advertisements (RFC 4861 section 6.2) for the gateway's IPv6
// prefixes.
//
// gVisor implements the host side of neighbour discovery only: it never
// sends a Router Advertisement, and it drops Router Solicitations unless
// the NIC forwards, which the gateway does not (egress terminates flows in
// the stack instead). So the Port advertises itself as the pods' router:
// the pods learn the gateway's link-local address as their default router,
// the link MTU and which prefixes are on-link.
//
// Design: one goroutine, raLoop, owns one raw ICMPv6 endpoint of the
// stack and does all of it.
//
//   - The endpoint is an "associated" raw endpoint made with
//     raw.NewEndpoint. That needs no RawFactory in the stack's options, so
//     the stack does not otherwise allow raw endpoints. gVisor hands it
//     every valid IPv6 packet the NIC receives whose next header is
//     ICMPv6, before its own NDP processing drops Router Solicitations; an
//     ICMPv6 filter passes only type 133, so other messages are not even
//     copied, and the endpoint drops those whose checksum is wrong.
//   - Advertisements are written through the same endpoint. The stack
//     builds the IPv6 header, fills in the ICMPv6 checksum (RFC 3542
//     section 3.1) and maps ff02::1 to 33:33:00:00:00:01 (RFC 2464 section
//     7); per write, the packet info picks the gateway's link-local address
//     as the source (RFC 4861 section 4.2) and the hop limit is 255.
//
// Schedule (RFC 4861 sections 6.2.4 and 6.2.6): an unsolicited multicast
// advertisement at once, then after a random interval between
// MinRtrAdvInterval and MaxRtrAdvInterval, at most 16 s for the first
// three. A solicitation from a pod with an address is answered with a
// unicast advertisement to that address after a random delay of at most
// 0.5 s (unicast answers are allowed by section 6.2.6 and recommended by
// RFC 7772 section 5.1); they are not limited by MIN_DELAY_BETWEEN_RAS,
// which applies to multicast, but at most raMaxPendingUnicast are waiting
// at a time. The stack resolves the pod's MAC with a neighbour
// solicitation first: as a host, gVisor does not learn it from the
// solicitation's source link-layer address option. A solicitation from the unspecified address (a pod still
// doing DAD) can only be answered by multicast, no sooner than 3 s after
// the previous multicast advertisement. Every multicast advertisement
// restarts the unsolicited interval.

// Constants of the schedule and the advertisement (RFC 4861 sections 6.2.1
// and 10).
const (
	// raMaxInterval is MaxRtrAdvInterval (4-1800 s, default 600 s); the
	// shorter interval lets a pod that missed its solicitation's answer
	// learn the router within minutes.
	raMaxInterval = 200 * time.Second
	// raMinInterval is MinRtrAdvInterval, 0.33 × MaxRtrAdvInterval by
	// default.
	raMinInterval = raMaxInterval / 3
	// raMaxInitialInterval and raMaxInitialAdverts are
	// MAX_INITIAL_RTR_ADVERT_INTERVAL and MAX_INITIAL_RTR_ADVERTISEMENTS.
	raMaxInitialInterval = 16 * time.Second
	raMaxInitialAdverts  = 3
	// raMaxDelay is MAX_RA_DELAY_TIME, the random delay of a solicited
	// advertisement.
	raMaxDelay = 500 * time.Millisecond
	// raMinDelayBetween is MIN_DELAY_BETWEEN_RAS between multicast
	// advertisements.
	raMinDelayBetween = 3 * time.Second
	// raMaxPendingUnicast bounds the solicitations waiting for their
	// unicast answer; more are ignored, so a flood of solicitations costs
	// at most that many advertisements per raMaxDelay.
	raMaxPendingUnicast = 64

	// raRouterLifetime is AdvDefaultLifetime in seconds: between
	// MaxRtrAdvInterval and 9000 s, so a pod keeps its default router
	// across several lost advertisements.
	raRouterLifetime = 1800
	// raCurHopLimit is AdvCurHopLimit, the hop limit pods should use.
	raCurHopLimit = 64
	// raPrefixValidLifetime and raPrefixPreferredLifetime are
	// AdvValidLifetime and AdvPreferredLifetime of the prefixes (RFC 4861
	// section 6.2.1 defaults: 30 and 7 days). They bound how long a pod
	// treats the prefix as on-link without hearing from the gateway.
	raPrefixValidLifetime     = 30 * 24 * 3600
	raPrefixPreferredLifetime = 7 * 24 * 3600
)

// NDP option types (RFC 4861 section 4.6).
const (
	ndpOptSourceLinkAddress = 1
	ndpOptPrefixInfo        = 3
	ndpOptMTU               = 5
)

// startRouterAdvertisements starts raLoop when the gateway has an IPv6
// address. A gateway without one sends no advertisements. Failing to
// start is logged, not fatal: pods are configured with their routes by
// the CNI plugin and do not depend on advertisements.
func (p *Port) startRouterAdvertisements() {
	prefixes := ipv6Prefixes(p.opts.Addrs)
	if len(prefixes) == 0 {
		return
	}
	a, err := newAdvertiser(p, prefixes)
	if err != nil {
		p.log.Warn("no router advertisements", "err", err)
		return
	}
	p.flows.Go(a.raLoop)
}

// ipv6Prefixes returns the distinct IPv6 subnets of addrs.
func ipv6Prefixes(addrs []netip.Prefix) []netip.Prefix {
	var prefixes []netip.Prefix
	for _, a := range addrs {
		pfx := a.Masked()
		if pfx.Addr().Is6() && !containsPrefix(prefixes, pfx) {
			prefixes = append(prefixes, pfx)
		}
	}
	return prefixes
}

func containsPrefix(prefixes []netip.Prefix, pfx netip.Prefix) bool {
	for _, q := range prefixes {
		if q == pfx {
			return true
		}
	}
	return false
}

// advertiser is the state of raLoop; only raLoop uses it.
type advertiser struct {
	p   *Port
	ep  tcpip.Endpoint
	wq  *waiter.Queue
	src tcpip.Address // the gateway's link-local address
	msg []byte        // the advertisement; the endpoint fills in its checksum
	buf bytes.Buffer  // one solicitation being read

	sent          int       // multicast advertisements sent
	lastMulticast time.Time // zero before the first
	nextMulticast time.Time
	// unicast holds the soliciting addresses and when their answer is due.
	unicast map[tcpip.Address]time.Time
}

// newAdvertiser opens the endpoint and builds the advertisement. The
// gateway's link-local address is the one gVisor generated from its MAC
// (EUI-64, RFC 4291 appendix A), because the stack has AutoGenLinkLocal.
func newAdvertiser(p *Port, prefixes []netip.Prefix) (*advertiser, error) {
	src, ok := p.linkLocal()
	if !ok {
		return nil, errors.New("netstack: router advertisements: no ipv6 link-local address")
	}
	wq := new(waiter.Queue)
	ep, err := raw.NewEndpoint(p.stack, ipv6.ProtocolNumber, header.ICMPv6ProtocolNumber, wq)
	if err != nil {
		return nil, tcpipError("router advertisements: open icmpv6 endpoint", err)
	}
	filter := icmpv6Filter(header.ICMPv6RouterSolicit)
	if err := ep.SetSockOpt(&filter); err != nil {
		ep.Close()
		return nil, tcpipError("router advertisements: set icmpv6 filter", err)
	}
	// The hop limit of a solicitation is checked (RFC 4861 section
	// 6.1.1). Our own multicast advertisements are not looped back: the
	// stack ignores advertisements anyway.
	ep.SocketOptions().SetReceiveHopLimit(true)
	ep.SocketOptions().SetMulticastLoop(false)
	return &advertiser{
		p:       p,
		ep:      ep,
		wq:      wq,
		src:     src,
		msg:     routerAdvert(p.opts.MAC, p.opts.MTU, prefixes),
		unicast: make(map[tcpip.Address]time.Time),
	}, nil
}

// icmpv6Filter returns an ICMPv6 filter for a raw endpoint that passes
// the types in pass and denies all others (RFC 3542 section 3.2).
func icmpv6Filter(pass ...header.ICMPv6Type) tcpip.ICMPv6Filter {
	var f tcpip.ICMPv6Filter
	for i := range f.DenyType {
		f.DenyType[i] = ^uint32(0)
	}
	for _, t := range pass {
		f.DenyType[t/32] &^= 1 << (t % 32)
	}
	return f
}

// linkLocal returns the NIC's IPv6 link-local unicast address.
func (p *Port) linkLocal() (tcpip.Address, bool) {
	for _, pa := range p.stack.NICInfo()[nicID].ProtocolAddresses {
		if pa.Protocol == ipv6.ProtocolNumber && header.IsV6LinkLocalUnicastAddress(pa.AddressWithPrefix.Address) {
			return pa.AddressWithPrefix.Address, true
		}
	}
	return tcpip.Address{}, false
}

// routerAdvert returns the ICMPv6 Router Advertisement (RFC 4861 section
// 4.2) with its checksum zero: current hop limit 64, no M or O flag
// (addresses come from our IPAM, DNS from the CNI result; there is no
// DHCPv6), medium router preference, the router lifetime, unspecified
// reachable time and retransmission timer, and the options:
//
//   - source link-layer address: the gateway's MAC (section 4.6.1), so a
//     pod needs no neighbour solicitation to reach its router;
//   - MTU (section 4.6.4): the link MTU from Options;
//   - prefix information for each prefix (section 4.6.2) with L = 1: the
//     prefix is on-link, pods reach each other directly, not through the
//     gateway. A = 0: pods must not autoconfigure addresses from it (RFC
//     4862 section 5.5.3), since every pod address comes from the
//     daemon, which hands each out once and configures it on the pod.
func routerAdvert(mac vswitch.MAC, mtu int, prefixes []netip.Prefix) []byte {
	b := make([]byte, 16, 16+8+8+32*len(prefixes))
	b[0] = byte(header.ICMPv6RouterAdvert)
	b[4] = raCurHopLimit
	binary.BigEndian.PutUint16(b[6:], raRouterLifetime)

	b = append(b, ndpOptSourceLinkAddress, 1)
	b = append(b, mac[:]...)

	b = append(b, ndpOptMTU, 1, 0, 0)
	b = binary.BigEndian.AppendUint32(b, uint32(mtu))

	for _, pfx := range prefixes {
		const onLink = 0x80
		b = append(b, ndpOptPrefixInfo, 4, byte(pfx.Bits()), onLink)
		b = binary.BigEndian.AppendUint32(b, raPrefixValidLifetime)
		b = binary.BigEndian.AppendUint32(b, raPrefixPreferredLifetime)
		b = binary.BigEndian.AppendUint32(b, 0) // reserved
		a := pfx.Addr().As16()
		b = append(b, a[:]...)
	}
	return b
}

// raLoop sends the advertisements and reads the solicitations until the
// Port closes, then closes the endpoint.
func (a *advertiser) raLoop() {
	defer a.ep.Close()
	// The first advertisement goes out at once.
	a.nextMulticast = time.Now()
	entry, readable := waiter.NewChannelEntry(waiter.ReadableEvents)
	a.wq.EventRegister(&entry)
	defer a.wq.EventUnregister(&entry)
	// The endpoint signals only when its queue turns non-empty: read what
	// arrived before the registration, or it would never signal again.
	a.readSolicitations(time.Now())

	timer := time.NewTimer(time.Until(a.nextDue()))
	defer timer.Stop()
	for {
		select {
		case <-a.p.ctx.Done():
			return
		case <-readable:
			a.readSolicitations(time.Now())
		case <-timer.C:
			a.sendDue(time.Now())
		}
		timer.Reset(time.Until(a.nextDue()))
	}
}

// nextDue is when the next advertisement, multicast or unicast, is due.
func (a *advertiser) nextDue() time.Time {
	due := a.nextMulticast
	for _, at := range a.unicast {
		if at.Before(due) {
			due = at
		}
	}
	return due
}

// sendDue sends the advertisements due at now.
func (a *advertiser) sendDue(now time.Time) {
	if !now.Before(a.nextMulticast) {
		a.send(header.IPv6AllNodesMulticastAddress)
		a.sent++
		a.lastMulticast = now
		a.nextMulticast = now.Add(unsolicitedInterval(a.sent, rand.N[time.Duration]))
		// Every pod, the soliciting ones too, has just heard it.
		clear(a.unicast)
		return
	}
	for dst, at := range a.unicast {
		if !now.Before(at) {
			a.send(dst)
			delete(a.unicast, dst)
		}
	}
}

// send writes the advertisement to dst. A failure is a lost packet: the
// next advertisement makes up for it.
func (a *advertiser) send(dst tcpip.Address) {
	var r bytes.Reader
	r.Reset(a.msg)
	_, err := a.ep.Write(&r, tcpip.WriteOptions{
		To: &tcpip.FullAddress{NIC: nicID, Addr: dst},
		ControlMessages: tcpip.SendableControlMessages{
			HasHopLimit:       true,
			HopLimit:          header.NDPHopLimit,
			HasIPv6PacketInfo: true,
			IPv6PacketInfo:    tcpip.IPv6PacketInfo{NIC: nicID, Addr: a.src},
		},
	})
	if err != nil {
		a.p.log.Debug("router advertisement not sent", "dst", dst.String(), "err", err.String())
	}
}

// readSolicitations reads every queued Router Solicitation and schedules
// the answer to each valid one.
func (a *advertiser) readSolicitations(now time.Time) {
	for {
		a.buf.Reset()
		res, err := a.ep.Read(&a.buf, tcpip.ReadOptions{NeedRemoteAddr: true})
		if err != nil {
			// ErrWouldBlock: all read. Anything else means the endpoint
			// closed, and raLoop is about to return.
			return
		}
		src := res.RemoteAddr.Addr
		if !validSolicitation(a.buf.Bytes(), res.ControlMessages.HopLimit, src.Unspecified()) {
			continue
		}
		delay := rand.N(raMaxDelay + 1)
		if src.Unspecified() {
			if at := multicastAnswerAt(now, a.lastMulticast, delay); at.Before(a.nextMulticast) {
				a.nextMulticast = at
			}
			continue
		}
		if _, ok := a.unicast[src]; ok || len(a.unicast) >= raMaxPendingUnicast {
			continue
		}
		a.unicast[src] = now.Add(delay)
	}
}

// validSolicitation applies the checks of RFC 4861 section 6.1.1 to an
// ICMPv6 message that the endpoint passed as type 133 with a valid
// checksum: hop limit 255, code 0, at least 8 octets, every option of
// non-zero length, and no source link-layer address option when the source
// address is unspecified. Fragmented solicitations, which RFC 6980 forbids,
// never get here: the stack hands raw endpoints the packets whose IPv6
// header names ICMPv6 as the next header, not those with extension headers.
func validSolicitation(msg []byte, hopLimit uint8, unspecifiedSource bool) bool {
	if hopLimit != header.NDPHopLimit || len(msg) < 8 || msg[0] != byte(header.ICMPv6RouterSolicit) || msg[1] != 0 {
		return false
	}
	for opts := msg[8:]; len(opts) > 0; {
		if len(opts) < 2 || opts[1] == 0 || int(opts[1])*8 > len(opts) {
			return false
		}
		if opts[0] == ndpOptSourceLinkAddress && unspecifiedSource {
			return false
		}
		opts = opts[int(opts[1])*8:]
	}
	return true
}

// unsolicitedInterval is the time from the sent-th multicast advertisement
// to the next unsolicited one: uniformly random between MinRtrAdvInterval
// and MaxRtrAdvInterval, but at most MAX_INITIAL_RTR_ADVERT_INTERVAL after
// the first MAX_INITIAL_RTR_ADVERTISEMENTS (RFC 4861 section 6.2.4). randN
// returns a uniform value in [0, n), as rand.N does.
func unsolicitedInterval(sent int, randN func(time.Duration) time.Duration) time.Duration {
	d := raMinInterval + randN(raMaxInterval-raMinInterval+1)
	if sent < raMaxInitialAdverts && d > raMaxInitialInterval {
		d = raMaxInitialInterval
	}
	return d
}

// multicastAnswerAt is when the multicast answer to a solicitation that
// arrived at now is due, with the random delay: now plus delay, but if a
// multicast advertisement went out within MIN_DELAY_BETWEEN_RAS, that
// interval plus delay after it (RFC 4861 section 6.2.6).
func multicastAnswerAt(now, lastMulticast time.Time, delay time.Duration) time.Time {
	if !lastMulticast.IsZero() && now.Sub(lastMulticast) < raMinDelayBetween {
		return lastMulticast.Add(raMinDelayBetween + delay)
	}
	return now.Add(delay)
}
