package vswitch_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	vswitch "tapswitch/switch"
	"tapswitch/switch/porttest"
)

// The fragmentation tests build packets here and check every fragment
// field by field, with refChecksum for the sums.

// fragPacket describes an IPv4 UDP packet to fragment.
type fragPacket struct {
	total   int    // IP total length
	opts    []byte // IPv4 options, a multiple of 4 bytes
	fragOff int    // fragment offset in bytes
	mf, df  bool
	// partial leaves the UDP checksum to the hardware: the field holds
	// the pseudo-header sum and the frame asks for NeedsCsum.
	partial bool
}

// frame returns p's Ethernet frame and its offload metadata.
func (p fragPacket) frame() ([]byte, vswitch.Offload) {
	hl := 20 + len(p.opts)
	b := make([]byte, 14+p.total)
	e := vswitch.Ether(b)
	e.SetDst(porttest.MAC(0x03))
	e.SetSrc(porttest.MAC(0xfe))
	e.SetType(vswitch.EtherTypeIP4)
	ip := b[14:]
	ip[0] = 0x40 | byte(hl/4)
	binary.BigEndian.PutUint16(ip[2:], uint16(p.total))
	binary.BigEndian.PutUint16(ip[4:], 0xbeef)
	flags := uint16(p.fragOff / 8)
	if p.mf {
		flags |= 0x2000
	}
	if p.df {
		flags |= 0x4000
	}
	binary.BigEndian.PutUint16(ip[6:], flags)
	ip[8] = 63
	ip[9] = vswitch.ProtoUDP
	s, d := srcIP.As4(), dstIP.As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	copy(ip[20:], p.opts)
	binary.BigEndian.PutUint16(ip[10:], ^refChecksum(ip[:hl], 0))

	l4 := ip[hl:]
	for i := range l4 {
		l4[i] = byte(i*13 + 5)
	}
	if p.fragOff != 0 {
		// A later fragment holds no UDP header.
		return b, vswitch.Offload{}
	}
	binary.BigEndian.PutUint16(l4[0:], 40000)
	binary.BigEndian.PutUint16(l4[2:], 53)
	binary.BigEndian.PutUint16(l4[4:], uint16(len(l4)))
	binary.BigEndian.PutUint16(l4[6:], 0)
	sum := pseudoSum(vswitch.ProtoUDP, len(l4))
	if p.partial {
		binary.BigEndian.PutUint16(l4[6:], sum)
		return b, vswitch.Offload{NeedsCsum: true, CsumStart: uint16(14 + hl), CsumOffset: 6}
	}
	binary.BigEndian.PutUint16(l4[6:], ^refChecksum(l4, uint32(sum)))
	return b, vswitch.Offload{}
}

// The options of the options tests (RFC 791): loose source route (copied),
// record route (not copied), a no-operation, router alert (copied, RFC
// 2113), end of options.
var (
	fragOpts = []byte{
		0x83, 7, 4, 10, 0, 0, 1, // loose source route
		0x07, 7, 4, 0, 0, 0, 0, // record route
		0x01,             // no-operation
		0x94, 4, 0, 0, 0, // router alert, end of options
	}
	fragOptsCopied = []byte{
		0x83, 7, 4, 10, 0, 0, 1, // loose source route
		0x94, 4, 0, 0, // router alert
		0, // end of options
	}
)

