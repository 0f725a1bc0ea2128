package vswitch_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"testing"

	vswitch "tapswitch/switch"
	"tapswitch/switch/porttest"
)

// The ICMP tests build every packet here, field by field, and check the
// errors with refChecksum, so the expectations owe nothing to the package.

// The router and the pods of the ICMP tests.
var (
	icmpRouterMAC = porttest.MAC(0xfe)
	icmpPodMAC    = porttest.MAC(0x02)
	icmpRouter4   = netip.MustParseAddr("10.244.0.1")
	icmpRouter6   = netip.MustParseAddr("fd00:10:244::1")
	icmpPod4      = netip.MustParseAddr("10.244.0.2")
	icmpPod6      = netip.MustParseAddr("fd00:10:244::2")
	icmpFar4      = netip.MustParseAddr("192.0.2.7")
	icmpFar6      = netip.MustParseAddr("2001:db8::7")
)

// icmpOrig describes the frame an ICMP error is about.
type icmpOrig struct {
	srcMAC, dstMAC vswitch.MAC
	src, dst       netip.Addr // the family decides IPv4 or IPv6
	proto          byte       // ProtoUDP, ProtoTCP, ProtoICMP or ProtoICMPv6
	icmpType       byte       // with ProtoICMP or ProtoICMPv6
	fragOff        int        // IPv4 fragment offset in bytes
	mf             bool       // IPv4 more fragments
	ipOpts         []byte     // IPv4 options, a multiple of 4 bytes
	payload        int        // bytes after the L4 header
	claim          int        // if not 0, the IP packet's length as its header claims it
}

// udp4 returns a UDP datagram from the pod to a far address.
func udp4(payload int) icmpOrig {
	return icmpOrig{srcMAC: icmpPodMAC, dstMAC: icmpRouterMAC, src: icmpPod4, dst: icmpFar4, proto: vswitch.ProtoUDP, payload: payload}
}

func udp6(payload int) icmpOrig {
	o := udp4(payload)
	o.src, o.dst = icmpPod6, icmpFar6
	return o
}

// with returns o changed by fn, for the table's variations.
func (o icmpOrig) with(fn func(*icmpOrig)) icmpOrig {
	fn(&o)
	return o
}

// frame returns o's Ethernet frame, padded to 60 bytes as a NIC would.
func (o icmpOrig) frame() []byte {
	var l4 []byte
	switch o.proto {
	case vswitch.ProtoTCP:
		l4 = make([]byte, 20)
		binary.BigEndian.PutUint16(l4[0:], 40000)
		binary.BigEndian.PutUint16(l4[2:], 443)
		binary.BigEndian.PutUint32(l4[4:], 0x01020304)
		l4[12] = 5 << 4
		l4[13] = 0x18 // PSH ACK
	case vswitch.ProtoICMP, vswitch.ProtoICMPv6:
		l4 = []byte{o.icmpType, 0, 0, 0, 0x12, 0x34, 0, 1} // identifier, sequence
	default:
		l4 = make([]byte, 8)
		binary.BigEndian.PutUint16(l4[0:], 40000)
		binary.BigEndian.PutUint16(l4[2:], 53)
		binary.BigEndian.PutUint16(l4[4:], uint16(8+o.payload))
	}
	for i := range o.payload {
		l4 = append(l4, byte(i*7+1))
	}
	// The L4 checksum stays zero: no ICMP error depends on it.

	var ip []byte
	typ := uint16(vswitch.EtherTypeIP4)
	if o.src.Is4() {
		hl := 20 + len(o.ipOpts)
		ip = make([]byte, hl, hl+len(l4))
		ip[0] = 0x40 | byte(hl/4)
		total := hl + len(l4)
		if o.claim != 0 {
			total = o.claim
		}
		binary.BigEndian.PutUint16(ip[2:], uint16(total))
		binary.BigEndian.PutUint16(ip[4:], 0x4242)
		binary.BigEndian.PutUint16(ip[6:], uint16(o.fragOff/8))
		if o.mf {
			ip[6] |= 0x20
		}
		ip[8] = 63
		ip[9] = o.proto
		s, d := o.src.As4(), o.dst.As4()
		copy(ip[12:], s[:])
		copy(ip[16:], d[:])
		copy(ip[20:], o.ipOpts)
		binary.BigEndian.PutUint16(ip[10:], ^refChecksum(ip, 0))
	} else {
		typ = vswitch.EtherTypeIP6
		ip = make([]byte, 40, 40+len(l4))
		ip[0] = 0x60
		plen := len(l4)
		if o.claim != 0 {
			plen = o.claim - 40
		}
		binary.BigEndian.PutUint16(ip[4:], uint16(plen))
		ip[6] = o.proto
		ip[7] = 63
		s, d := o.src.As16(), o.dst.As16()
		copy(ip[8:], s[:])
		copy(ip[24:], d[:])
	}
	return porttest.Ether(o.dstMAC, o.srcMAC, typ, append(ip, l4...))
}

