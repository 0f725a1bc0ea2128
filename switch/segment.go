package vswitch

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Software segmentation of GSO super-frames, for a destination port that
// cannot take them (Caps.GSO false). Segment does what the kernel's
// software GSO does when a device lacks TSO/USO: skb_gso_segment through
// inet_gso_segment (net/ipv4/af_inet.c) or ipv6_gso_segment
// (net/ipv6/ip6_offload.c), then tcp_gso_segment (net/ipv4/tcp_offload.c)
// or __udp_gso_segment (net/ipv4/udp_offload.c), with checksums completed
// as gso_make_checksum does for a device without checksum offload. Which
// super-frames it accepts follows virtio_net_hdr_to_skb
// (include/linux/virtio_net.h), the kernel's own check of a frame a TAP's
// user hands it.
//
// One difference is deliberate: the kernel adjusts the pseudo-header sum
// the sender left in the checksum field (tcp_gso_segment replaces the
// super-frame's L4 length in it with each segment's). Segment ignores the
// field and computes every checksum from the addresses in the packet, so a
// sender's wrong pseudo-header sum cannot turn into wrong checksums on the
// wire. For a correct super-frame the result is the same, byte for byte.
//
// A frame with NeedsCsum and no GSO needs no segmenting: CompleteChecksum
// finishes it.

// ErrBadGSO is wrapped by every error Segment returns: the frame is not a
// GSO super-frame that can be segmented. The caller drops and counts it.
var ErrBadGSO = errors.New("bad gso frame")

// The reasons, fixed values so that a pod sending garbage costs no
// allocation either.
var (
	errGSOType      = fmt.Errorf("%w: not a gso type", ErrBadGSO)
	errGSOSize      = fmt.Errorf("%w: gso size 0", ErrBadGSO)
	errTruncated    = fmt.Errorf("%w: headers past the end of the frame", ErrBadGSO)
	errEtherType    = fmt.Errorf("%w: ethertype is neither ipv4 nor ipv6", ErrBadGSO)
	errFamily       = fmt.Errorf("%w: ip version does not match the gso type", ErrBadGSO)
	errIPHeader     = fmt.Errorf("%w: bad ip header length", ErrBadGSO)
	errIPLength     = fmt.Errorf("%w: ip length does not match the frame", ErrBadGSO)
	errFragment     = fmt.Errorf("%w: ipv4 fragment", ErrBadGSO)
	errProtocol     = fmt.Errorf("%w: ip protocol does not match the gso type", ErrBadGSO)
	errExtHeader    = fmt.Errorf("%w: ipv6 extension header", ErrBadGSO)
	errTCPHeader    = fmt.Errorf("%w: bad tcp data offset", ErrBadGSO)
	errUDPLength    = fmt.Errorf("%w: udp length does not match the frame", ErrBadGSO)
	errNoPayload    = fmt.Errorf("%w: no payload", ErrBadGSO)
	errCsumOffsets  = fmt.Errorf("%w: checksum offsets do not match the l4 header", ErrBadGSO)
	errNoCsum       = fmt.Errorf("%w: udp gso without checksum offload", ErrBadGSO)
	errSegmentSize  = fmt.Errorf("%w: gso size below the tcp minimum", ErrBadGSO)
	errSegmentCount = fmt.Errorf("%w: more udp segments than the kernel allows", ErrBadGSO)
	errTooBig       = fmt.Errorf("%w: segment larger than the pools' buffers", ErrBadGSO)
)

const (
	ipv4HdrLen = 20 // RFC 791, without options
	ipv6HdrLen = 40 // RFC 8200
	tcpHdrLen  = 20 // RFC 9293, without options
	udpHdrLen  = 8  // RFC 768

	ipProtoTCP = 6
	ipProtoUDP = 17

	tcpCsumOffset = 16 // offsetof(struct tcphdr, check)
	udpCsumOffset = 6  // offsetof(struct udphdr, check)

	// TCP flags in byte 13 of the header that segmentation changes.
	tcpFIN = 0x01
	tcpPSH = 0x08
	tcpCWR = 0x80

	// tcpMinGSOSize is the smallest payload per segment a Linux sender
	// uses (TCP_MIN_GSO_SIZE, include/net/tcp.h: TCP_MIN_SND_MSS less the
	// largest option space). A smaller GSOSize would only multiply one
	// frame into thousands of tiny ones.
	tcpMinGSOSize = 8
	// udpMaxSegments is UDP_MAX_SEGMENTS (include/linux/udp.h): the most
	// datagrams one USO frame may carry, which virtio_net_hdr_to_skb
	// enforces on frames from a TAP.
	udpMaxSegments = 128
)

// gsoFrame is what Segment learns from a super-frame's headers.
type gsoFrame struct {
	ipv6   bool
	proto  byte   // ipProtoTCP or ipProtoUDP
	l4     int    // offset of the TCP or UDP header
	hdrs   int    // offset of the payload: the length of every header
	mss    int    // payload bytes per segment
	id     uint16 // IPv4 identification of the first segment
	seq    uint32 // TCP sequence number of the first segment
	pseudo uint32 // sum of the pseudo-header's addresses and protocol
}