func TestFragmentIPv4(t *testing.T) {
	tests := []struct {
		name  string
		pkt   fragPacket
		mtu   int
		count int
		// the options of fragments after the first
		laterOpts []byte
	}{
		{"4000 at 1500", fragPacket{total: 4000}, 1500, 3, nil},
		{"4000 at 576", fragPacket{total: 4000}, 576, 8, nil},
		{"4000 at 68", fragPacket{total: 4000}, 68, 83, nil},
		{"4000 at 1500 unaligned", fragPacket{total: 4000}, 1499, 3, nil},
		{"mtu one byte short", fragPacket{total: 1501}, 1500, 2, nil},
		{"options at 576", fragPacket{total: 4000, opts: fragOpts}, 576, 8, fragOptsCopied},
		{"options at 68", fragPacket{total: 400, opts: fragOpts}, 68, 12, fragOptsCopied},
		{"no copied options", fragPacket{total: 2000, opts: []byte{0x07, 7, 4, 0, 0, 0, 0, 0}}, 1000, 3, []byte{}},
		{"40 bytes of options at 68", fragPacket{total: 200, opts: bytes.Repeat([]byte{0x94, 4, 0, 0}, 10)}, 68, 18, bytes.Repeat([]byte{0x94, 4, 0, 0}, 10)},
		{"first fragment", fragPacket{total: 1500, mf: true}, 576, 3, nil},
		{"middle fragment", fragPacket{total: 1500, fragOff: 2960, mf: true}, 576, 3, nil},
		{"last fragment", fragPacket{total: 1500, fragOff: 2960}, 576, 3, nil},
		{"checksum offload", fragPacket{total: 4000, partial: true}, 1500, 3, nil},
	}
	pools := vswitch.NewPools()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, o := tt.pkt.frame()
			f := frameFrom(pools.Small, b, o)
			defer f.Release()
			frags, err := vswitch.FragmentIPv4(nil, f, tt.mtu, pools)
			if err != nil {
				t.Fatalf("FragmentIPv4(%s, %d) error %v", tt.name, tt.mtu, err)
			}
			defer releaseAll(frags)
			if len(frags) != tt.count {
				t.Errorf("FragmentIPv4(%s, %d) = %d fragments, want %d", tt.name, tt.mtu, len(frags), tt.count)
			}
			if f.Offload.NeedsCsum {
				t.Errorf("NeedsCsum still set after FragmentIPv4")
			}
			payload := checkFragments(t, f.Bytes(), frags, tt.mtu, tt.laterOpts)
			orig := vswitch.IPv4(f.Bytes()[14:])
			if !bytes.Equal(payload, orig.Payload()) {
				t.Errorf("reassembled %d bytes, differ from the original %d", len(payload), len(orig.Payload()))
			}
			if tt.pkt.fragOff == 0 && !tt.pkt.mf {
				udp := payload
				if got := refChecksum(udp, uint32(pseudoSum(vswitch.ProtoUDP, len(udp)))); got != 0xffff {
					t.Errorf("reassembled udp sums to %#04x, want 0xffff", got)
				}
			}
		})
	}
}

// checkFragments checks frags, the fragments of the frame orig at mtu,
// and returns their payloads put back together in order. laterOpts are
// the options every fragment after the first should carry; nil means none.
func checkFragments(t *testing.T, orig []byte, frags []*vswitch.Frame, mtu int, laterOpts []byte) []byte {
	t.Helper()
	o := vswitch.IPv4(orig[14:])
	var payload []byte
	for i, fr := range frags {
		b := fr.Bytes()
		if fr.Offload != (vswitch.Offload{}) {
			t.Errorf("fragment %d Offload = %+v, want zero", i, fr.Offload)
		}
		if !bytes.Equal(b[:14], orig[:14]) {
			t.Errorf("fragment %d ethernet header % x, want % x", i, b[:14], orig[:14])
		}
		ip := vswitch.IPv4(b[14:])
		if !ip.Valid(false) || int(ip.TotalLen()) != len(ip) {
			t.Fatalf("fragment %d: bad ipv4 header or length % x", i, b[14:min(len(b), 34)])
		}
		if len(ip) > mtu {
			t.Errorf("fragment %d is %d bytes, want at most %d", i, len(ip), mtu)
		}
		if got := refChecksum(ip[:ip.HeaderLen()], 0); got != 0xffff {
			t.Errorf("fragment %d header sums to %#04x, want 0xffff", i, got)
		}
		if ip.ID() != o.ID() || ip.TTL() != o.TTL() || ip.Protocol() != o.Protocol() || ip.Src() != o.Src() || ip.Dst() != o.Dst() || ip[1] != o[1] {
			t.Errorf("fragment %d: id, ttl, protocol, addresses or tos differ from the original", i)
		}
		if ip.DF() {
			t.Errorf("fragment %d has DF", i)
		}
		last := i == len(frags)-1
		if want := !last || o.MF(); ip.MF() != want {
			t.Errorf("fragment %d MF = %v, want %v", i, ip.MF(), want)
		}
		if want := o.FragOffset() + len(payload); ip.FragOffset() != want {
			t.Errorf("fragment %d offset %d, want %d", i, ip.FragOffset(), want)
		}
		if !last && len(ip.Payload())%8 != 0 {
			t.Errorf("fragment %d carries %d bytes, want a multiple of 8", i, len(ip.Payload()))
		}
		opts := ip[20:ip.HeaderLen()]
		wantOpts := o[20:o.HeaderLen()]
		if i > 0 {
			wantOpts = laterOpts
			for len(wantOpts)%4 != 0 {
				wantOpts = append(wantOpts, 0)
			}
		}
		if !bytes.Equal(opts, wantOpts) {
			t.Errorf("fragment %d options % x, want % x", i, opts, wantOpts)
		}
		payload = append(payload, ip.Payload()...)
	}
	return payload
}