// ipLen is the length of o's IP packet as it is in the frame.
func (o icmpOrig) ipLen() int {
	l4 := 8 + o.payload
	if o.proto == vswitch.ProtoTCP {
		l4 = 20 + o.payload
	}
	if o.src.Is4() {
		return 20 + len(o.ipOpts) + l4
	}
	return 40 + l4
}

// icmpWant is the type and code a kind should give, from RFC 792, RFC
// 1191 and RFC 4443, written out again rather than taken from the package.
func icmpWant(kind vswitch.ICMPKind, v6 bool) (typ, code byte) {
	v4 := map[vswitch.ICMPKind][2]byte{
		vswitch.ICMPTimeExceeded:    {11, 0},
		vswitch.ICMPFragNeeded:      {3, 4},
		vswitch.ICMPNetUnreachable:  {3, 0},
		vswitch.ICMPHostUnreachable: {3, 1},
	}
	v6m := map[vswitch.ICMPKind][2]byte{
		vswitch.ICMPTimeExceeded:    {3, 0},
		vswitch.ICMPFragNeeded:      {2, 0},
		vswitch.ICMPNetUnreachable:  {1, 0},
		vswitch.ICMPHostUnreachable: {1, 3},
	}
	tc := v4[kind]
	if v6 {
		tc = v6m[kind]
	}
	return tc[0], tc[1]
}

var icmpKinds = []vswitch.ICMPKind{
	vswitch.ICMPTimeExceeded, vswitch.ICMPFragNeeded, vswitch.ICMPNetUnreachable, vswitch.ICMPHostUnreachable,
}

// icmpCase is one call of WriteICMPError. sent says whether an error
// should come out.
type icmpCase struct {
	name  string
	orig  []byte
	kind  vswitch.ICMPKind
	mtu   int
	src   netip.Addr
	dstN  int // length of dst; 0 means 14+1280
	sent  bool
	quote int // with sent, the bytes of orig's IP packet the error quotes
}

