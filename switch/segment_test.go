package vswitch_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"

	vswitch "tapswitch/switch"
	"tapswitch/switch/porttest"
)

// The segmentation tests build every frame here, field by field, with
// refChecksum (plain RFC 1071) for the sums, so that the expected bytes owe
// nothing to the package's code.

// The flow of the segmentation tests.
var (
	gsoSrc4 = netip.MustParseAddr("10.244.0.2")
	gsoDst4 = netip.MustParseAddr("10.244.0.3")
	gsoSrc6 = netip.MustParseAddr("fd00:10:244::2")
	gsoDst6 = netip.MustParseAddr("fd00:10:244::3")
)

// TCP flags (RFC 9293, RFC 3168).
const (
	flagFIN = 0x01
	flagSYN = 0x02
	flagPSH = 0x08
	flagACK = 0x10
	flagURG = 0x20
	flagECE = 0x40
	flagCWR = 0x80
)

var (
	// ipRouterAlert is an IPv4 option (RFC 2113) padded to 8 bytes with
	// no-operations, to show options are copied to every segment.
	ipRouterAlert = []byte{0x94, 0x04, 0x00, 0x00, 0x01, 0x01, 0x01, 0x01}
	// tcpTimestamps is what Linux sends on an established connection:
	// NOP, NOP, timestamps (RFC 7323).
	tcpTimestamps = []byte{0x01, 0x01, 0x08, 0x0a, 0x00, 0x12, 0x34, 0x56, 0x00, 0x65, 0x43, 0x21}
)

// gsoPacket describes a TCP or UDP packet over IPv4 or IPv6, from which
// the tests build a super-frame and the segments it should split into.
type gsoPacket struct {
	v6, udp bool
	ipOpts  []byte // IPv4 options, a multiple of 4 bytes
	tcpOpts []byte // TCP options, a multiple of 4 bytes
	flags   byte   // TCP flags
	id      uint16 // IPv4 identification
	seq     uint32 // TCP sequence number
	payload []byte
	mss     int
}

func (p gsoPacket) ipHdrLen() int {
	if p.v6 {
		return 40
	}
	return 20 + len(p.ipOpts)
}

func (p gsoPacket) l4HdrLen() int {
	if p.udp {
		return 8
	}
	return 20 + len(p.tcpOpts)
}

func (p gsoPacket) proto() byte {
	if p.udp {
		return 17
	}
	return 6
}

func (p gsoPacket) csumOffset() int {
	if p.udp {
		return 6
	}
	return 16
}

// pseudoSum is the ones' complement sum of the pseudo-header: RFC 768 and
// RFC 9293 for IPv4, RFC 8200 section 8.1 for IPv6.
func (p gsoPacket) pseudoSum(l4len int) uint16 {
	var ph []byte
	if p.v6 {
		s, d := gsoSrc6.As16(), gsoDst6.As16()
		ph = append(append(ph, s[:]...), d[:]...)
		ph = binary.BigEndian.AppendUint32(ph, uint32(l4len))
		ph = append(ph, 0, 0, 0, p.proto())
	} else {
		s, d := gsoSrc4.As4(), gsoDst4.As4()
		ph = append(append(ph, s[:]...), d[:]...)
		ph = append(ph, 0, p.proto())
		ph = binary.BigEndian.AppendUint16(ph, uint16(l4len))
	}
	return refChecksum(ph, 0)
}