// TestFragmentIPv4Fits: a packet that fits comes back as one copy, DF or
// not, without the Ethernet padding and with its checksum complete.
func TestFragmentIPv4Fits(t *testing.T) {
	done, _ := fragPacket{total: 1000}.frame()
	partial, po := fragPacket{total: 1000, partial: true}.frame()
	df, _ := fragPacket{total: 1500, df: true}.frame()
	small, _ := fragPacket{total: 28}.frame()
	tests := []struct {
		name  string
		frame []byte
		o     vswitch.Offload
		mtu   int
		want  []byte
	}{
		{"fits", done, vswitch.Offload{}, 1500, done},
		{"exactly", done, vswitch.Offload{}, 1000, done},
		{"checksum offload", partial, po, 1500, done},
		{"df", df, vswitch.Offload{}, 1500, df},
		{"ethernet padding", append(bytes.Clone(small), make([]byte, 18)...), vswitch.Offload{}, 68, small},
	}
	pools := vswitch.NewPools()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := frameFrom(pools.Small, tt.frame, tt.o)
			defer f.Release()
			frags, err := vswitch.FragmentIPv4(nil, f, tt.mtu, pools)
			if err != nil || len(frags) != 1 {
				t.Fatalf("FragmentIPv4(%s, %d) = %d fragments, %v, want 1, nil", tt.name, tt.mtu, len(frags), err)
			}
			defer releaseAll(frags)
			if got := frags[0].Bytes(); !bytes.Equal(got, tt.want) {
				t.Errorf("FragmentIPv4(%s, %d) = % x..., want % x...", tt.name, tt.mtu, got[:min(len(got), 48)], tt.want[:min(len(tt.want), 48)])
			}
			if frags[0].Offload != (vswitch.Offload{}) {
				t.Errorf("Offload = %+v, want zero", frags[0].Offload)
			}
		})
	}
}