// Segment splits the GSO super-frame f into ordinary frames as the kernel's
// GSO would put them on the wire: each at most hdrs+GSOSize bytes, with
// every header fixed up and every checksum complete (Offload zero). It
// appends the segments, taken from pools, to dst and returns it; they are
// the caller's. f stays the caller's (not released, not changed). A frame
// that is not a valid GSO frame of its GSOType returns an error wrapping
// ErrBadGSO and dst unchanged, nothing taken from pools.
//
// Each segment copies the headers, then its share of the payload. The
// IPv4 identification counts up by one per segment from the super-frame's
// and the header checksum is redone; IPv6 gets its payload length. TCP
// segments carry the sequence number of their first byte, CWR only on the
// first, FIN and PSH only on the last (tcp_gso_segment). Each UDP segment is
// a datagram of its own, with its own length (__udp_gso_segment). The last
// segment carries the remainder. A payload that fits in one segment gives
// one frame with a complete checksum, as virtio_net_hdr_to_skb treats it
// ("too small packets are not really GSO ones").
//
// Header lengths come from the packet (IHL, TCP data offset), never from
// Offload.HdrLen: the kernel fills that with skb_headlen, only a hint of
// how much of the frame is linear (virtio_net_hdr_from_skb). Segment
// allocates nothing once the pools are warm and dst has room.
func Segment(dst []*Frame, f *Frame, pools *Pools) ([]*Frame, error) {
	b := f.Bytes()
	g, err := parseGSO(b, f.Offload)
	if err != nil {
		return dst, err
	}
	payload := b[g.hdrs:]
	if g.hdrs+min(g.mss, len(payload)) > pools.Large.FrameCap() {
		return dst, errTooBig
	}
	n := len(dst)
	for i, off := 0, 0; off < len(payload); i, off = i+1, off+g.mss {
		end := min(off+g.mss, len(payload))
		s := pools.Get(g.hdrs + end - off)
		if s == nil {
			// Not reached: the largest segment fits, as checked.
			for _, s := range dst[n:] {
				s.Release()
			}
			clear(dst[n:])
			return dst[:n], errTooBig
		}
		g.write(s, b[:g.hdrs], payload[off:end], i, off, end == len(payload))
		dst = append(dst, s)
	}
	return dst, nil
}

// parseGSO checks b against o and returns its layout.
func parseGSO(b []byte, o Offload) (gsoFrame, error) {
	var g gsoFrame
	switch o.GSOType {
	case GSOTCPv4, GSOTCPv6:
		g.proto = ipProtoTCP
	case GSOUDPL4:
		g.proto = ipProtoUDP
	default:
		return g, errGSOType
	}
	if o.GSOSize == 0 {
		return g, errGSOSize
	}
	if len(b) < EtherHdrLen {
		return g, errTruncated
	}
	var err error
	switch Ether(b).Type() {
	case EtherTypeIP4:
		if o.GSOType == GSOTCPv6 {
			return g, errFamily
		}
		err = g.parseIPv4(b[EtherHdrLen:])
	case EtherTypeIP6:
		if o.GSOType == GSOTCPv4 {
			return g, errFamily
		}
		err = g.parseIPv6(b[EtherHdrLen:])
	default:
		return g, errEtherType
	}
	if err != nil {
		return g, err
	}
	if err := g.parseL4(b[g.l4:]); err != nil {
		return g, err
	}
	payload := len(b) - g.hdrs
	if payload <= 0 {
		return g, errNoPayload
	}
	if err := g.checkCsum(o); err != nil {
		return g, err
	}
	g.mss = int(o.GSOSize)
	if payload > g.mss {
		if g.proto == ipProtoTCP && g.mss < tcpMinGSOSize {
			return g, errSegmentSize
		}
		if g.proto == ipProtoUDP && payload > g.mss*udpMaxSegments {
			return g, errSegmentCount
		}
	}
	return g, nil
}

// parseIPv4 reads the IPv4 header at the start of ip, which runs to the end
// of the frame (RFC 791).
func (g *gsoFrame) parseIPv4(ip []byte) error {
	if len(ip) < ipv4HdrLen {
		return errTruncated
	}
	if ip[0]>>4 != 4 {
		return errFamily
	}
	ihl := int(ip[0]&0x0f) * 4
	if ihl < ipv4HdrLen || ihl > len(ip) {
		return errIPHeader
	}
	if int(binary.BigEndian.Uint16(ip[2:])) != len(ip) {
		return errIPLength
	}
	// MF or a fragment offset: GSO never makes fragments of TCP or of
	// USO datagrams, and segmenting one would corrupt the reassembly.
	if binary.BigEndian.Uint16(ip[6:])&0x3fff != 0 {
		return errFragment
	}
	if ip[9] != g.proto {
		return errProtocol
	}
	g.l4 = EtherHdrLen + ihl
	g.id = binary.BigEndian.Uint16(ip[4:])
	g.pseudo = uint32(Checksum(ip[12:20], 0)) + uint32(g.proto)
	return nil
}