// frame returns the Ethernet frame of p. With partial, the L4 checksum
// field holds what Linux leaves there for CHECKSUM_PARTIAL, GSO or not
// (__tcp_v4_send_check, udp4_hwcsum): the pseudo-header sum over the whole
// L4 length, not inverted. Otherwise it holds the complete checksum.
func (p gsoPacket) frame(partial bool) []byte {
	var l4 []byte
	if p.udp {
		l4 = binary.BigEndian.AppendUint16(l4, 40000)                    // source port
		l4 = binary.BigEndian.AppendUint16(l4, 4789)                     // destination port
		l4 = binary.BigEndian.AppendUint16(l4, uint16(8+len(p.payload))) // length
		l4 = append(l4, 0, 0)                                            // checksum
	} else {
		l4 = binary.BigEndian.AppendUint16(l4, 40000)      // source port
		l4 = binary.BigEndian.AppendUint16(l4, 5201)       // destination port
		l4 = binary.BigEndian.AppendUint32(l4, p.seq)      // sequence number
		l4 = binary.BigEndian.AppendUint32(l4, 0x0a0b0c0d) // acknowledgment number
		l4 = append(l4, byte(p.l4HdrLen()/4)<<4, p.flags)  // data offset, flags
		l4 = binary.BigEndian.AppendUint16(l4, 502)        // window
		l4 = append(l4, 0, 0)                              // checksum
		l4 = binary.BigEndian.AppendUint16(l4, 0)          // urgent pointer
		l4 = append(l4, p.tcpOpts...)
	}
	l4 = append(l4, p.payload...)
	sum := p.pseudoSum(len(l4))
	if !partial {
		sum = ^refChecksum(l4, uint32(sum))
		if sum == 0 && p.udp {
			sum = 0xffff // RFC 768
		}
	}
	binary.BigEndian.PutUint16(l4[p.csumOffset():], sum)

	var ip []byte
	if p.v6 {
		ip = append(ip, 0x60|0x0b>>4, 0x0b<<4|0x1, 0x23, 0x45)  // version, traffic class 0x0b, flow label 0x12345
		ip = binary.BigEndian.AppendUint16(ip, uint16(len(l4))) // payload length
		ip = append(ip, p.proto(), 64)                          // next header, hop limit
		s, d := gsoSrc6.As16(), gsoDst6.As16()
		ip = append(append(ip, s[:]...), d[:]...)
	} else {
		ip = append(ip, 0x40|byte(p.ipHdrLen()/4), 0x02)                     // version, IHL, DSCP/ECN (ECT(0))
		ip = binary.BigEndian.AppendUint16(ip, uint16(p.ipHdrLen()+len(l4))) // total length
		ip = binary.BigEndian.AppendUint16(ip, p.id)                         // identification
		ip = binary.BigEndian.AppendUint16(ip, 0x4000)                       // DF, offset 0
		ip = append(ip, 64, p.proto(), 0, 0)                                 // TTL, protocol, checksum
		s, d := gsoSrc4.As4(), gsoDst4.As4()
		ip = append(append(ip, s[:]...), d[:]...)
		ip = append(ip, p.ipOpts...)
		binary.BigEndian.PutUint16(ip[10:], ^refChecksum(ip, 0))
	}

	etherType := uint16(0x0800)
	if p.v6 {
		etherType = 0x86dd
	}
	dst, src := porttest.MAC(0x50), porttest.MAC(0x51)
	b := append(append([]byte{}, dst[:]...), src[:]...)
	b = binary.BigEndian.AppendUint16(b, etherType)
	return append(append(b, ip...), l4...)
}

// offload is the virtio-net metadata a Linux sender gives p's super-frame.
func (p gsoPacket) offload() vswitch.Offload {
	t := vswitch.GSOTCPv4
	switch {
	case p.udp:
		t = vswitch.GSOUDPL4
	case p.v6:
		t = vswitch.GSOTCPv6
	}
	l4 := 14 + p.ipHdrLen()
	return vswitch.Offload{
		GSOType:    t,
		GSOSize:    uint16(p.mss),
		HdrLen:     uint16(l4 + p.l4HdrLen()),
		NeedsCsum:  true,
		CsumStart:  uint16(l4),
		CsumOffset: uint16(p.csumOffset()),
	}
}

// segments returns the frames the kernel's GSO makes of p: each mss bytes
// of payload but the last, the sequence number of its first byte, the IPv4
// ID counting up from p's, CWR only on the first segment and FIN and PSH
// only on the last (tcp_gso_segment), every checksum complete.
func (p gsoPacket) segments() [][]byte {
	var out [][]byte
	for i, off := 0, 0; off < len(p.payload); i, off = i+1, off+p.mss {
		s := p
		s.payload = p.payload[off:min(off+p.mss, len(p.payload))]
		s.seq = p.seq + uint32(off)
		s.id = p.id + uint16(i)
		if i > 0 {
			s.flags &^= flagCWR
		}
		if off+p.mss < len(p.payload) {
			s.flags &^= flagFIN | flagPSH
		}
		out = append(out, s.frame(false))
	}
	return out
}

