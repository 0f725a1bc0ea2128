package netstack

import (
	"bytes"
	"errors"
	"log/slog"
	"net/netip"
	"syscall"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/raw"
	"gvisor.dev/gvisor/pkg/waiter"
)

// ICMP destination unreachable errors for egress flows whose host dial
// finds no way to the destination.
//
// A kernel NAT router without a route for a pod's packet answers it with
// an ICMP destination unreachable error (RFC 792, RFC 1812 section
// 4.3.3.1) or an ICMPv6 one (RFC 4443 section 3.1), and the pod's connect
// fails at once instead of retransmitting its SYN for two minutes. The
// gateway does the same when the host dial of a flow fails because the
// host has no way there:
//
//   - EHOSTUNREACH (an unreachable route, or the neighbour never answered):
//     host unreachable, ICMP code 1, ICMPv6 code 3 (address unreachable),
//     as Linux's ip_error and ip6_link_failure send them;
//   - ENETUNREACH, ENETDOWN, EADDRNOTAVAIL and EAFNOSUPPORT (no route, a
//     route through a link that is down, no source address or no stack of
//     the destination's family at all, such as an IPv6 destination on an
//     IPv4-only node): net unreachable, ICMP code 0, ICMPv6 code 0 (no
//     route to destination).
//
// A time-out stays silent, as behind a NAT whose far side drops the SYN.
//
// The error quotes the packet that started the flow: the SYN, recorded when
// it arrives (handleTCPPacket), or the flow's first datagram (handleUDP).
// The pod matches the quote to its socket, and Linux's tcp_v4_err and
// tcp_v6_err act only on a quoted sequence number between snd_una and
// snd_nxt, so it must be the SYN's own. As much of the packet is quoted as
// fits in an error of 576 bytes for IPv4 (RFC 1812 section 4.3.2.3) and
// 1280 bytes for IPv6 (RFC 4443 section 3.1): the IP header and the whole
// TCP or UDP header at least, more than RFC 792's eight bytes.
//
// Design: gVisor has no call that sends an ICMP error for a packet (its
// IPv4 and IPv6 returnError are internal), so the gateway writes the
// errors through two raw endpoints of its stack, from the flow goroutine
// that saw the dial fail. They take the stack's route to the pod and its
// neighbour resolution, like any packet the gateway sends.
//
//   - IPv4: an unassociated raw endpoint (raw.EndpointFactory). It takes
//     whole IP packets (IP_HDRINCL) and receives nothing; the packet names
//     its source, the gateway's address in the pod's subnet, and the stack
//     fills in the ID and the header checksum. An associated endpoint would
//     be handed a copy of every ICMP packet the gateway receives.
//   - IPv6: an associated raw ICMPv6 endpoint, as in ra.go: gVisor writes
//     IPv6 only through those. An ICMPv6 filter that denies every type
//     keeps it from receiving; the stack fills in the checksum (RFC 3542
//     section 3.1), and the packet info picks the source address.
//
// The stack's ICMP rate limiter, which its own errors share, bounds the
// errors (RFC 1812 section 4.3.2.8, RFC 4443 section 2.4 (f)).

// Sizes of the errors: at most icmp4MaxError and icmp6MaxError bytes, IP
// header included.
const (
	icmp4MaxError = 576
	icmp6MaxError = header.IPv6MinimumMTU
)

// unreachable is the destination unreachable error a failed host dial
// turns into.
type unreachable uint8

const (
	notUnreachable  unreachable = iota // no error: a RST or silence instead
	netUnreachable                     // ICMP code 0, ICMPv6 code 0
	hostUnreachable                    // ICMP code 1, ICMPv6 code 3
)

// unreachableKind classifies a failed host dial or send; see the comment
// at the top of this file.
func unreachableKind(err error) unreachable {
	switch {
	case errors.Is(err, syscall.EHOSTUNREACH):
		return hostUnreachable
	case errors.Is(err, syscall.ENETUNREACH), errors.Is(err, syscall.ENETDOWN),
		errors.Is(err, syscall.EADDRNOTAVAIL), errors.Is(err, syscall.EAFNOSUPPORT):
		return netUnreachable
	}
	return notUnreachable
}

// icmpErrors sends the errors. Its endpoints are nil if they could not be
// opened; then the pods get no errors, as before there were any.
type icmpErrors struct {
	p        *Port
	log      *slog.Logger
	ep4, ep6 tcpip.Endpoint
	wq4, wq6 waiter.Queue
	// quoteMax4 is the most of an IPv4 packet an error quotes:
	// icmp4MaxError without the headers, less on a link whose MTU is
	// smaller (the raw endpoint takes header-included packets of at most
	// the link MTU less an IPv4 header).
	quoteMax4 int
}

// newICMPErrors opens the endpoints. A failure is logged, not fatal: pods
// then wait for their own time-outs.
func newICMPErrors(p *Port, log *slog.Logger) *icmpErrors {
	c := &icmpErrors{
		p:         p,
		log:       log,
		quoteMax4: min(icmp4MaxError, p.opts.MTU-header.IPv4MinimumSize) - header.IPv4MinimumSize - header.ICMPv4MinimumSize,
	}
	ep4, err := raw.EndpointFactory{}.NewUnassociatedEndpoint(p.stack, ipv4.ProtocolNumber, header.ICMPv4ProtocolNumber, &c.wq4)
	if err != nil {
		log.Warn("no icmp unreachable errors", "err", err.String())
	} else {
		c.ep4 = ep4
	}
	ep6, err := raw.NewEndpoint(p.stack, ipv6.ProtocolNumber, header.ICMPv6ProtocolNumber, &c.wq6)
	if err != nil {
		log.Warn("no icmpv6 unreachable errors", "err", err.String())
		return c
	}
	deny := icmpv6Filter()
	if err := ep6.SetSockOpt(&deny); err != nil {
		ep6.Close()
		log.Warn("no icmpv6 unreachable errors", "err", err.String())
		return c
	}
	c.ep6 = ep6
	return c
}

