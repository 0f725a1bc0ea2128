package vswitch

import (
	"encoding/binary"
	"net/netip"
)

// ICMP errors a router sends about a packet it cannot forward: RFC 792 and
// RFC 1812 section 4.3 for IPv4, RFC 4443 for IPv6. WriteICMPError builds
// the whole Ethernet frame in the caller's buffer, so the router answers
// without allocating.

// ICMPKind is an error a router sends about a packet it cannot forward.
type ICMPKind uint8

const (
	ICMPTimeExceeded    ICMPKind = iota // IPv4 type 11 code 0; ICMPv6 type 3 code 0 (hop limit exceeded in transit)
	ICMPFragNeeded                      // IPv4 type 3 code 4 with the next-hop MTU (RFC 1191); ICMPv6 type 2 packet too big with the MTU (RFC 4443 3.2)
	ICMPNetUnreachable                  // IPv4 type 3 code 0; ICMPv6 type 1 code 0 (no route to destination)
	ICMPHostUnreachable                 // IPv4 type 3 code 1; ICMPv6 type 1 code 3 (address unreachable)
	numICMPKinds
)

// String returns the kind's metric label.
func (k ICMPKind) String() string {
	switch k {
	case ICMPTimeExceeded:
		return "time_exceeded"
	case ICMPFragNeeded:
		return "frag_needed"
	case ICMPNetUnreachable:
		return "net_unreachable"
	case ICMPHostUnreachable:
		return "host_unreachable"
	}
	return "unknown"
}

// icmpType is the type and code of an ICMP or ICMPv6 message.
type icmpType struct{ typ, code uint8 }

// The messages of each kind, for IPv4 (RFC 792, RFC 1191) and IPv6
// (RFC 4443 section 3).
var (
	icmpv4Types = [numICMPKinds]icmpType{
		ICMPTimeExceeded:    {11, 0},
		ICMPFragNeeded:      {3, 4},
		ICMPNetUnreachable:  {3, 0},
		ICMPHostUnreachable: {3, 1},
	}
	icmpv6Types = [numICMPKinds]icmpType{
		ICMPTimeExceeded:    {3, 0},
		ICMPFragNeeded:      {2, 0},
		ICMPNetUnreachable:  {1, 0},
		ICMPHostUnreachable: {1, 3},
	}
)

const (
	// icmpHdrLen is the ICMP and ICMPv6 header: type, code, checksum and
	// four bytes whose meaning depends on the type (unused, or the MTU).
	icmpHdrLen = 8

	// icmpv4MaxLen bounds the IP packet of an ICMP error (RFC 1812
	// 4.3.2.3), icmpv6MaxLen that of an ICMPv6 error (RFC 4443 2.4(c)).
	icmpv4MaxLen = 576
	icmpv6MaxLen = 1280

	// The smallest MTU an IPv4 link may have (RFC 791) and an IPv6 link
	// (RFC 8200 section 5): a smaller one in a "fragmentation needed" or
	// "packet too big" error is a caller's bug, not something to send.
	ipv4MinMTU = 68
	ipv6MinMTU = 1280

	icmpHopLimit = 64
	// ipv4PrecInternetControl is precedence 6, which ICMP errors other
	// than source quench should carry (RFC 1812 4.3.2.5).
	ipv4PrecInternetControl = 0xc0

	// ICMPv6 types from 128 on are informational (RFC 4443 2.1), but a
	// redirect is as much an error report as any (RFC 4443 2.4(e.1)).
	icmpv6Informational = 128
	icmpv6Redirect      = 137
)