func randomBytes(seed uint64, n int) []byte {
	rng := rand.New(rand.NewPCG(seed, 0x5e6))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// segHeaders is the layout of an Ethernet frame carrying TCP or UDP over
// IPv4 or IPv6, found by parseSegHeaders independently of the package.
type segHeaders struct {
	v6, udp bool
	l4      int // offset of the L4 header
	hdrs    int // offset of the payload
}

// parseSegHeaders reads the layout of b, or reports false if b is not TCP
// or UDP directly over IPv4 or IPv6 with all its headers present.
func parseSegHeaders(b []byte) (segHeaders, bool) {
	var h segHeaders
	if len(b) < 14 {
		return h, false
	}
	var proto byte
	switch binary.BigEndian.Uint16(b[12:]) {
	case 0x0800:
		if len(b) < 14+20 {
			return h, false
		}
		h.l4 = 14 + int(b[14]&0x0f)*4
		proto = b[14+9]
	case 0x86dd:
		if len(b) < 14+40 {
			return h, false
		}
		h.v6, h.l4 = true, 14+40
		proto = b[14+6]
	default:
		return h, false
	}
	switch proto {
	case 6:
		if len(b) < h.l4+20 {
			return h, false
		}
		h.hdrs = h.l4 + int(b[h.l4+12]>>4)*4
	case 17:
		h.udp, h.hdrs = true, h.l4+8
	default:
		return h, false
	}
	return h, h.hdrs <= len(b)
}

// checkSums verifies a segment's IPv4 header checksum, its IP and UDP
// lengths, and its L4 checksum against a pseudo-header made from its own
// addresses: each sums to 0xffff (RFC 1071).
func checkSums(b []byte, h segHeaders) error {
	l4 := b[h.l4:]
	var ph []byte
	if h.v6 {
		if n := binary.BigEndian.Uint16(b[14+4:]); int(n) != len(b)-14-40 {
			return fmt.Errorf("ipv6 payload length %d, frame has %d", n, len(b)-14-40)
		}
		ph = append(ph, b[14+8:14+40]...)
		ph = binary.BigEndian.AppendUint32(ph, uint32(len(l4)))
		ph = append(ph, 0, 0, 0, b[14+6])
	} else {
		ip := b[14:h.l4]
		if n := binary.BigEndian.Uint16(ip[2:]); int(n) != len(b)-14 {
			return fmt.Errorf("ipv4 total length %d, frame has %d", n, len(b)-14)
		}
		if s := refChecksum(ip, 0); s != 0xffff {
			return fmt.Errorf("ipv4 header sums to %#04x, want 0xffff", s)
		}
		ph = append(ph, ip[12:20]...)
		ph = append(ph, 0, ip[9])
		ph = binary.BigEndian.AppendUint16(ph, uint16(len(l4)))
	}
	if h.udp {
		if n := binary.BigEndian.Uint16(l4[4:]); int(n) != len(l4) {
			return fmt.Errorf("udp length %d, datagram has %d", n, len(l4))
		}
		if binary.BigEndian.Uint16(l4[6:]) == 0 {
			return fmt.Errorf("udp checksum 0, which means none")
		}
	}
	if s := refChecksum(l4, uint32(refChecksum(ph, 0))); s != 0xffff {
		return fmt.Errorf("l4 and pseudo-header sum to %#04x, want 0xffff", s)
	}
	return nil
}

// firstDiff describes where got and want first differ.
func firstDiff(got, want []byte) string {
	for i := range min(len(got), len(want)) {
		if got[i] != want[i] {
			return fmt.Sprintf("byte %d is %#02x, want %#02x", i, got[i], want[i])
		}
	}
	return fmt.Sprintf("length %d, want %d", len(got), len(want))
}

func releaseAll(frames []*vswitch.Frame) {
	for _, f := range frames {
		f.Release()
	}
}

// checkSegment runs Segment on p's super-frame with offload o and compares
// each segment with the one built by p.segments.
func checkSegment(t *testing.T, p gsoPacket, o vswitch.Offload, frame []byte) {
	t.Helper()
	pools := vswitch.NewPools()
	in := frameFrom(pools.Large, frame, o)
	defer in.Release()
	// A frame already in dst must stay there, first.
	mark := pools.Small.Get()
	defer mark.Release()
	got, err := vswitch.Segment([]*vswitch.Frame{mark}, in, pools)
	if err != nil {
		t.Fatalf("Segment(%+v) = %v, want segments", o, err)
	}
	defer releaseAll(got[1:])
	if got[0] != mark {
		t.Errorf("Segment replaced dst[0]")
	}
	if !bytes.Equal(in.Bytes(), frame) || in.Offload != o {
		t.Errorf("Segment changed the super-frame or its offload")
	}
	segs, want := got[1:], p.segments()
	if len(segs) != len(want) {
		t.Fatalf("Segment made %d segments, want %d", len(segs), len(want))
	}
	var joined []byte
	for i, s := range segs {
		b := s.Bytes()
		if !bytes.Equal(b, want[i]) {
			t.Errorf("segment %d of %d: %s", i, len(segs), firstDiff(b, want[i]))
		}
		if s.Offload != (vswitch.Offload{}) {
			t.Errorf("segment %d Offload = %+v, want zero", i, s.Offload)
		}
		h, ok := parseSegHeaders(b)
		if !ok {
			t.Errorf("segment %d does not parse", i)
			continue
		}
		if err := checkSums(b, h); err != nil {
			t.Errorf("segment %d: %v", i, err)
		}
		if max := h.hdrs + p.mss; len(b) > max {
			t.Errorf("segment %d is %d bytes, more than headers and gso size (%d)", i, len(b), max)
		}
		joined = append(joined, b[h.hdrs:]...)
	}
	if !bytes.Equal(joined, p.payload) {
		t.Errorf("the segments' payloads joined differ from the super-frame's: %s", firstDiff(joined, p.payload))
	}
}

func TestSegment(t *testing.T) {
	payload := func(n int) []byte { return randomBytes(uint64(n), n) }
	tests := []struct {
		name string
		p    gsoPacket
	}{
		{"tcp4 even split", gsoPacket{flags: flagACK | flagPSH, seq: 1000, id: 7, payload: payload(4 * 1448), mss: 1448}},
		{"tcp4 uneven last", gsoPacket{flags: flagACK | flagPSH, seq: 1000, payload: payload(5000), mss: 1448}},
		{"tcp4 ip options", gsoPacket{ipOpts: ipRouterAlert, flags: flagACK, payload: payload(5000), mss: 1400}},
		{"tcp4 tcp options", gsoPacket{tcpOpts: tcpTimestamps, flags: flagACK | flagPSH, payload: payload(4000), mss: 1448}},
		{"tcp4 ip and tcp options", gsoPacket{ipOpts: ipRouterAlert, tcpOpts: tcpTimestamps, flags: flagACK, payload: payload(7001), mss: 1420}},
		{"tcp4 fin psh cwr", gsoPacket{flags: flagFIN | flagPSH | flagCWR | flagECE | flagACK, payload: payload(3001), mss: 1000}},
		{"tcp4 cwr only first", gsoPacket{flags: flagCWR | flagACK, payload: payload(3000), mss: 1000}},
		{"tcp4 urg syn rst untouched", gsoPacket{flags: flagURG | flagSYN | flagACK | 0x04, payload: payload(2500), mss: 1000}},
		{"tcp4 sequence and id wrap", gsoPacket{flags: flagACK, seq: 0xffffff00, id: 0xfffe, payload: payload(2000), mss: 100}},
		{"tcp4 64 KiB", gsoPacket{tcpOpts: tcpTimestamps, flags: flagACK | flagPSH, seq: 0x12345678, payload: payload(45 * 1448), mss: 1448}},
		{"tcp4 largest frame", gsoPacket{flags: flagACK, payload: payload(65535 - 40), mss: 1460}},
		{"tcp4 smallest gso size", gsoPacket{flags: flagACK, payload: payload(100), mss: 8}},
		{"tcp4 odd gso size", gsoPacket{flags: flagACK, payload: payload(1000), mss: 333}},
		{"tcp6", gsoPacket{v6: true, flags: flagACK | flagPSH, seq: 99, payload: payload(5000), mss: 1440}},
		{"tcp6 options and flags", gsoPacket{v6: true, tcpOpts: tcpTimestamps, flags: flagFIN | flagPSH | flagCWR | flagACK, payload: payload(4097), mss: 1000}},
		{"tcp6 64 KiB", gsoPacket{v6: true, tcpOpts: tcpTimestamps, flags: flagACK, payload: payload(45 * 1428), mss: 1428}},
		{"udp4", gsoPacket{udp: true, id: 0x1234, payload: payload(4000), mss: 1200}},
		{"udp4 ip options", gsoPacket{udp: true, ipOpts: ipRouterAlert, payload: payload(2500), mss: 1000}},
		{"udp4 odd gso size", gsoPacket{udp: true, payload: payload(1000), mss: 333}},
		{"udp4 most segments", gsoPacket{udp: true, payload: payload(128 * 10), mss: 10}},
		{"udp6", gsoPacket{v6: true, udp: true, payload: payload(3001), mss: 1000}},
		{"udp6 64 KiB", gsoPacket{v6: true, udp: true, payload: payload(65000), mss: 1452}},
		{"tcp4 single segment", gsoPacket{flags: flagFIN | flagPSH | flagCWR | flagACK, id: 3, payload: payload(100), mss: 1448}},
		{"tcp4 payload equals gso size", gsoPacket{flags: flagPSH | flagACK, payload: payload(1448), mss: 1448}},
		{"tcp4 payload one past gso size", gsoPacket{flags: flagPSH | flagACK, payload: payload(1449), mss: 1448}},
		{"tcp4 single byte below tcp minimum", gsoPacket{flags: flagACK, payload: payload(1), mss: 1}},
		{"tcp6 single segment", gsoPacket{v6: true, flags: flagFIN | flagACK, payload: payload(1), mss: 1448}},
		{"udp4 single segment", gsoPacket{udp: true, payload: payload(1000), mss: 1472}},
		{"udp6 single segment", gsoPacket{v6: true, udp: true, payload: payload(17), mss: 1452}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkSegment(t, tt.p, tt.p.offload(), tt.p.frame(true))
		})
	}
}