// icmpCases returns the table of TestWriteICMPError, which also seeds
// FuzzWriteICMPError.
func icmpCases() []icmpCase {
	var cs []icmpCase
	add := func(name string, o icmpOrig, kind vswitch.ICMPKind, mtu int, sent bool, quote int) {
		src := icmpRouter4
		if o.src.Is6() {
			src = icmpRouter6
		}
		cs = append(cs, icmpCase{name: name, orig: o.frame(), kind: kind, mtu: mtu, src: src, sent: sent, quote: quote})
	}
	mtu := func(kind vswitch.ICMPKind) int {
		if kind == vswitch.ICMPFragNeeded {
			return 1400
		}
		return 0
	}

	// Every kind, both families: short packets quoted whole (but not
	// their Ethernet padding), long ones cut to 576 or 1280 bytes.
	for _, k := range icmpKinds {
		short4, short6 := udp4(4), udp6(4)
		long4 := udp4(1400).with(func(o *icmpOrig) { o.proto = vswitch.ProtoTCP })
		long6 := udp6(1400).with(func(o *icmpOrig) { o.proto = vswitch.ProtoTCP })
		add(fmt.Sprintf("v4 udp %v", k), short4, k, mtu(k), true, short4.ipLen())
		add(fmt.Sprintf("v4 tcp long %v", k), long4, k, mtu(k), true, 576-28)
		add(fmt.Sprintf("v6 udp %v", k), short6, k, mtu(k), true, short6.ipLen())
		add(fmt.Sprintf("v6 tcp long %v", k), long6, k, mtu(k), true, 1280-48)
	}
	k := vswitch.ICMPHostUnreachable

	// What may be answered.
	opts := udp4(30).with(func(o *icmpOrig) { o.ipOpts = []byte{0x94, 0x04, 0, 0} })
	add("v4 with options", opts, k, 0, true, opts.ipLen())
	for _, typ := range []byte{0, 8, 13, 14, 15, 16, 17, 18} {
		echo := udp4(20).with(func(o *icmpOrig) { o.proto, o.icmpType = vswitch.ProtoICMP, typ })
		add(fmt.Sprintf("v4 icmp type %d", typ), echo, vswitch.ICMPTimeExceeded, 0, true, echo.ipLen())
	}
	for _, typ := range []byte{128, 129, 135, 255} {
		echo := udp6(20).with(func(o *icmpOrig) { o.proto, o.icmpType = vswitch.ProtoICMPv6, typ })
		add(fmt.Sprintf("v6 icmp type %d", typ), echo, vswitch.ICMPTimeExceeded, 0, true, echo.ipLen())
	}
	first := udp4(20).with(func(o *icmpOrig) { o.mf = true })
	add("v4 first fragment", first, k, 0, true, first.ipLen())
	mcast6 := udp6(1400).with(func(o *icmpOrig) {
		o.dst, o.dstMAC = netip.MustParseAddr("ff05::1:3"), vswitch.MAC{0x33, 0x33, 0, 1, 0, 3}
	})
	add("v6 packet too big to multicast", mcast6, vswitch.ICMPFragNeeded, 1280, true, 1280-48)
	gso4 := udp4(100).with(func(o *icmpOrig) { o.claim = 64000 })
	add("v4 gso length beyond the frame", gso4, k, 0, true, gso4.ipLen())
	gso4long := udp4(3000).with(func(o *icmpOrig) { o.claim = 64000 })
	add("v4 gso long", gso4long, vswitch.ICMPFragNeeded, 1500, true, 576-28)
	gso6 := udp6(100).with(func(o *icmpOrig) { o.claim = 64000 })
	add("v6 gso length beyond the frame", gso6, k, 0, true, gso6.ipLen())
	gso4short := udp4(100).with(func(o *icmpOrig) { o.claim = 12 })
	add("v4 total length below the header", gso4short, k, 0, true, 20)
	add("v4 mtu 68", udp4(4), vswitch.ICMPFragNeeded, 68, true, udp4(4).ipLen())
	add("v4 mtu 65535", udp4(4), vswitch.ICMPFragNeeded, 65535, true, udp4(4).ipLen())
	add("v6 mtu 65536", udp6(4), vswitch.ICMPFragNeeded, 65536, true, udp6(4).ipLen())

	// What may not.
	no := func(name string, o icmpOrig, kind vswitch.ICMPKind) { add(name, o, kind, mtu(kind), false, 0) }
	for _, typ := range []byte{3, 4, 5, 11, 12, 42} {
		no(fmt.Sprintf("v4 icmp type %d", typ), udp4(20).with(func(o *icmpOrig) { o.proto, o.icmpType = vswitch.ProtoICMP, typ }), k)
	}
	for _, typ := range []byte{1, 2, 3, 4, 127, 137} {
		no(fmt.Sprintf("v6 icmp type %d", typ), udp6(20).with(func(o *icmpOrig) { o.proto, o.icmpType = vswitch.ProtoICMPv6, typ }), k)
	}
	no("v4 icmp without a type", udp4(0).with(func(o *icmpOrig) { o.proto, o.claim = vswitch.ProtoICMP, 20 }), k)
	no("v6 icmp without a type", udp6(0).with(func(o *icmpOrig) { o.proto, o.claim = vswitch.ProtoICMPv6, 40 }), k)
	no("v4 later fragment", udp4(20).with(func(o *icmpOrig) { o.fragOff, o.mf = 1480, true }), vswitch.ICMPTimeExceeded)
	no("v4 last fragment", udp4(20).with(func(o *icmpOrig) { o.fragOff = 8 }), vswitch.ICMPTimeExceeded)
	for _, kind := range icmpKinds {
		no(fmt.Sprintf("v4 multicast dst %v", kind), udp4(20).with(func(o *icmpOrig) { o.dst = netip.MustParseAddr("224.0.0.251") }), kind)
		no(fmt.Sprintf("v4 broadcast dst %v", kind), udp4(20).with(func(o *icmpOrig) { o.dst = netip.MustParseAddr("255.255.255.255") }), kind)
		no(fmt.Sprintf("v4 link-layer broadcast %v", kind), udp4(20).with(func(o *icmpOrig) { o.dstMAC = vswitch.Broadcast }), kind)
		if kind != vswitch.ICMPFragNeeded {
			no(fmt.Sprintf("v6 multicast dst %v", kind), udp6(20).with(func(o *icmpOrig) { o.dst = netip.MustParseAddr("ff02::1") }), kind)
			no(fmt.Sprintf("v6 link-layer multicast %v", kind), udp6(20).with(func(o *icmpOrig) { o.dstMAC = vswitch.MAC{0x33, 0x33, 0, 0, 0, 1} }), kind)
		}
	}
	for _, s := range []string{"0.0.0.0", "224.0.0.1", "127.0.0.1", "255.255.255.255", "240.0.0.1"} {
		no("v4 src "+s, udp4(20).with(func(o *icmpOrig) { o.src = netip.MustParseAddr(s) }), k)
	}
	for _, s := range []string{"::", "ff02::1", "::1"} {
		no("v6 src "+s, udp6(20).with(func(o *icmpOrig) { o.src = netip.MustParseAddr(s) }), vswitch.ICMPFragNeeded)
	}
	no("v4 multicast src mac", udp4(20).with(func(o *icmpOrig) { o.srcMAC = vswitch.MAC{0x01, 0, 0x5e, 0, 0, 1} }), k)
	no("v6 multicast src mac", udp6(20).with(func(o *icmpOrig) { o.srcMAC = vswitch.MAC{0x33, 0x33, 0, 0, 0, 1} }), vswitch.ICMPFragNeeded)
	add("v4 frag needed mtu 67", udp4(4), vswitch.ICMPFragNeeded, 67, false, 0)
	add("v4 frag needed mtu 65536", udp4(4), vswitch.ICMPFragNeeded, 65536, false, 0)
	add("v6 packet too big mtu 1279", udp6(4), vswitch.ICMPFragNeeded, 1279, false, 0)
	add("unknown kind", udp4(4), vswitch.ICMPKind(4), 0, false, 0)

	raw := func(name string, b []byte, src netip.Addr) {
		cs = append(cs, icmpCase{name: name, orig: b, kind: k, src: src})
	}
	v4, v6 := udp4(20).frame(), udp6(20).frame()
	raw("v4 orig, v6 src", v4, icmpRouter6)
	raw("v6 orig, v4 src", v6, icmpRouter4)
	raw("v4 orig, v4-mapped v6 src", v4, netip.MustParseAddr("::ffff:10.244.0.1"))
	raw("v6 orig, v4-mapped v6 src", v6, netip.MustParseAddr("::ffff:10.244.0.1"))
	raw("invalid src", v4, netip.Addr{})
	raw("empty", nil, icmpRouter4)
	raw("runt", v4[:10], icmpRouter4)
	raw("ethernet only", v4[:14], icmpRouter4)
	raw("v4 header cut", v4[:14+19], icmpRouter4)
	raw("v6 header cut", v6[:14+39], icmpRouter6)
	raw("v4 ihl past the frame", func() []byte {
		b := bytes.Clone(v4[:14+24])
		b[14] = 0x4f
		return b
	}(), icmpRouter4)
	raw("v4 ihl below 5", func() []byte {
		b := bytes.Clone(v4)
		b[14] = 0x44
		return b
	}(), icmpRouter4)
	raw("v6 in an ipv4 ethertype", func() []byte {
		b := bytes.Clone(v6)
		vswitch.Ether(b).SetType(vswitch.EtherTypeIP4)
		return b
	}(), icmpRouter4)
	raw("v4 in an ipv6 ethertype", func() []byte {
		b := bytes.Clone(v4)
		vswitch.Ether(b).SetType(vswitch.EtherTypeIP6)
		return b
	}(), icmpRouter6)
	raw("arp", porttest.ARPRequest(icmpPodMAC, icmpPod4, icmpRouter4), icmpRouter4)
	raw("garbage", bytes.Repeat([]byte{0x45}, 100), icmpRouter4)

	// dst one byte short of the error, and just long enough.
	short := udp4(4)
	n := 14 + 28 + short.ipLen()
	cs = append(cs,
		icmpCase{name: "dst one byte short", orig: short.frame(), kind: k, src: icmpRouter4, dstN: n - 1},
		icmpCase{name: "dst just long enough", orig: short.frame(), kind: k, src: icmpRouter4, dstN: n, sent: true, quote: short.ipLen()},
		icmpCase{name: "v6 dst one byte short", orig: udp6(2000).frame(), kind: k, src: icmpRouter6, dstN: 14 + 1280 - 1},
	)
	return cs
}

