package vswitch_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	vswitch "tapswitch/switch"
	"tapswitch/switch/porttest"
)

// refChecksum is RFC 1071 written the plain way: add 16-bit big-endian
// words, pad an odd byte with zero, fold the carries back in.
func refChecksum(b []byte, initial uint32) uint16 {
	sum := uint64(initial)
	for i := 0; i < len(b); i += 2 {
		w := uint64(b[i]) << 8
		if i+1 < len(b) {
			w |= uint64(b[i+1])
		}
		sum += w
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return uint16(sum)
}

func TestChecksum(t *testing.T) {
	t.Run("RFC 1071 example", func(t *testing.T) {
		// Section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
		b := []byte{0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7}
		if got := vswitch.Checksum(b, 0); got != 0xddf2 {
			t.Errorf("Checksum(% x, 0) = %#04x, want 0xddf2", b, got)
		}
	})
	rng := rand.New(rand.NewPCG(1071, 1))
	lengths := []int{0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 20, 31, 33, 64, 65, 1499, 1500, 9001, 65535}
	for range 50 {
		lengths = append(lengths, rng.IntN(2000))
	}
	initials := []uint32{0, 1, 0xffff, 0x10000, 0xffffffff}
	for _, n := range lengths {
		t.Run(fmt.Sprintf("len %d", n), func(t *testing.T) {
			b := make([]byte, n)
			for i := range b {
				b[i] = byte(rng.Uint32())
			}
			for _, initial := range append(initials, rng.Uint32()) {
				if got, want := vswitch.Checksum(b, initial), refChecksum(b, initial); got != want {
					t.Errorf("Checksum(%d random bytes, %#x) = %#04x, want %#04x", n, initial, got, want)
				}
			}
			// All ones sums to all ones, never to zero.
			ones := bytes.Repeat([]byte{0xff}, n)
			if got, want := vswitch.Checksum(ones, 0), refChecksum(ones, 0); got != want {
				t.Errorf("Checksum(%d bytes of ff, 0) = %#04x, want %#04x", n, got, want)
			}
		})
	}
}

// l4Packet describes an IPv4 packet whose L4 checksum the sender left for
// the hardware, as the kernel does with CHECKSUM_PARTIAL.
type l4Packet struct {
	proto      byte
	csumOffset uint16 // of the checksum field within the L4 header
	l4         []byte // header and payload, checksum field zero
}

var (
	srcIP = netip.MustParseAddr("10.244.0.2")
	dstIP = netip.MustParseAddr("10.244.0.3")
)

func udpSegment(payload []byte) []byte {
	b := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint16(b[0:], 40000)
	binary.BigEndian.PutUint16(b[2:], 53)
	binary.BigEndian.PutUint16(b[4:], uint16(len(b)))
	copy(b[8:], payload)
	return b
}

func tcpSegment(payload []byte) []byte {
	b := make([]byte, 20+len(payload))
	binary.BigEndian.PutUint16(b[0:], 40000)
	binary.BigEndian.PutUint16(b[2:], 80)
	binary.BigEndian.PutUint32(b[4:], 0x01020304) // seq
	binary.BigEndian.PutUint32(b[8:], 0x0a0b0c0d) // ack
	b[12] = 5 << 4                                // data offset
	b[13] = 0x18                                  // PSH ACK
	binary.BigEndian.PutUint16(b[14:], 65535)     // window
	copy(b[20:], payload)
	return b
}

// pseudoSum is the ones' complement sum of the IPv4 pseudo-header
// (RFC 768, RFC 793): source, destination, zero, protocol, L4 length.
func pseudoSum(proto byte, l4len int) uint16 {
	var p [12]byte
	s, d := srcIP.As4(), dstIP.As4()
	copy(p[0:], s[:])
	copy(p[4:], d[:])
	p[9] = proto
	binary.BigEndian.PutUint16(p[10:], uint16(l4len))
	return refChecksum(p[:], 0)
}

// partialFrame builds the Ethernet frame of pkt with the pseudo-header sum
// in its checksum field and the offload metadata that asks for the rest.
func partialFrame(pkt l4Packet) ([]byte, vswitch.Offload) {
	ip := make([]byte, 20)
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(pkt.l4)))
	ip[8] = 64
	ip[9] = pkt.proto
	s, d := srcIP.As4(), dstIP.As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	binary.BigEndian.PutUint16(ip[10:], ^refChecksum(ip, 0))

	l4 := bytes.Clone(pkt.l4)
	binary.BigEndian.PutUint16(l4[pkt.csumOffset:], pseudoSum(pkt.proto, len(l4)))
	frame := append(append(make([]byte, 0, 14+20+len(l4)), make([]byte, 14)...), ip...)
	frame = append(frame, l4...)
	e := vswitch.Ether(frame)
	e.SetDst(porttest.MAC(0x50))
	e.SetSrc(hostMAC(0))
	e.SetType(vswitch.EtherTypeIP4)
	return frame, vswitch.Offload{NeedsCsum: true, CsumStart: 14 + 20, CsumOffset: pkt.csumOffset}
}