// TestSegmentInputFields shows what Segment does not take from the
// super-frame: the L4 checksum field, which it recomputes from the
// addresses, and HdrLen, which Linux fills with skb_headlen
// (virtio_net_hdr_from_skb) and a frame's own headers decide.
func TestSegmentInputFields(t *testing.T) {
	p := gsoPacket{tcpOpts: tcpTimestamps, flags: flagACK | flagPSH, payload: randomBytes(1, 5000), mss: 1448}
	frame := p.frame(true)
	fieldAt := 14 + 20 + 16
	tests := []struct {
		name  string
		field uint16 // the super-frame's checksum field
		mod   func(o *vswitch.Offload)
	}{
		{"pseudo-header sum", binary.BigEndian.Uint16(frame[fieldAt:]), func(o *vswitch.Offload) {}},
		{"garbage checksum field", 0xdead, func(o *vswitch.Offload) {}},
		{"no checksum request", 0, func(o *vswitch.Offload) { o.NeedsCsum, o.CsumStart, o.CsumOffset = false, 0, 0 }},
		{"hdr len is the whole frame", 0xbeef, func(o *vswitch.Offload) { o.HdrLen = uint16(len(frame)) }},
		{"hdr len zero", 0, func(o *vswitch.Offload) { o.HdrLen = 0 }},
		{"hdr len short of the tcp options", 0, func(o *vswitch.Offload) { o.HdrLen = 14 + 20 + 20 }},
		{"data valid", 0, func(o *vswitch.Offload) { o.DataValid = true }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := bytes.Clone(frame)
			binary.BigEndian.PutUint16(b[fieldAt:], tt.field)
			o := p.offload()
			tt.mod(&o)
			checkSegment(t, p, o, b)
		})
	}
}