func TestFragmentIPv4Errors(t *testing.T) {
	big, _ := fragPacket{total: 4000}.frame()
	withDF, _ := fragPacket{total: 4000, df: true}.frame()
	partial, po := fragPacket{total: 4000, partial: true}.frame()
	badOpt := func(opts []byte) []byte {
		b, _ := fragPacket{total: 4000, opts: opts}.frame()
		return b
	}
	tests := []struct {
		name  string
		frame []byte
		o     vswitch.Offload
		mtu   int
		pools *vswitch.Pools
	}{
		{name: "df", frame: withDF, mtu: 1500},
		{name: "mtu 67", frame: big, mtu: 67},
		{name: "mtu 0", frame: big, mtu: 0},
		{name: "gso", frame: big, o: vswitch.Offload{GSOType: vswitch.GSOUDPL4, GSOSize: 1000}, mtu: 1500},
		{name: "bad checksum offsets", frame: partial, o: vswitch.Offload{NeedsCsum: true, CsumStart: 10, CsumOffset: po.CsumOffset}, mtu: 1500},
		{name: "ipv6", frame: porttest.Ether(porttest.MAC(3), porttest.MAC(4), vswitch.EtherTypeIP6, make([]byte, 100)), mtu: 68},
		{name: "runt", frame: big[:10], mtu: 1500},
		{name: "ip header cut", frame: big[:14+19], mtu: 1500},
		{name: "total length past the frame", frame: big[:3000], mtu: 1500},
		{name: "option past the header", frame: badOpt([]byte{0x94, 8, 0, 0}), mtu: 1500},
		{name: "option length 0", frame: badOpt([]byte{0x94, 0, 0, 0}), mtu: 1500},
		{name: "option without a length", frame: badOpt([]byte{1, 1, 1, 0x94}), mtu: 1500},
		{name: "offset past 65535", frame: func() []byte {
			b, _ := fragPacket{total: 4000, fragOff: 62000, mf: true}.frame()
			return b
		}(), mtu: 1500},
		{name: "pools too small", frame: big, mtu: 1500, pools: &vswitch.Pools{
			Small: vswitch.NewPool(vswitch.Headroom + 600), Large: vswitch.NewPool(vswitch.Headroom + 1000),
		}},
		// With 20 bytes of options of which 8 are copied, at mtu 572
		// the first fragment is 568 bytes and the second 572: the
		// first fits the pools, the second does not.
		{name: "second fragment too big for the pools", frame: badOpt([]byte{
			0x94, 4, 0, 0, 0x94, 4, 0, 0, // router alert twice, copied
			0x07, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, // record route, not copied; end
		}), mtu: 572, pools: &vswitch.Pools{
			Small: vswitch.NewPool(vswitch.Headroom + 14 + 568), Large: vswitch.NewPool(vswitch.Headroom + 14 + 568),
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pools := tt.pools
			if pools == nil {
				pools = vswitch.NewPools()
			}
			f := frameFrom(vswitch.NewPool(vswitch.SmallBufSize), tt.frame, tt.o)
			defer f.Release()
			sentinel := pools.Small.Get()
			defer sentinel.Release()
			dst := make([]*vswitch.Frame, 1, 100)
			dst[0] = sentinel
			got, err := vswitch.FragmentIPv4(dst, f, tt.mtu, pools)
			if !errors.Is(err, vswitch.ErrCannotFragment) {
				t.Errorf("FragmentIPv4(%s, %d) error %v, want ErrCannotFragment", tt.name, tt.mtu, err)
			}
			if len(got) != 1 || got[0] != sentinel {
				t.Errorf("FragmentIPv4(%s, %d) left %d frames in dst, want the 1 passed in", tt.name, tt.mtu, len(got))
			}
			if extra := dst[1:cap(dst)]; !allNil(extra) {
				t.Errorf("FragmentIPv4(%s, %d) left released frames behind dst's length", tt.name, tt.mtu)
			}
		})
	}
}

func allNil(frames []*vswitch.Frame) bool {
	for _, f := range frames {
		if f != nil {
			return false
		}
	}
	return true
}

// TestFragmentIPv4Appends: fragments go after what dst held.
func TestFragmentIPv4Appends(t *testing.T) {
	pools := vswitch.NewPools()
	b, _ := fragPacket{total: 4000}.frame()
	f := frameFrom(pools.Small, b, vswitch.Offload{})
	defer f.Release()
	first := pools.Small.Get()
	dst, err := vswitch.FragmentIPv4([]*vswitch.Frame{first}, f, 1500, pools)
	defer releaseAll(dst)
	if err != nil || len(dst) != 4 || dst[0] != first {
		t.Fatalf("FragmentIPv4(1 frame, 4000 bytes, 1500) = %d frames, %v, want 4, nil", len(dst), err)
	}
	checkFragments(t, b, dst[1:], 1500, nil)
}

// TestFragmentIPv4Allocs: with warm pools and room in dst, fragmenting
// allocates nothing.
func TestFragmentIPv4Allocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under the race detector")
	}
	pools := vswitch.NewPools()
	b, _ := fragPacket{total: 4000, opts: fragOpts}.frame()
	f := frameFrom(pools.Small, b, vswitch.Offload{})
	defer f.Release()
	dst := make([]*vswitch.Frame, 0, 16)
	allocs := testing.AllocsPerRun(1000, func() {
		frags, err := vswitch.FragmentIPv4(dst[:0], f, 1500, pools)
		if err != nil {
			t.Fatal(err)
		}
		releaseAll(frags)
	})
	if allocs != 0 {
		t.Errorf("AllocsPerRun(FragmentIPv4) = %v, want 0", allocs)
	}
}