// verifyL4 reports whether the L4 checksum of an IPv4 frame built by
// partialFrame is correct: the segment and the pseudo-header sum to ffff.
func verifyL4(frame []byte, proto byte) bool {
	l4 := frame[14+20:]
	return refChecksum(l4, uint32(pseudoSum(proto, len(l4)))) == 0xffff
}

func frameFrom(pool *vswitch.Pool, b []byte, o vswitch.Offload) *vswitch.Frame {
	f := pool.Get()
	f.SetLen(copy(f.ReadBuf(0), b))
	f.Offload = o
	return f
}

func TestCompleteChecksum(t *testing.T) {
	rng := rand.New(rand.NewPCG(768, 793))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	// zeroSum returns a payload of n bytes whose last two bytes make the
	// whole checksum come out as zero, the case RFC 768 treats apart.
	zeroSum := func(seg func([]byte) []byte, proto byte, n int) []byte {
		p := random(n)
		p[n-2], p[n-1] = 0, 0
		s := seg(p)
		sum := refChecksum(s, uint32(pseudoSum(proto, len(s))))
		binary.BigEndian.PutUint16(p[n-2:], ^sum)
		return p
	}
	const udp, tcp = 17, 6
	tests := []struct {
		name      string
		pkt       l4Packet
		wantField int // -1: any correct checksum
	}{
		{"udp even payload", l4Packet{udp, 6, udpSegment(random(100))}, -1},
		{"udp odd payload", l4Packet{udp, 6, udpSegment(random(101))}, -1},
		{"udp empty payload", l4Packet{udp, 6, udpSegment(nil)}, -1},
		{"udp large payload", l4Packet{udp, 6, udpSegment(random(8000))}, -1},
		{"tcp even payload", l4Packet{tcp, 16, tcpSegment(random(1460))}, -1},
		{"tcp odd payload", l4Packet{tcp, 16, tcpSegment(random(1))}, -1},
		{"tcp no payload", l4Packet{tcp, 16, tcpSegment(nil)}, -1},
		// RFC 768: a computed zero is sent as all ones, since zero
		// means "no checksum" in UDP over IPv4. TCP sends the zero.
		{"udp computed zero", l4Packet{udp, 6, udpSegment(zeroSum(udpSegment, udp, 10))}, 0xffff},
		{"tcp computed zero", l4Packet{tcp, 16, tcpSegment(zeroSum(tcpSegment, tcp, 10))}, 0x0000},
	}
	pool := vswitch.NewPool(vswitch.SmallBufSize)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, o := partialFrame(tt.pkt)
			if verifyL4(b, tt.pkt.proto) {
				t.Fatalf("test frame already has a valid checksum")
			}
			f := frameFrom(pool, b, o)
			defer f.Release()
			if !vswitch.CompleteChecksum(f) {
				t.Fatalf("CompleteChecksum(%+v) = false, want true", o)
			}
			got := f.Bytes()
			if !verifyL4(got, tt.pkt.proto) {
				t.Errorf("after CompleteChecksum, L4 and pseudo-header sum to %#04x, want 0xffff",
					refChecksum(got[34:], uint32(pseudoSum(tt.pkt.proto, len(got)-34))))
			}
			field := 34 + int(tt.pkt.csumOffset)
			if v := binary.BigEndian.Uint16(got[field:]); tt.wantField >= 0 && int(v) != tt.wantField {
				t.Errorf("checksum field = %#04x, want %#04x", v, tt.wantField)
			}
			// Only the checksum field changed.
			if !bytes.Equal(got[:field], b[:field]) || !bytes.Equal(got[field+2:], b[field+2:]) {
				t.Errorf("CompleteChecksum changed bytes outside the checksum field")
			}
			if f.Offload.NeedsCsum || f.Offload.CsumStart != 0 || f.Offload.CsumOffset != 0 {
				t.Errorf("Offload after CompleteChecksum = %+v, want NeedsCsum and offsets cleared", f.Offload)
			}
		})
	}
}