// TestSegmentZeroChecksum makes a segment whose checksum computes to zero:
// UDP sends it as 0xffff (RFC 768, CSUM_MANGLED_0), TCP as zero.
func TestSegmentZeroChecksum(t *testing.T) {
	for _, p := range []gsoPacket{
		{udp: true, payload: randomBytes(2, 3000), mss: 1000},
		{v6: true, udp: true, payload: randomBytes(3, 3000), mss: 1000},
		{flags: flagACK, payload: randomBytes(4, 3000), mss: 1000},
		{v6: true, flags: flagACK, payload: randomBytes(5, 3000), mss: 1000},
	} {
		t.Run(fmt.Sprintf("v6 %t udp %t", p.v6, p.udp), func(t *testing.T) {
			// With the last two bytes of the first segment's payload
			// zero, its checksum is c. Putting c there makes the sum
			// 0xffff, whose complement is zero.
			p.payload[p.mss-2], p.payload[p.mss-1] = 0, 0
			at := 14 + p.ipHdrLen() + p.csumOffset()
			c := p.segments()[0][at:]
			copy(p.payload[p.mss-2:], c[:2])
			want := uint16(0)
			if p.udp {
				want = 0xffff
			}
			if got := binary.BigEndian.Uint16(p.segments()[0][at:]); got != want {
				t.Fatalf("test segment's checksum field = %#04x, want %#04x", got, want)
			}
			checkSegment(t, p, p.offload(), p.frame(true))
		})
	}
}

