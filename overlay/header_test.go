package overlay

import (
	"bytes"
	"encoding/binary"
	"testing"

	vswitch "tapswitch/switch"
)

var (
	testVTEP   = vswitch.MAC{0x02, 0xaa, 0, 0, 0, 1}
	testRouter = vswitch.MAC{0x02, 0xbb, 0, 0, 0, 1}
)

func TestHeader(t *testing.T) {
	tests := []struct {
		vni  uint32
		want []byte
	}{
		{1, []byte{0x08, 0, 0, 0, 0, 0, 0x01, 0}},
		{0x123456, []byte{0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0}},
		{maxVNI, []byte{0x08, 0, 0, 0, 0xff, 0xff, 0xff, 0}},
	}
	for _, tt := range tests {
		b := bytes.Repeat([]byte{0xee}, hdrLen) // reserved fields must be cleared
		putHeader(b, tt.vni)
		if !bytes.Equal(b, tt.want) {
			t.Errorf("putHeader(%#x) = % x, want % x", tt.vni, b, tt.want)
		}
		if h := header(b); h.vni() != tt.vni || h.flags() != flagI {
			t.Errorf("header(% x) = vni %#x flags %#x, want %#x, %#x", b, h.vni(), h.flags(), tt.vni, flagI)
		}
	}
}

// packet returns a VXLAN packet: a header with flags and vni, and an inner
// frame to dst of type typ with payload bytes of payload.
func vxlanPacket(flags byte, vni uint32, dst vswitch.MAC, typ uint16, payload int) []byte {
	b := make([]byte, hdrLen+vswitch.EtherHdrLen+payload)
	b[0] = flags
	binary.BigEndian.PutUint32(b[4:], vni<<8)
	e := vswitch.Ether(b[hdrLen:])
	e.SetDst(dst)
	e.SetSrc(vswitch.MAC{0x02, 0xcc, 0, 0, 0, 1})
	e.SetType(typ)
	for i := range payload {
		b[hdrLen+vswitch.EtherHdrLen+i] = byte(i)
	}
	return b
}

func TestCheckPacket(t *testing.T) {
	const maxFrame = 1450 + vswitch.EtherHdrLen
	reserved := vxlanPacket(0xff, 1, testVTEP, vswitch.EtherTypeIP4, 40)
	reserved[1], reserved[2], reserved[3], reserved[7] = 0xff, 0xff, 0xff, 0xff
	tests := []struct {
		name string
		pkt  []byte
		want dropReason
	}{
		{"ipv4", vxlanPacket(flagI, 1, testVTEP, vswitch.EtherTypeIP4, 40), accepted},
		{"ipv6", vxlanPacket(flagI, 1, testVTEP, vswitch.EtherTypeIP6, 60), accepted},
		{"bare ethernet header", vxlanPacket(flagI, 1, testVTEP, vswitch.EtherTypeIP4, 0), accepted},
		{"largest", vxlanPacket(flagI, 1, testVTEP, vswitch.EtherTypeIP4, 1450), accepted},
		{"reserved bits ignored", reserved, accepted},
		{"empty", nil, rxShort},
		{"header only", vxlanPacket(flagI, 1, testVTEP, vswitch.EtherTypeIP4, 0)[:hdrLen], rxShort},
		{"one byte short", vxlanPacket(flagI, 1, testVTEP, vswitch.EtherTypeIP4, 0)[:hdrLen+13], rxShort},
		{"no I flag", vxlanPacket(0, 1, testVTEP, vswitch.EtherTypeIP4, 40), rxBadFlags},
		{"other flags only", vxlanPacket(0xf7, 1, testVTEP, vswitch.EtherTypeIP4, 40), rxBadFlags},
		{"vni 2", vxlanPacket(flagI, 2, testVTEP, vswitch.EtherTypeIP4, 40), rxWrongVNI},
		{"vni 0", vxlanPacket(flagI, 0, testVTEP, vswitch.EtherTypeIP4, 40), rxWrongVNI},
		{"vni 0x10001", vxlanPacket(flagI, 0x10001, testVTEP, vswitch.EtherTypeIP4, 40), rxWrongVNI},
		{"over mtu", vxlanPacket(flagI, 1, testVTEP, vswitch.EtherTypeIP4, 1451), rxTooBig},
		{"broadcast", vxlanPacket(flagI, 1, vswitch.Broadcast, vswitch.EtherTypeIP4, 40), rxNotOurs},
		{"multicast", vxlanPacket(flagI, 1, vswitch.MAC{0x01, 0, 0x5e, 0, 0, 1}, vswitch.EtherTypeIP4, 40), rxNotOurs},
		{"other unicast", vxlanPacket(flagI, 1, testRouter, vswitch.EtherTypeIP4, 40), rxNotOurs},
		{"arp", vxlanPacket(flagI, 1, testVTEP, vswitch.EtherTypeARP, 28), rxNotIP},
		{"vlan", vxlanPacket(flagI, 1, testVTEP, 0x8100, 40), rxNotIP},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := checkPacket(tt.pkt, 1, testVTEP, maxFrame); got != tt.want {
				t.Errorf("checkPacket(% x...) = %v, want %v", tt.pkt[:min(len(tt.pkt), 24)], got, tt.want)
			}
		})
	}
}

func FuzzCheckPacket(f *testing.F) {
	f.Add(vxlanPacket(flagI, 1, testVTEP, vswitch.EtherTypeIP4, 40), uint32(1), 100)
	f.Add(vxlanPacket(flagI, 7, testVTEP, vswitch.EtherTypeIP6, 0), uint32(7), 14)
	f.Add(vxlanPacket(0, 1, vswitch.Broadcast, vswitch.EtherTypeARP, 28), uint32(1), 1514)
	f.Add([]byte{}, uint32(1), 0)
	f.Fuzz(func(t *testing.T, pkt []byte, vni uint32, maxFrame int) {
		vni &= maxVNI
		got := checkPacket(pkt, vni, testVTEP, maxFrame)
		if got > accepted {
			t.Fatalf("checkPacket = %d, not a reason", got)
		}
		// An independent statement of what is valid.
		valid := len(pkt) >= 22 && pkt[0]&0x08 != 0 &&
			uint32(pkt[4])<<16|uint32(pkt[5])<<8|uint32(pkt[6]) == vni &&
			len(pkt)-8 <= maxFrame &&
			bytes.Equal(pkt[8:14], testVTEP[:]) &&
			(bytes.Equal(pkt[20:22], []byte{0x08, 0x00}) || bytes.Equal(pkt[20:22], []byte{0x86, 0xdd}))
		if (got == accepted) != valid {
			t.Fatalf("checkPacket(% x, %d, %d) = %v, valid %v", pkt, vni, maxFrame, got, valid)
		}
	})
}