func TestWriteICMPError(t *testing.T) {
	for _, tc := range icmpCases() {
		t.Run(tc.name, func(t *testing.T) {
			dstN := tc.dstN
			if dstN == 0 {
				dstN = 14 + 1280
			}
			dst := bytes.Repeat([]byte{0xaa}, dstN)
			orig := bytes.Clone(tc.orig)
			n := vswitch.WriteICMPError(dst, orig, tc.kind, tc.mtu, icmpRouterMAC, tc.src)
			if !bytes.Equal(orig, tc.orig) {
				t.Errorf("WriteICMPError changed orig")
			}
			if !tc.sent {
				if n != 0 {
					t.Fatalf("WriteICMPError(%s) = %d, want 0", tc.name, n)
				}
				if !bytes.Equal(dst, bytes.Repeat([]byte{0xaa}, dstN)) {
					t.Errorf("WriteICMPError(%s) = 0 but wrote to dst", tc.name)
				}
				return
			}
			v6 := vswitch.Ether(orig).Type() == vswitch.EtherTypeIP6
			hdrs := 14 + 20 + 8
			if v6 {
				hdrs = 14 + 40 + 8
			}
			if want := hdrs + tc.quote; n != want {
				t.Fatalf("WriteICMPError(%s) = %d, want %d", tc.name, n, want)
			}
			r, err := parseICMPReply(dst[:n])
			if err != nil {
				t.Fatalf("WriteICMPError(%s): %v", tc.name, err)
			}
			checkICMPReply(t, r, orig, tc.kind, tc.mtu, tc.src)
			if !bytes.Equal(dst[n:], bytes.Repeat([]byte{0xaa}, dstN-n)) {
				t.Errorf("WriteICMPError(%s) wrote past the %d bytes it returned", tc.name, n)
			}
		})
	}
}