func TestSegmentErrors(t *testing.T) {
	base := map[string]gsoPacket{
		"tcp4": {flags: flagACK, payload: randomBytes(6, 3000), mss: 1000},
		"tcp6": {v6: true, flags: flagACK, payload: randomBytes(7, 3000), mss: 1000},
		"udp4": {udp: true, payload: randomBytes(8, 3000), mss: 1000},
		"udp6": {v6: true, udp: true, payload: randomBytes(9, 3000), mss: 1000},
	}
	// Offsets in the bases: the IP header at 14, the L4 header at 34
	// (IPv4) or 54 (IPv6).
	setLen4 := func(b []byte) { binary.BigEndian.PutUint16(b[16:], uint16(len(b)-14)) }
	setLen6 := func(b []byte) { binary.BigEndian.PutUint16(b[18:], uint16(len(b)-54)) }
	tests := []struct {
		name, base string
		want       string // in the error
		mod        func(b []byte, o *vswitch.Offload) []byte
	}{
		{"not gso", "tcp4", "not a gso type", func(b []byte, o *vswitch.Offload) []byte { o.GSOType = vswitch.GSONone; return b }},
		{"unknown gso type", "tcp4", "not a gso type", func(b []byte, o *vswitch.Offload) []byte { o.GSOType = 9; return b }},
		{"gso size 0", "tcp4", "gso size 0", func(b []byte, o *vswitch.Offload) []byte { o.GSOSize = 0; return b }},
		{"runt", "tcp4", "headers past the end of the frame", func(b []byte, o *vswitch.Offload) []byte { return b[:13] }},
		{"vlan tag", "tcp4", "ethertype is neither ipv4 nor ipv6", func(b []byte, o *vswitch.Offload) []byte { b[12], b[13] = 0x81, 0x00; return b }},
		{"arp ethertype", "tcp4", "ethertype is neither ipv4 nor ipv6", func(b []byte, o *vswitch.Offload) []byte { b[12], b[13] = 0x08, 0x06; return b }},
		{"tcp6 gso on ipv4", "tcp4", "ip version does not match the gso type", func(b []byte, o *vswitch.Offload) []byte { o.GSOType = vswitch.GSOTCPv6; return b }},
		{"tcp4 gso on ipv6", "tcp6", "ip version does not match the gso type", func(b []byte, o *vswitch.Offload) []byte { o.GSOType = vswitch.GSOTCPv4; return b }},
		{"ipv6 header under ipv4 ethertype", "tcp4", "ip version does not match the gso type", func(b []byte, o *vswitch.Offload) []byte { b[14] = 0x65; return b }},
		{"ipv4 header under ipv6 ethertype", "tcp6", "ip version does not match the gso type", func(b []byte, o *vswitch.Offload) []byte { b[14] = 0x45; return b }},
		{"ipv4 truncated", "tcp4", "headers past the end of the frame", func(b []byte, o *vswitch.Offload) []byte { return b[:14+19] }},
		{"ihl 4", "tcp4", "bad ip header length", func(b []byte, o *vswitch.Offload) []byte { b[14] = 0x44; return b }},
		{"ihl past the end", "tcp4", "bad ip header length", func(b []byte, o *vswitch.Offload) []byte {
			b = b[:14+40]
			b[14] = 0x4f
			setLen4(b)
			return b
		}},
		{"ipv4 total length short", "tcp4", "ip length does not match the frame", func(b []byte, o *vswitch.Offload) []byte { b[17]--; return b }},
		{"ipv4 total length long", "tcp4", "ip length does not match the frame", func(b []byte, o *vswitch.Offload) []byte { b[17]++; return b }},
		{"more fragments", "tcp4", "ipv4 fragment", func(b []byte, o *vswitch.Offload) []byte { b[20] |= 0x20; return b }},
		{"fragment offset", "udp4", "ipv4 fragment", func(b []byte, o *vswitch.Offload) []byte { b[21] = 1; return b }},
		{"udp under tcp gso", "tcp4", "ip protocol does not match the gso type", func(b []byte, o *vswitch.Offload) []byte { b[23] = 17; return b }},
		{"tcp under udp gso", "udp4", "ip protocol does not match the gso type", func(b []byte, o *vswitch.Offload) []byte { b[23] = 6; return b }},
		{"icmp", "tcp4", "ip protocol does not match the gso type", func(b []byte, o *vswitch.Offload) []byte { b[23] = 1; return b }},
		{"ipv6 truncated", "tcp6", "headers past the end of the frame", func(b []byte, o *vswitch.Offload) []byte { return b[:14+39] }},
		{"ipv6 payload length", "tcp6", "ip length does not match the frame", func(b []byte, o *vswitch.Offload) []byte { b[19]++; return b }},
		{"ipv6 hop-by-hop header", "tcp6", "ipv6 extension header", func(b []byte, o *vswitch.Offload) []byte { b[20] = 0; return b }},
		{"ipv6 routing header", "udp6", "ipv6 extension header", func(b []byte, o *vswitch.Offload) []byte { b[20] = 43; return b }},
		{"ipv6 fragment header", "udp6", "ipv6 extension header", func(b []byte, o *vswitch.Offload) []byte { b[20] = 44; return b }},
		{"ipv6 udp under tcp gso", "tcp6", "ip protocol does not match the gso type", func(b []byte, o *vswitch.Offload) []byte { b[20] = 17; return b }},
		{"tcp header truncated", "tcp4", "headers past the end of the frame", func(b []byte, o *vswitch.Offload) []byte { b = b[:34+19]; setLen4(b); return b }},
		{"tcp data offset 4", "tcp4", "bad tcp data offset", func(b []byte, o *vswitch.Offload) []byte { b[34+12] = 4 << 4; return b }},
		{"tcp data offset past the end", "tcp6", "bad tcp data offset", func(b []byte, o *vswitch.Offload) []byte {
			b = b[:54+40]
			b[54+12] = 15 << 4
			setLen6(b)
			return b
		}},
		{"tcp4 headers only", "tcp4", "no payload", func(b []byte, o *vswitch.Offload) []byte { b = b[:54]; setLen4(b); return b }},
		{"tcp6 headers only", "tcp6", "no payload", func(b []byte, o *vswitch.Offload) []byte { b = b[:74]; setLen6(b); return b }},
		{"udp header truncated", "udp4", "headers past the end of the frame", func(b []byte, o *vswitch.Offload) []byte { b = b[:34+7]; setLen4(b); return b }},
		{"udp headers only", "udp4", "no payload", func(b []byte, o *vswitch.Offload) []byte {
			b = b[:42]
			setLen4(b)
			binary.BigEndian.PutUint16(b[34+4:], 8)
			return b
		}},
		{"udp length short", "udp6", "udp length does not match the frame", func(b []byte, o *vswitch.Offload) []byte { b[54+5]--; return b }},
		{"udp length long", "udp4", "udp length does not match the frame", func(b []byte, o *vswitch.Offload) []byte { b[34+5]++; return b }},
		{"checksum start past the l4 header", "tcp4", "checksum offsets do not match the l4 header", func(b []byte, o *vswitch.Offload) []byte { o.CsumStart += 4; return b }},
		{"checksum start at the ip header", "tcp6", "checksum offsets do not match the l4 header", func(b []byte, o *vswitch.Offload) []byte { o.CsumStart = 14; return b }},
		{"checksum start zero", "udp4", "checksum offsets do not match the l4 header", func(b []byte, o *vswitch.Offload) []byte { o.CsumStart = 0; return b }},
		{"udp checksum offset on tcp", "tcp4", "checksum offsets do not match the l4 header", func(b []byte, o *vswitch.Offload) []byte { o.CsumOffset = 6; return b }},
		{"tcp checksum offset on udp", "udp6", "checksum offsets do not match the l4 header", func(b []byte, o *vswitch.Offload) []byte { o.CsumOffset = 16; return b }},
		{"udp without checksum request", "udp4", "udp gso without checksum offload", func(b []byte, o *vswitch.Offload) []byte { o.NeedsCsum = false; return b }},
		{"tcp gso size below the minimum", "tcp4", "gso size below the tcp minimum", func(b []byte, o *vswitch.Offload) []byte { o.GSOSize = 7; return b }},
		{"udp more than 128 segments", "udp6", "more udp segments than the kernel allows", func(b []byte, o *vswitch.Offload) []byte { o.GSOSize = 23; return b }},
	}
	pools := vswitch.NewPools()
	for name, p := range base {
		t.Run("valid "+name, func(t *testing.T) { checkSegment(t, p, p.offload(), p.frame(true)) })
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := base[tt.base]
			o := p.offload()
			b := tt.mod(p.frame(true), &o)
			checkRefused(t, pools, b, o, tt.want)
		})
	}
	t.Run("segment larger than the pools", func(t *testing.T) {
		small := &vswitch.Pools{
			Small: vswitch.NewPool(vswitch.Headroom + 500),
			Large: vswitch.NewPool(vswitch.Headroom + 1000),
		}
		p := base["tcp4"]
		checkRefused(t, small, p.frame(true), p.offload(), "larger than the pools")
	})
}