// WriteICMPError writes into dst an Ethernet frame carrying the ICMP (IPv4)
// or ICMPv6 error of kind about orig, and returns its length, or 0 when no
// error may be sent about orig. Nothing is written to dst when it returns 0.
//
// orig is the offending Ethernet frame; its ethertype says which family it
// is. It may be a GSO super-frame, whose IP length field need not match the
// bytes present: the quote is the IP packet up to the length its header
// claims or the end of orig, whichever comes first, cut to keep the error's
// IP packet within 576 bytes for IPv4 (RFC 1812 4.3.2.3) and 1280 for IPv6
// (RFC 4443 2.4(c)). An IPv4 total length shorter than the header cannot
// be right and quotes only the header.
//
// The error goes back to orig's sender: to its source MAC from the MAC
// from, and to its source address from src, which must be of orig's
// family. mtu is the next-hop MTU, used only by ICMPFragNeeded; it must be
// at least 68 for IPv4 (and fit 16 bits) and 1280 for IPv6.
//
// No error is sent (RFC 1812 4.3.2.7, RFC 4443 2.4(e)) about a packet whose
// IP header is not valid, about an ICMP error (only ICMP echo, timestamp,
// information and address mask messages and ICMPv6 informational messages
// other than redirect are answered; an ICMP packet too short to show its
// type is not), about an IPv4 fragment other than the first, about a
// packet to a multicast or limited broadcast address or sent as a link-layer
// multicast or broadcast (ICMPv6 packet too big excepted, RFC 4443
// 2.4(e.3)), about a packet whose source is not one host (unspecified,
// loopback, multicast, and for IPv4 class E, which holds the limited
// broadcast address), or about a frame from a multicast MAC. IPv6 extension
// headers are not walked: a packet whose first next header is not ICMPv6
// counts as non-ICMP.
//
// dst may be orig's own buffer: the router can write the error over the
// frame it answers. WriteICMPError allocates nothing.
func WriteICMPError(dst []byte, orig []byte, kind ICMPKind, mtu int, from MAC, src netip.Addr) int {
	if kind >= numICMPKinds || len(orig) < EtherHdrLen {
		return 0
	}
	if Ether(orig).Src().Multicast() {
		return 0
	}
	switch Ether(orig).Type() {
	case EtherTypeIP4:
		return writeICMPv4(dst, orig, kind, mtu, from, src)
	case EtherTypeIP6:
		return writeICMPv6(dst, orig, kind, mtu, from, src)
	}
	return 0
}

// writeICMPv4 is WriteICMPError for an IPv4 orig.
func writeICMPv4(dst, orig []byte, kind ICMPKind, mtu int, from MAC, src netip.Addr) int {
	ip := IPv4(orig[EtherHdrLen:])
	if !src.Is4() || !ip.Valid(true) || !mayAnswerIPv4(Ether(orig), ip) {
		return 0
	}
	if kind == ICMPFragNeeded && (mtu < ipv4MinMTU || mtu > 0xffff) {
		return 0
	}
	q := min(quoteLenIPv4(ip), icmpv4MaxLen-IPv4MinHdrLen-icmpHdrLen)
	n := EtherHdrLen + IPv4MinHdrLen + icmpHdrLen + q
	if len(dst) < n {
		return 0
	}
	// Read what the reply needs from orig before writing any of dst,
	// which may share orig's buffer; copy moves overlapping bytes right.
	to := Ether(orig).Src()
	origSrc := [4]byte(ip[12:16])
	copy(dst[n-q:n], ip[:q])

	out := Ether(dst[:n])
	out.SetDst(to)
	out.SetSrc(from)
	out.SetType(EtherTypeIP4)
	h := IPv4(out.Payload())
	h[0] = 4<<4 | IPv4MinHdrLen/4
	h[1] = ipv4PrecInternetControl
	binary.BigEndian.PutUint16(h[2:4], uint16(n-EtherHdrLen))
	binary.BigEndian.PutUint32(h[4:8], 0) // ID 0, DF clear, offset 0
	h[8] = icmpHopLimit
	h[9] = ProtoICMP
	s := src.As4()
	copy(h[12:16], s[:])
	copy(h[16:20], origSrc[:])
	h.SetChecksum(h.HeaderChecksum())

	m := h[IPv4MinHdrLen:]
	t := icmpv4Types[kind]
	m[0], m[1] = t.typ, t.code
	binary.BigEndian.PutUint16(m[2:4], 0)
	binary.BigEndian.PutUint32(m[4:8], 0)
	if kind == ICMPFragNeeded {
		// RFC 1191 section 4: the next-hop MTU in the low 16 bits of
		// the word RFC 792 left unused.
		binary.BigEndian.PutUint16(m[6:8], uint16(mtu))
	}
	binary.BigEndian.PutUint16(m[2:4], ^Checksum(m, 0))
	return n
}

// quoteLenIPv4 is the length of the IPv4 packet in ip as far as it is
// present: its total length, at least its header, at most len(ip).
func quoteLenIPv4(ip IPv4) int {
	return min(max(int(ip.TotalLen()), ip.HeaderLen()), len(ip))
}

