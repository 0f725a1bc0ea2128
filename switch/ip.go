package vswitch

import (
	"encoding/binary"
	"net/netip"
)

// IP header layouts (RFC 791, RFC 8200) and the protocol numbers the router
// looks at.
const (
	IPv4MinHdrLen = 20
	IPv6HdrLen    = 40

	ProtoICMP   = 1
	ProtoTCP    = 6
	ProtoUDP    = 17
	ProtoICMPv6 = 58
	ProtoSCTP   = 132

	ipv4FlagDF     = 0x4000
	ipv4FlagMF     = 0x2000
	ipv4FragOffset = 0x1fff
)

// IPv4 is a view of an IPv4 packet. Accessors expect Valid to hold. It never
// copies.
type IPv4 []byte

// Valid reports whether b holds at least the header its IHL claims, with
// version 4 and a total length that covers the header and fits b. A GSO
// super-frame's total length may be anything (the segmenter writes it), so
// gso skips that check.
func (b IPv4) Valid(gso bool) bool {
	if len(b) < IPv4MinHdrLen || b[0]>>4 != 4 {
		return false
	}
	hl := b.HeaderLen()
	if hl < IPv4MinHdrLen || hl > len(b) {
		return false
	}
	if gso {
		return true
	}
	tl := int(b.TotalLen())
	return tl >= hl && tl <= len(b)
}

func (b IPv4) HeaderLen() int       { return int(b[0]&0x0f) * 4 }
func (b IPv4) TotalLen() uint16     { return binary.BigEndian.Uint16(b[2:4]) }
func (b IPv4) ID() uint16           { return binary.BigEndian.Uint16(b[4:6]) }
func (b IPv4) DF() bool             { return binary.BigEndian.Uint16(b[6:8])&ipv4FlagDF != 0 }
func (b IPv4) MF() bool             { return binary.BigEndian.Uint16(b[6:8])&ipv4FlagMF != 0 }
func (b IPv4) FragOffset() int      { return int(binary.BigEndian.Uint16(b[6:8])&ipv4FragOffset) * 8 }
func (b IPv4) TTL() uint8           { return b[8] }
func (b IPv4) Protocol() uint8      { return b[9] }
func (b IPv4) Src() netip.Addr      { return netip.AddrFrom4([4]byte(b[12:16])) }
func (b IPv4) Dst() netip.Addr      { return netip.AddrFrom4([4]byte(b[16:20])) }
func (b IPv4) Payload() []byte      { return b[b.HeaderLen():] }
func (b IPv4) Checksum() uint16     { return binary.BigEndian.Uint16(b[10:12]) }
func (b IPv4) SetChecksum(c uint16) { binary.BigEndian.PutUint16(b[10:12], c) }

// DecTTL decrements the TTL and updates the header checksum incrementally
// (RFC 1624, equation 3): the TTL is the high byte of its 16-bit word, so
// the word drops by 0x0100.
func (b IPv4) DecTTL() {
	b[8]--
	sum := uint32(^b.Checksum()) + 0xfeff // ~m + m' = -0x0100 in ones' complement
	sum = sum&0xffff + sum>>16
	sum = sum&0xffff + sum>>16
	b.SetChecksum(^uint16(sum))
}

// HeaderChecksum computes the header checksum as it should read.
func (b IPv4) HeaderChecksum() uint16 {
	h := b[:b.HeaderLen()]
	sum := uint32(Checksum(h[:10], 0))
	sum = uint32(Checksum(h[12:], sum))
	return ^uint16(sum)
}

// ChecksumValid reports whether the header checksum is right: the ones'
// complement sum of the whole header is all ones (RFC 791, RFC 1071).
func (b IPv4) ChecksumValid() bool { return Checksum(b[:b.HeaderLen()], 0) == 0xffff }

// IPv6 is a view of an IPv6 packet. Accessors expect Valid to hold. It never
// copies.
type IPv6 []byte

// Valid reports whether b holds a fixed header of version 6 and, unless gso,
// the payload length it claims (jumbograms are not taken).
func (b IPv6) Valid(gso bool) bool {
	if len(b) < IPv6HdrLen || b[0]>>4 != 6 {
		return false
	}
	return gso || IPv6HdrLen+int(b.PayloadLen()) <= len(b)
}

func (b IPv6) PayloadLen() uint16 { return binary.BigEndian.Uint16(b[4:6]) }
func (b IPv6) NextHeader() uint8  { return b[6] }
func (b IPv6) HopLimit() uint8    { return b[7] }
func (b IPv6) DecHopLimit()       { b[7]-- }
func (b IPv6) Src() netip.Addr    { return netip.AddrFrom16([16]byte(b[8:24])) }
func (b IPv6) Dst() netip.Addr    { return netip.AddrFrom16([16]byte(b[24:40])) }
func (b IPv6) Payload() []byte    { return b[IPv6HdrLen:] }