// checkRefused checks that Segment refuses frame b with offload o, for the
// reason want, and leaves dst and the frame as they were.
func checkRefused(t *testing.T, pools *vswitch.Pools, b []byte, o vswitch.Offload, want string) {
	t.Helper()
	in := frameFrom(vswitch.NewPool(vswitch.LargeBufSize), b, o)
	defer in.Release()
	mark := pools.Small.Get()
	defer mark.Release()
	dst := make([]*vswitch.Frame, 1, 8)
	dst[0] = mark
	got, err := vswitch.Segment(dst, in, pools)
	if !errors.Is(err, vswitch.ErrBadGSO) || !strings.Contains(err.Error(), want) {
		t.Errorf("Segment(%+v) error = %v, want ErrBadGSO: ...%s", o, err, want)
	}
	if len(got) != 1 || got[0] != mark {
		t.Errorf("Segment(%+v) returned %d frames, want dst unchanged", o, len(got))
		releaseAll(got[1:])
	}
	if dst[:2][1] != nil {
		t.Errorf("Segment(%+v) left a frame in dst's spare capacity", o)
	}
	if !bytes.Equal(in.Bytes(), b) || in.Offload != o {
		t.Errorf("Segment(%+v) changed the frame or its offload", o)
	}
}

func TestSegmentAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts mean nothing under the race detector")
	}
	pools := vswitch.NewPools()
	for _, p := range []gsoPacket{
		{tcpOpts: tcpTimestamps, flags: flagACK, payload: randomBytes(10, 45*1448), mss: 1448},
		{v6: true, udp: true, payload: randomBytes(11, 20000), mss: 1452},
		{flags: flagACK, payload: randomBytes(12, 100), mss: 1448},
	} {
		in := frameFrom(pools.Large, p.frame(true), p.offload())
		dst := make([]*vswitch.Frame, 0, 64)
		var err error
		allocs := testing.AllocsPerRun(100, func() {
			dst, err = vswitch.Segment(dst[:0], in, pools)
			releaseAll(dst)
		})
		if err != nil {
			t.Fatalf("Segment(%+v) = %v", p.offload(), err)
		}
		if allocs != 0 {
			t.Errorf("AllocsPerRun(Segment %+v) = %v, want 0", p.offload(), allocs)
		}
		in.Release()
	}
}

// BenchmarkSegment splits a 64 KiB TCPv4 super-frame, as a pod's TSO
// makes one with timestamps on, into 45 segments of 1448 bytes.
func BenchmarkSegment(b *testing.B) {
	p := gsoPacket{tcpOpts: tcpTimestamps, flags: flagACK | flagPSH, payload: randomBytes(13, 45*1448), mss: 1448}
	pools := vswitch.NewPools()
	frame := p.frame(true)
	in := frameFrom(pools.Large, frame, p.offload())
	defer in.Release()
	dst := make([]*vswitch.Frame, 0, 64)
	var err error
	b.ReportAllocs()
	b.SetBytes(int64(len(frame)))
	for b.Loop() {
		dst, err = vswitch.Segment(dst[:0], in, pools)
		releaseAll(dst)
	}
	if err != nil || len(dst) != 45 {
		b.Fatalf("Segment = %d segments, %v; want 45", len(dst), err)
	}
}