// icmpReply is an ICMP or ICMPv6 error, parsed.
type icmpReply struct {
	eth       vswitch.Ether
	v6        bool
	src, dst  netip.Addr
	ttl       byte
	typ, code byte
	rest      uint32 // bytes 4 to 7 of the ICMP header
	quote     []byte
}

// parseICMPReply parses an error WriteICMPError wrote and checks what
// holds for every error: lengths, limits, header and ICMP checksums.
func parseICMPReply(b []byte) (icmpReply, error) {
	var r icmpReply
	if len(b) < 14 {
		return r, errors.New("no ethernet header")
	}
	r.eth = vswitch.Ether(b)
	ip := b[14:]
	var msg []byte
	switch r.eth.Type() {
	case vswitch.EtherTypeIP4:
		if len(ip) < 28 || ip[0] != 0x45 {
			return r, fmt.Errorf("ipv4 header % x, want version 4, ihl 5", ip[:min(len(ip), 20)])
		}
		h := vswitch.IPv4(ip)
		if got := int(h.TotalLen()); got != len(ip) {
			return r, fmt.Errorf("ipv4 total length %d, want %d", got, len(ip))
		}
		if len(ip) > 576 {
			return r, fmt.Errorf("ipv4 error of %d bytes, want at most 576", len(ip))
		}
		if got := refChecksum(ip[:20], 0); got != 0xffff || h.Checksum() != h.HeaderChecksum() {
			return r, fmt.Errorf("ipv4 header sums to %#04x, want 0xffff", got)
		}
		if h.DF() || h.MF() || h.FragOffset() != 0 || h.Protocol() != vswitch.ProtoICMP {
			return r, fmt.Errorf("ipv4 flags, offset, protocol % x % x, want 0, 0, 1", ip[6:8], ip[9])
		}
		r.src, r.dst, r.ttl = h.Src(), h.Dst(), h.TTL()
		msg = ip[20:]
		if got := refChecksum(msg, 0); got != 0xffff {
			return r, fmt.Errorf("icmp sums to %#04x, want 0xffff", got)
		}
	case vswitch.EtherTypeIP6:
		if len(ip) < 48 || ip[0]>>4 != 6 {
			return r, fmt.Errorf("ipv6 header % x, want version 6", ip[:min(len(ip), 40)])
		}
		h := vswitch.IPv6(ip)
		if got := int(h.PayloadLen()); got != len(ip)-40 {
			return r, fmt.Errorf("ipv6 payload length %d, want %d", got, len(ip)-40)
		}
		if len(ip) > 1280 {
			return r, fmt.Errorf("ipv6 error of %d bytes, want at most 1280", len(ip))
		}
		if h.NextHeader() != vswitch.ProtoICMPv6 {
			return r, fmt.Errorf("ipv6 next header %d, want 58", h.NextHeader())
		}
		r.v6 = true
		r.src, r.dst, r.ttl = h.Src(), h.Dst(), h.HopLimit()
		msg = ip[40:]
		// RFC 8200 8.1: source, destination, upper-layer length,
		// three zero bytes, next header.
		pseudo := append(bytes.Clone(ip[8:40]), 0, 0, 0, 0, 0, 0, 0, 58)
		binary.BigEndian.PutUint32(pseudo[32:], uint32(len(msg)))
		if got := refChecksum(msg, uint32(refChecksum(pseudo, 0))); got != 0xffff {
			return r, fmt.Errorf("icmpv6 with pseudo-header sums to %#04x, want 0xffff", got)
		}
	default:
		return r, fmt.Errorf("ethertype %#04x", r.eth.Type())
	}
	r.typ, r.code = msg[0], msg[1]
	r.rest = binary.BigEndian.Uint32(msg[4:8])
	r.quote = msg[8:]
	return r, nil
}