// parseIPv6 reads the fixed IPv6 header at the start of ip (RFC 8200). The
// L4 header must follow it directly: a frame with extension headers is
// refused rather than walked.
func (g *gsoFrame) parseIPv6(ip []byte) error {
	if len(ip) < ipv6HdrLen {
		return errTruncated
	}
	if ip[0]>>4 != 6 {
		return errFamily
	}
	if int(binary.BigEndian.Uint16(ip[4:])) != len(ip)-ipv6HdrLen {
		return errIPLength
	}
	switch next := ip[6]; {
	case next == g.proto:
	case next == ipProtoTCP || next == ipProtoUDP:
		return errProtocol
	default:
		return errExtHeader
	}
	g.ipv6 = true
	g.l4 = EtherHdrLen + ipv6HdrLen
	g.pseudo = uint32(Checksum(ip[8:40], 0)) + uint32(g.proto)
	return nil
}

// parseL4 reads the TCP or UDP header at the start of l4, which runs to the
// end of the frame.
func (g *gsoFrame) parseL4(l4 []byte) error {
	if g.proto == ipProtoUDP {
		if len(l4) < udpHdrLen {
			return errTruncated
		}
		// __udp_gso_segment takes the old length out of the checksum
		// from this field: it must be the datagram's.
		if int(binary.BigEndian.Uint16(l4[4:])) != len(l4) {
			return errUDPLength
		}
		g.hdrs = g.l4 + udpHdrLen
		return nil
	}
	if len(l4) < tcpHdrLen {
		return errTruncated
	}
	thlen := int(l4[12]>>4) * 4
	if thlen < tcpHdrLen || thlen > len(l4) {
		return errTCPHeader
	}
	g.hdrs = g.l4 + thlen
	g.seq = binary.BigEndian.Uint32(l4[4:])
	return nil
}

// checkCsum checks the checksum request against the L4 header found, as
// virtio_net_hdr_to_skb and the GSO handlers do: the sum starts at the L4
// header (skb_checksum_start == skb_transport_header) and its field is the
// protocol's. USO requires the request; TCP without one is accepted, as
// tcp4_gso_segment sets up the pseudo-header itself.
func (g *gsoFrame) checkCsum(o Offload) error {
	field := uint16(tcpCsumOffset)
	if g.proto == ipProtoUDP {
		if !o.NeedsCsum {
			return errNoCsum
		}
		field = udpCsumOffset
	}
	if o.NeedsCsum && (int(o.CsumStart) != g.l4 || o.CsumOffset != field) {
		return errCsumOffsets
	}
	return nil
}

// write fills s with segment i: hdr, the super-frame's headers, then
// chunk, the payload from offset off; last says whether it is the last.
func (g *gsoFrame) write(s *Frame, hdr, chunk []byte, i, off int, last bool) {
	s.SetLen(len(hdr) + len(chunk))
	b := s.Bytes()
	copy(b, hdr)
	copy(b[len(hdr):], chunk)
	s.Offload = Offload{}

	l4len := len(b) - g.l4
	if g.ipv6 {
		binary.BigEndian.PutUint16(b[EtherHdrLen+4:], uint16(l4len))
	} else {
		ip := b[EtherHdrLen:g.l4]
		binary.BigEndian.PutUint16(ip[2:], uint16(len(b)-EtherHdrLen))
		binary.BigEndian.PutUint16(ip[4:], g.id+uint16(i)) // wraps, as the kernel's u16 does
		ip[10], ip[11] = 0, 0
		binary.BigEndian.PutUint16(ip[10:], ^Checksum(ip, 0))
	}

	l4 := b[g.l4:]
	field := tcpCsumOffset
	if g.proto == ipProtoTCP {
		binary.BigEndian.PutUint32(l4[4:], g.seq+uint32(off))
		flags := l4[13]
		if i > 0 {
			flags &^= tcpCWR
		}
		if !last {
			flags &^= tcpFIN | tcpPSH
		}
		l4[13] = flags
	} else {
		binary.BigEndian.PutUint16(l4[4:], uint16(l4len))
		field = udpCsumOffset
	}
	// The pseudo-header (RFC 768, RFC 9293, RFC 8200 section 8.1) with
	// this segment's L4 length, then the header and payload.
	l4[field], l4[field+1] = 0, 0
	sum := ^Checksum(l4, g.pseudo+uint32(l4len))
	if sum == 0 && g.proto == ipProtoUDP {
		// RFC 768: a computed zero is sent as all ones, for IPv4 and
		// IPv6 alike (CSUM_MANGLED_0 in __udp_gso_segment).
		sum = 0xffff
	}
	binary.BigEndian.PutUint16(l4[field:], sum)
}