// FuzzSegment feeds arbitrary frames with arbitrary offload metadata to
// Segment. It must never panic or change its input; an error must wrap
// ErrBadGSO and leave dst alone; and segments it returns must each be at
// most the headers plus GSOSize, carry valid IPv4 and L4 checksums, the
// IPv4 ID, sequence number and flags the kernel would give them, and
// between them the super-frame's payload, in order.
func FuzzSegment(f *testing.F) {
	for i, p := range []gsoPacket{
		{flags: flagACK | flagPSH, payload: randomBytes(20, 3000), mss: 1000},
		{ipOpts: ipRouterAlert, tcpOpts: tcpTimestamps, flags: flagFIN | flagCWR | flagACK, id: 0xffff, seq: 0xfffffff0, payload: randomBytes(21, 301), mss: 100},
		{v6: true, tcpOpts: tcpTimestamps, flags: flagACK, payload: randomBytes(22, 2001), mss: 500},
		{udp: true, payload: randomBytes(23, 1000), mss: 300},
		{v6: true, udp: true, payload: randomBytes(24, 999), mss: 100},
		{flags: flagACK, payload: randomBytes(25, 10), mss: 1448},
	} {
		o := p.offload()
		f.Add(p.frame(true), uint8(o.GSOType), o.GSOSize, o.HdrLen, o.NeedsCsum, o.CsumStart, o.CsumOffset)
		if i == 0 {
			f.Add(p.frame(true), uint8(o.GSOType), uint16(7), o.HdrLen, o.NeedsCsum, o.CsumStart, o.CsumOffset)
			f.Add(p.frame(true)[:60], uint8(o.GSOType), o.GSOSize, o.HdrLen, o.NeedsCsum, o.CsumStart, o.CsumOffset)
		}
	}
	pools := vswitch.NewPools()
	inPool := vswitch.NewPool(vswitch.LargeBufSize)
	f.Fuzz(func(t *testing.T, frame []byte, gsoType uint8, gsoSize, hdrLen uint16, needsCsum bool, csumStart, csumOffset uint16) {
		if len(frame) > inPool.FrameCap() {
			return
		}
		o := vswitch.Offload{
			GSOType: vswitch.GSOType(gsoType), GSOSize: gsoSize, HdrLen: hdrLen,
			NeedsCsum: needsCsum, CsumStart: csumStart, CsumOffset: csumOffset,
		}
		in := frameFrom(inPool, frame, o)
		defer in.Release()
		got, err := vswitch.Segment(nil, in, pools)
		defer releaseAll(got)
		if !bytes.Equal(in.Bytes(), frame) || in.Offload != o {
			t.Fatalf("Segment(%+v) changed its input", o)
		}
		if err != nil {
			if !errors.Is(err, vswitch.ErrBadGSO) {
				t.Fatalf("Segment(%+v) error = %v, want ErrBadGSO", o, err)
			}
			if len(got) != 0 {
				t.Fatalf("Segment(%+v) = %d segments and error %v", o, len(got), err)
			}
			return
		}
		h, ok := parseSegHeaders(frame)
		if !ok {
			t.Fatalf("Segment(%+v) segmented a frame that is not TCP or UDP over IP", o)
		}
		payload, mss := frame[h.hdrs:], int(gsoSize)
		if n := (len(payload) + mss - 1) / mss; len(got) != n {
			t.Fatalf("Segment(%+v) = %d segments of a %d-byte payload, want %d", o, len(got), len(payload), n)
		}
		var joined []byte
		for i, s := range got {
			b := s.Bytes()
			if len(b) > h.hdrs+mss {
				t.Fatalf("segment %d is %d bytes, more than headers and gso size (%d)", i, len(b), h.hdrs+mss)
			}
			sh, ok := parseSegHeaders(b)
			if !ok || sh != h {
				t.Fatalf("segment %d headers %+v, super-frame's %+v", i, sh, h)
			}
			if err := checkSums(b, h); err != nil {
				t.Fatalf("segment %d: %v", i, err)
			}
			if !bytes.Equal(b[:14], frame[:14]) {
				t.Fatalf("segment %d Ethernet header % x, want % x", i, b[:14], frame[:14])
			}
			checkSegmentFields(t, i, len(got), b, frame, h, mss)
			joined = append(joined, b[h.hdrs:]...)
		}
		if !bytes.Equal(joined, payload) {
			t.Fatalf("the segments' payloads joined differ from the super-frame's: %s", firstDiff(joined, payload))
		}
	})
}

// checkSegmentFields checks the fields segmentation sets in segment i of n
// against the super-frame's.
func checkSegmentFields(t *testing.T, i, n int, b, frame []byte, h segHeaders, mss int) {
	t.Helper()
	if !h.v6 {
		id0 := binary.BigEndian.Uint16(frame[14+4:])
		if id := binary.BigEndian.Uint16(b[14+4:]); id != id0+uint16(i) {
			t.Fatalf("segment %d ipv4 id %#04x, want %#04x", i, id, id0+uint16(i))
		}
	}
	if h.udp {
		return
	}
	seq0 := binary.BigEndian.Uint32(frame[h.l4+4:])
	if seq := binary.BigEndian.Uint32(b[h.l4+4:]); seq != seq0+uint32(i*mss) {
		t.Fatalf("segment %d seq %#08x, want %#08x", i, seq, seq0+uint32(i*mss))
	}
	flags := frame[h.l4+13]
	if i > 0 {
		flags &^= flagCWR
	}
	if i < n-1 {
		flags &^= flagFIN | flagPSH
	}
	if got := b[h.l4+13]; got != flags {
		t.Fatalf("segment %d tcp flags %#02x, want %#02x", i, got, flags)
	}
}