// checkICMPReply checks that r is the error of kind about orig.
func checkICMPReply(t *testing.T, r icmpReply, orig []byte, kind vswitch.ICMPKind, mtu int, src netip.Addr) {
	t.Helper()
	oe := vswitch.Ether(orig)
	if r.eth.Dst() != oe.Src() || r.eth.Src() != icmpRouterMAC {
		t.Errorf("ethernet %v > %v, want %v > %v", r.eth.Src(), r.eth.Dst(), icmpRouterMAC, oe.Src())
	}
	v6 := oe.Type() == vswitch.EtherTypeIP6
	if r.v6 != v6 {
		t.Fatalf("error is v6 %v, want %v", r.v6, v6)
	}
	origSrc := vswitch.IPv4(oe.Payload()).Src()
	if v6 {
		origSrc = vswitch.IPv6(oe.Payload()).Src()
	}
	if r.src != src || r.dst != origSrc {
		t.Errorf("ip %v > %v, want %v > %v", r.src, r.dst, src, origSrc)
	}
	if r.ttl != 64 {
		t.Errorf("ttl %d, want 64", r.ttl)
	}
	typ, code := icmpWant(kind, v6)
	if r.typ != typ || r.code != code {
		t.Errorf("type %d code %d, want %d %d", r.typ, r.code, typ, code)
	}
	var rest uint32
	if kind == vswitch.ICMPFragNeeded {
		rest = uint32(mtu)
	}
	if r.rest != rest {
		t.Errorf("icmp bytes 4-7 %#08x, want %#08x", r.rest, rest)
	}
	if !bytes.HasPrefix(oe.Payload(), r.quote) {
		t.Errorf("quote of %d bytes is not a prefix of the original packet", len(r.quote))
	}
}

