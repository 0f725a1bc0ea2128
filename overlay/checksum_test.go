package overlay

import (
	"encoding/binary"
	"net/netip"
	"testing"

	vswitch "tapswitch/switch"
)

// csumFrame builds an Ethernet frame with a TCP or UDP packet from src
// to dst carrying payload, its checksum complete.
func csumFrame(src, dst netip.Addr, proto uint8, payload []byte) []byte {
	var l4 []byte
	if proto == vswitch.ProtoUDP {
		l4 = binary.BigEndian.AppendUint16(nil, 40000)
		l4 = binary.BigEndian.AppendUint16(l4, 53)
		l4 = binary.BigEndian.AppendUint16(l4, uint16(8+len(payload)))
		l4 = append(l4, 0, 0)
	} else {
		l4 = binary.BigEndian.AppendUint16(nil, 40000)
		l4 = binary.BigEndian.AppendUint16(l4, 80)
		l4 = append(l4, 0, 0, 0, 1, 0, 0, 0, 0, 5<<4, 0x18, 0xff, 0xff, 0, 0, 0, 0)
	}
	l4 = append(l4, payload...)
	var ip []byte
	typ := uint16(vswitch.EtherTypeIP4)
	var pseudo uint32
	if src.Is4() {
		ip = append(ip, 0x45, 0)
		ip = binary.BigEndian.AppendUint16(ip, uint16(20+len(l4)))
		ip = append(ip, 0, 1, 0x40, 0, 64, proto, 0, 0)
		s, d := src.As4(), dst.As4()
		ip = append(append(ip, s[:]...), d[:]...)
		ip[10], ip[11] = 0, 0
		binary.BigEndian.PutUint16(ip[10:], vswitch.IPv4(ip).HeaderChecksum())
		pseudo = uint32(vswitch.Checksum(ip[12:20], 0))
	} else {
		typ = vswitch.EtherTypeIP6
		ip = append(ip, 0x60, 0, 0, 0)
		ip = binary.BigEndian.AppendUint16(ip, uint16(len(l4)))
		ip = append(ip, proto, 64)
		s, d := src.As16(), dst.As16()
		ip = append(append(ip, s[:]...), d[:]...)
		pseudo = uint32(vswitch.Checksum(ip[8:40], 0))
	}
	pseudo += uint32(proto) + uint32(len(l4))
	field := 16
	if proto == vswitch.ProtoUDP {
		field = 6
	}
	sum := ^vswitch.Checksum(l4, pseudo)
	binary.BigEndian.PutUint16(l4[field:], sum)
	b := make([]byte, 14, 14+len(ip)+len(l4))
	binary.BigEndian.PutUint16(b[12:], typ)
	return append(append(b, ip...), l4...)
}

// partialOf returns b with its L4 checksum field holding only the
// pseudo-header sum, as a sender that offloads checksums leaves it.
func partialOf(b []byte, proto uint8) []byte {
	out := append([]byte(nil), b...)
	e := vswitch.Ether(out)
	var l4 []byte
	var pseudo uint32
	if e.Type() == vswitch.EtherTypeIP4 {
		ip := vswitch.IPv4(e.Payload())
		l4, pseudo = ip.Payload(), uint32(vswitch.Checksum(ip[12:20], 0))
	} else {
		ip := vswitch.IPv6(e.Payload())
		l4, pseudo = ip.Payload(), uint32(vswitch.Checksum(ip[8:40], 0))
	}
	pseudo += uint32(proto) + uint32(len(l4))
	field := 16
	if proto == vswitch.ProtoUDP {
		field = 6
	}
	pseudo = pseudo&0xffff + pseudo>>16
	binary.BigEndian.PutUint16(l4[field:], uint16(pseudo&0xffff+pseudo>>16))
	return out
}

func TestFinishChecksum(t *testing.T) {
	a4, b4 := netip.MustParseAddr("10.252.4.2"), netip.MustParseAddr("10.252.1.2")
	a6, b6 := netip.MustParseAddr("fd00:252:0:4::2"), netip.MustParseAddr("fd00:252:0:1::2")
	payload := []byte("hello, flannel: a partial checksum from a veth")
	for _, tt := range []struct {
		name     string
		src, dst netip.Addr
		proto    uint8
	}{
		{"tcp4", a4, b4, vswitch.ProtoTCP},
		{"udp4", a4, b4, vswitch.ProtoUDP},
		{"tcp6", a6, b6, vswitch.ProtoTCP},
		{"udp6", a6, b6, vswitch.ProtoUDP},
	} {
		t.Run(tt.name, func(t *testing.T) {
			good := csumFrame(tt.src, tt.dst, tt.proto, payload)
			b := append([]byte(nil), good...)
			if finishChecksum(b) || string(b) != string(good) {
				t.Errorf("finishChecksum(complete) changed the frame, want it left as it is")
			}
			p := partialOf(good, tt.proto)
			if !finishChecksum(p) || string(p) != string(good) {
				t.Errorf("finishChecksum(partial) did not give the complete frame")
			}
			bad := append([]byte(nil), good...)
			bad[len(bad)-1] ^= 0xff // the payload changed: the checksum is wrong, not partial
			wrong := append([]byte(nil), bad...)
			if finishChecksum(bad) || string(bad) != string(wrong) {
				t.Errorf("finishChecksum(wrong) changed the frame, want it left for the pod to drop")
			}
		})
	}
	// A fragment's checksum cannot be checked: left alone.
	frag := partialOf(csumFrame(a4, b4, vswitch.ProtoUDP, payload), vswitch.ProtoUDP)
	ip := vswitch.IPv4(vswitch.Ether(frag).Payload())
	binary.BigEndian.PutUint16(ip[6:8], 0x2000) // MF
	if finishChecksum(frag) {
		t.Error("finishChecksum(first fragment) = true, want it left alone")
	}
}