// close closes the endpoints.
func (c *icmpErrors) close() {
	if c.ep4 != nil {
		c.ep4.Close()
	}
	if c.ep6 != nil {
		c.ep6.Close()
	}
}

// quote returns the start of pkt, a packet the stack received, as an error
// about it quotes it: its IP header, its transport header and as much of
// its payload as fits. An IPv6 packet's extension headers are gone by the
// time the transport handlers see it, so its quoted header names the
// transport protocol as the next header, and the receiver finds the TCP or
// UDP header right after it.
func (c *icmpErrors) quote(pkt *stack.PacketBuffer) []byte {
	room := c.quoteMax4
	if pkt.NetworkProtocolNumber == ipv6.ProtocolNumber {
		room = icmp6MaxError - header.IPv6MinimumSize - header.ICMPv6DstUnreachableMinimumSize
	}
	nh := pkt.NetworkHeader().Slice()
	th := pkt.TransportHeader().Slice()
	b := make([]byte, 0, min(room, len(nh)+len(th)+pkt.Data().Size()))
	b = append(b, nh[:min(len(nh), room)]...)
	if pkt.NetworkProtocolNumber == ipv6.ProtocolNumber && len(b) >= header.IPv6MinimumSize {
		header.IPv6(b).SetNextHeader(uint8(pkt.TransportProtocolNumber))
	}
	b = append(b, th[:min(len(th), room-len(b))]...)
	return append(b, pkt.Data().AsRange().Capped(room-len(b)).ToSlice()...)
}

// send sends the error u about the quoted packet to pod, from the
// gateway's address in pod's subnet. It reports whether the error went
// out: the rate limiter and a failed write may keep it back.
func (c *icmpErrors) send(pod netip.Addr, u unreachable, quote []byte) bool {
	gw, ok := c.p.gatewayFor(pod)
	if !ok || u == notUnreachable || !c.p.stack.AllowICMPMessage() {
		return false
	}
	var err tcpip.Error
	if pod.Is4() {
		err = c.send4(gw, pod, u, quote)
	} else {
		err = c.send6(gw, pod, u, quote)
	}
	if err != nil {
		c.log.Debug("icmp unreachable not sent", "pod", pod, "err", err.String())
		return false
	}
	return true
}

// send4 writes an ICMP destination unreachable message (RFC 792) in an
// IPv4 packet of our own making.
func (c *icmpErrors) send4(gw, pod netip.Addr, u unreachable, quote []byte) tcpip.Error {
	if c.ep4 == nil {
		return &tcpip.ErrNotSupported{}
	}
	code := header.ICMPv4NetUnreachable
	if u == hostUnreachable {
		code = header.ICMPv4HostUnreachable
	}
	b := make([]byte, header.IPv4MinimumSize+header.ICMPv4MinimumSize+len(quote))
	header.IPv4(b).Encode(&header.IPv4Fields{
		TotalLength: uint16(len(b)),
		TTL:         ipv4.DefaultTTL,
		Protocol:    uint8(header.ICMPv4ProtocolNumber),
		SrcAddr:     tcpip.AddrFrom4(gw.As4()),
		DstAddr:     tcpip.AddrFrom4(pod.As4()),
	})
	icmp := header.ICMPv4(b[header.IPv4MinimumSize:])
	icmp.SetType(header.ICMPv4DstUnreachable)
	icmp.SetCode(code)
	copy(icmp[header.ICMPv4MinimumSize:], quote)
	// icmp is the whole message: the checksum covers the quote too.
	icmp.SetChecksum(header.ICMPv4Checksum(icmp, 0))
	var r bytes.Reader
	r.Reset(b)
	_, err := c.ep4.Write(&r, tcpip.WriteOptions{
		To: &tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFrom4(pod.As4())},
	})
	return err
}

// send6 writes an ICMPv6 destination unreachable message (RFC 4443
// section 3.1); the stack adds the IPv6 header and the checksum.
func (c *icmpErrors) send6(gw, pod netip.Addr, u unreachable, quote []byte) tcpip.Error {
	if c.ep6 == nil {
		return &tcpip.ErrNotSupported{}
	}
	code := header.ICMPv6NetworkUnreachable
	if u == hostUnreachable {
		code = header.ICMPv6AddressUnreachable
	}
	b := make([]byte, header.ICMPv6DstUnreachableMinimumSize+len(quote))
	icmp := header.ICMPv6(b)
	icmp.SetType(header.ICMPv6DstUnreachable)
	icmp.SetCode(code)
	copy(b[header.ICMPv6DstUnreachableMinimumSize:], quote)
	var r bytes.Reader
	r.Reset(b)
	_, err := c.ep6.Write(&r, tcpip.WriteOptions{
		To: &tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFrom16(pod.As16())},
		ControlMessages: tcpip.SendableControlMessages{
			HasIPv6PacketInfo: true,
			IPv6PacketInfo:    tcpip.IPv6PacketInfo{NIC: nicID, Addr: tcpip.AddrFrom16(gw.As16())},
		},
	})
	return err
}

// sendUnreachable sends the pod at src the error u about the quoted packet
// and counts it.
func (e *egress) sendUnreachable(src netip.Addr, u unreachable, quote []byte) {
	if e.icmp.send(src, u, quote) {
		e.icmpSent.Add(1)
	}
}