func TestCompleteChecksumBadOffsets(t *testing.T) {
	pool := vswitch.NewPool(vswitch.SmallBufSize)
	b := frameOfLen(porttest.MAC(0x50), hostMAC(0), 60)
	tests := []struct {
		start, offset uint16
	}{
		{60, 0},      // start at the end
		{61, 0},      // start past the end
		{0xffff, 6},  // far past
		{34, 25},     // field's first byte is the last of the frame
		{34, 26},     // field starts at the end
		{58, 2},      // field past the end
		{34, 0xffff}, // offset far past
		{0, 5},       // field over the source MAC
		{0, 12},      // field over the EtherType
		{13, 1},      // start inside the Ethernet header
	}
	for _, tt := range tests {
		o := vswitch.Offload{NeedsCsum: true, CsumStart: tt.start, CsumOffset: tt.offset}
		f := frameFrom(pool, b, o)
		if vswitch.CompleteChecksum(f) {
			t.Errorf("CompleteChecksum(start %d, offset %d) on %d bytes = true, want false", tt.start, tt.offset, len(b))
		}
		if !bytes.Equal(f.Bytes(), b) || f.Offload != o {
			t.Errorf("CompleteChecksum(start %d, offset %d) changed the frame or its offload", tt.start, tt.offset)
		}
		f.Release()
	}
	// The last two bytes are a valid place for the field.
	f := frameFrom(pool, b, vswitch.Offload{NeedsCsum: true, CsumStart: 34, CsumOffset: 24})
	if !vswitch.CompleteChecksum(f) {
		t.Errorf("CompleteChecksum(start 34, offset 24) on 60 bytes = false, want true")
	}
	f.Release()
}

// TestChecksumOffload sends a frame whose checksum is still to be done, and
// a GSO super-frame, from a GSO port to a GSO port and an ordinary one,
// which gets the super-frame segmented.
func TestChecksumOffload(t *testing.T) {
	gsoCaps := vswitch.Caps{GSO: true, MaxFrame: 65535}
	src := porttest.NewWithCaps("src", gsoCaps)
	plain := porttest.New("plain")
	gso := porttest.NewWithCaps("gso", gsoCaps)
	ts := newTestSwitch(t, vswitch.Options{}, src, plain, gso)
	pool := vswitch.NewPool(vswitch.LargeBufSize)

	udp, o := partialFrame(l4Packet{17, 6, udpSegment([]byte("hello, checksum"))})
	ts.sw.Forward(ts.ids[0], []*vswitch.Frame{frameFrom(pool, udp, o)})

	super, so := partialFrame(l4Packet{6, 16, tcpSegment(bytes.Repeat([]byte("x"), 20000))})
	so.GSOType, so.GSOSize, so.HdrLen = vswitch.GSOTCPv4, 1448, 14+20+20
	ts.sw.Forward(ts.ids[0], []*vswitch.Frame{frameFrom(pool, super, so)})
	ts.settle()

	t.Run("ordinary port gets a complete checksum", func(t *testing.T) {
		got := ts.data(1)
		// The UDP frame, then the super-frame's 20000 bytes of payload as
		// 14 segments (segment.go's own tests check their bytes).
		if len(got) != 1+14 {
			t.Fatalf("port plain got %s, want the UDP frame and 14 segments", describe(got))
		}
		for k, seg := range got[1:] {
			if !verifyL4(seg, 6) {
				t.Errorf("segment %d has a wrong TCP checksum", k)
			}
		}
		if !verifyL4(got[0], 17) {
			t.Errorf("port plain got a UDP frame with a wrong checksum")
		}
		if offl := plain.WrittenOffloads()[0]; offl.NeedsCsum {
			t.Errorf("port plain offload = %+v, want NeedsCsum false", offl)
		}
		if st := ts.stats(1); st.Segmented != 1 || len(st.Drops) != 0 {
			t.Errorf("port plain Segmented = %d, Drops = %v, want 1 super-frame segmented, no drops", st.Segmented, st.Drops)
		}
	})
	t.Run("GSO port gets both unchanged", func(t *testing.T) {
		got := ts.data(2)
		if want := [][]byte{udp, super}; !equalFrames(got, want) {
			t.Fatalf("port gso got %s, want %s", describe(got), describe(want))
		}
		offl := gso.WrittenOffloads()
		// The barrier markers come after the two frames.
		if offl[0] != o || offl[1] != so {
			t.Errorf("port gso offloads = %+v, %+v, want %+v, %+v", offl[0], offl[1], o, so)
		}
	})
}