// TestWriteICMPErrorInPlace writes the error over the frame it answers,
// as a router short of buffers may.
func TestWriteICMPErrorInPlace(t *testing.T) {
	for _, o := range []icmpOrig{udp4(4), udp4(1400), udp6(4), udp6(1400)} {
		t.Run(fmt.Sprintf("v6 %v payload %d", o.src.Is6(), o.payload), func(t *testing.T) {
			src := icmpRouter4
			if o.src.Is6() {
				src = icmpRouter6
			}
			orig := o.frame()
			want := make([]byte, 14+1280)
			wn := vswitch.WriteICMPError(want, orig, vswitch.ICMPFragNeeded, 1280, icmpRouterMAC, src)
			buf := make([]byte, 14+1280+len(orig))
			copy(buf, orig)
			n := vswitch.WriteICMPError(buf, buf[:len(orig)], vswitch.ICMPFragNeeded, 1280, icmpRouterMAC, src)
			if n != wn || !bytes.Equal(buf[:n], want[:wn]) {
				t.Errorf("WriteICMPError(in place) = %d bytes % x, want %d bytes % x", n, buf[:min(n, 64)], wn, want[:min(wn, 64)])
			}
		})
	}
}

func TestICMPKindString(t *testing.T) {
	for k, want := range map[vswitch.ICMPKind]string{
		vswitch.ICMPTimeExceeded:    "time_exceeded",
		vswitch.ICMPFragNeeded:      "frag_needed",
		vswitch.ICMPNetUnreachable:  "net_unreachable",
		vswitch.ICMPHostUnreachable: "host_unreachable",
		vswitch.ICMPKind(200):       "unknown",
	} {
		if got := k.String(); got != want {
			t.Errorf("ICMPKind(%d).String() = %q, want %q", uint8(k), got, want)
		}
	}
}

func TestWriteICMPErrorAllocs(t *testing.T) {
	dst := make([]byte, 14+1280)
	for _, o := range []icmpOrig{udp4(1400), udp6(1400)} {
		orig := o.frame()
		src := icmpRouter4
		if o.src.Is6() {
			src = icmpRouter6
		}
		allocs := testing.AllocsPerRun(100, func() {
			if vswitch.WriteICMPError(dst, orig, vswitch.ICMPFragNeeded, 1400, icmpRouterMAC, src) == 0 {
				t.Fatal("WriteICMPError = 0")
			}
		})
		if allocs != 0 {
			t.Errorf("AllocsPerRun(WriteICMPError from %v) = %v, want 0", src, allocs)
		}
	}
}

// FuzzWriteICMPError checks that no frame makes WriteICMPError panic or
// write past what it returns, and that every error it writes parses, with
// valid checksums, quotes the original and goes back to its sender.
func FuzzWriteICMPError(f *testing.F) {
	for _, tc := range icmpCases() {
		f.Add(tc.orig, uint8(tc.kind), uint32(tc.mtu), tc.src.Is6(), uint16(tc.dstN))
	}
	f.Fuzz(func(t *testing.T, orig []byte, kind uint8, mtu uint32, v6 bool, dstN uint16) {
		src := icmpRouter4
		if v6 {
			src = icmpRouter6
		}
		n := int(dstN)
		if n == 0 || n > 14+1280 {
			n = 14 + 1280
		}
		dst := bytes.Repeat([]byte{0xaa}, n)
		in := bytes.Clone(orig)
		got := vswitch.WriteICMPError(dst, orig, vswitch.ICMPKind(kind), int(mtu), icmpRouterMAC, src)
		if !bytes.Equal(in, orig) {
			t.Fatal("WriteICMPError changed orig")
		}
		if got < 0 || got > n {
			t.Fatalf("WriteICMPError = %d, want 0 to %d", got, n)
		}
		if !bytes.Equal(dst[got:], bytes.Repeat([]byte{0xaa}, n-got)) {
			t.Fatalf("WriteICMPError = %d but wrote past it", got)
		}
		if got == 0 {
			return
		}
		r, err := parseICMPReply(dst[:got])
		if err != nil {
			t.Fatalf("WriteICMPError = %d: %v", got, err)
		}
		checkICMPReply(t, r, orig, vswitch.ICMPKind(kind), int(mtu), src)
	})
}