// mayAnswerIPv4 reports whether RFC 1812 4.3.2.7 lets a router send an ICMP
// error about ip, which arrived in the frame e.
func mayAnswerIPv4(e Ether, ip IPv4) bool {
	if ip.FragOffset() != 0 {
		return false
	}
	d := ip.Dst().As4()
	if d[0]&0xf0 == 224 || d == [4]byte{255, 255, 255, 255} || e.Dst().Multicast() {
		return false
	}
	// Sources that name no single host: 0.0.0.0, 127/8, multicast 224/4
	// and class E 240/4 (255.255.255.255 among them).
	s := ip.Src().As4()
	if s == [4]byte{} || s[0] == 127 || s[0] >= 224 {
		return false
	}
	if ip.Protocol() != ProtoICMP {
		return true
	}
	msg := ip[ip.HeaderLen():quoteLenIPv4(ip)]
	if len(msg) == 0 {
		return false
	}
	switch msg[0] {
	case 0, 8, // echo reply, echo request (RFC 792)
		13, 14, 15, 16, // timestamp, information (RFC 792)
		17, 18: // address mask (RFC 950)
		return true
	}
	return false
}

// writeICMPv6 is WriteICMPError for an IPv6 orig.
func writeICMPv6(dst, orig []byte, kind ICMPKind, mtu int, from MAC, src netip.Addr) int {
	ip := IPv6(orig[EtherHdrLen:])
	if !src.Is6() || src.Is4In6() || !ip.Valid(true) || !mayAnswerIPv6(Ether(orig), ip, kind) {
		return 0
	}
	if kind == ICMPFragNeeded && (mtu < ipv6MinMTU || uint64(mtu) > 0xffffffff) {
		return 0
	}
	q := min(quoteLenIPv6(ip), icmpv6MaxLen-IPv6HdrLen-icmpHdrLen)
	n := EtherHdrLen + IPv6HdrLen + icmpHdrLen + q
	if len(dst) < n {
		return 0
	}
	// As for IPv4: read orig before writing dst, which may overlap it.
	to := Ether(orig).Src()
	origSrc := [16]byte(ip[8:24])
	copy(dst[n-q:n], ip[:q])

	out := Ether(dst[:n])
	out.SetDst(to)
	out.SetSrc(from)
	out.SetType(EtherTypeIP6)
	h := IPv6(out.Payload())
	binary.BigEndian.PutUint32(h[0:4], 6<<28) // traffic class and flow label 0
	binary.BigEndian.PutUint16(h[4:6], uint16(icmpHdrLen+q))
	h[6] = ProtoICMPv6
	h[7] = icmpHopLimit
	s := src.As16()
	copy(h[8:24], s[:])
	copy(h[24:40], origSrc[:])

	m := h[IPv6HdrLen:]
	t := icmpv6Types[kind]
	m[0], m[1] = t.typ, t.code
	binary.BigEndian.PutUint16(m[2:4], 0)
	binary.BigEndian.PutUint32(m[4:8], 0)
	if kind == ICMPFragNeeded {
		binary.BigEndian.PutUint32(m[4:8], uint32(mtu)) // RFC 4443 3.2
	}
	// The pseudo-header (RFC 8200 8.1): addresses, upper-layer length,
	// next header.
	pseudo := uint32(Checksum(h[8:40], 0)) + uint32(len(m)) + ProtoICMPv6
	binary.BigEndian.PutUint16(m[2:4], ^Checksum(m, pseudo))
	return n
}

// quoteLenIPv6 is the length of the IPv6 packet in ip as far as it is
// present: its header and payload length, at most len(ip).
func quoteLenIPv6(ip IPv6) int {
	return min(IPv6HdrLen+int(ip.PayloadLen()), len(ip))
}

// mayAnswerIPv6 reports whether RFC 4443 2.4(e) lets a router send the
// ICMPv6 error kind about ip, which arrived in the frame e.
func mayAnswerIPv6(e Ether, ip IPv6, kind ICMPKind) bool {
	// Packet too big goes to multicast senders too (2.4(e.3)): path MTU
	// discovery works for multicast.
	if (ip.Dst().IsMulticast() || e.Dst().Multicast()) && kind != ICMPFragNeeded {
		return false
	}
	s := ip.Src()
	if s.IsUnspecified() || s.IsLoopback() || s.IsMulticast() {
		return false
	}
	if ip.NextHeader() != ProtoICMPv6 {
		return true
	}
	msg := ip[IPv6HdrLen:quoteLenIPv6(ip)]
	return len(msg) > 0 && msg[0] >= icmpv6Informational && msg[0] != icmpv6Redirect
}
