package overlay

import (
	"encoding/binary"

	vswitch "tapswitch/switch"
)

// Inner checksums a sender left to the hardware.
//
// A Linux node whose underlay link offloads checksums (a veth's default,
// so every node that is a container: kind and the like) encapsulates a
// pod's packet with its TCP or UDP checksum still to be done: the field
// holds the pseudo-header sum, as for CHECKSUM_PARTIAL, and the kernel
// remembers in the packet's metadata, which never reaches a userspace
// socket. A NIC would finish the sum before the wire; a veth does not. The
// pods would drop every such segment, so the VXLAN port finishes it:
// finishChecksum recognises the pseudo-header sum in the field and writes
// the checksum in its place. A packet whose checksum is right, or wrong in
// another way, is left as it is; the receiving pod's kernel judges it.

// finishChecksum completes the TCP or UDP checksum of the inner frame b
// if the field holds only the pseudo-header sum, and reports whether it
// did. Fragments, other protocols and malformed headers are left alone.
func finishChecksum(b []byte) bool {
	e := vswitch.Ether(b)
	var (
		proto  uint8
		l4     []byte
		pseudo uint32
	)
	switch e.Type() {
	case vswitch.EtherTypeIP4:
		ip := vswitch.IPv4(e.Payload())
		if !ip.Valid(false) || ip.MF() || ip.FragOffset() != 0 {
			return false
		}
		proto, l4 = ip.Protocol(), ip[ip.HeaderLen():ip.TotalLen()]
		pseudo = uint32(vswitch.Checksum(ip[12:20], 0))
	case vswitch.EtherTypeIP6:
		ip := vswitch.IPv6(e.Payload())
		if !ip.Valid(false) {
			return false
		}
		proto, l4 = ip.NextHeader(), ip[vswitch.IPv6HdrLen:vswitch.IPv6HdrLen+int(ip.PayloadLen())]
		pseudo = uint32(vswitch.Checksum(ip[8:40], 0))
	default:
		return false
	}
	field := 16 // TCP
	switch {
	case proto == vswitch.ProtoUDP && len(l4) >= 8:
		field = 6
	case proto == vswitch.ProtoTCP && len(l4) >= 20:
	default:
		return false
	}
	pseudo += uint32(proto) + uint32(len(l4))
	pseudo = pseudo&0xffff + pseudo>>16
	partial := uint16(pseudo&0xffff + pseudo>>16)
	got := binary.BigEndian.Uint16(l4[field:])
	if got != partial {
		return false
	}
	// The sum with the field as it is counts the pseudo-header once more
	// than the rest: sum over l4 (field included) is the finished sum.
	sum := ^vswitch.Checksum(l4, 0)
	if proto == vswitch.ProtoUDP && sum == 0 {
		sum = 0xffff // RFC 768
	}
	if !sumIsRight(l4, pseudo, field) {
		binary.BigEndian.PutUint16(l4[field:], sum)
		return true
	}
	return false
}

// sumIsRight reports whether the checksum already in l4 verifies with the
// pseudo-header sum pseudo: a packet whose finished checksum happens to
// equal its pseudo-header sum is left as it is.
func sumIsRight(l4 []byte, pseudo uint32, field int) bool {
	return vswitch.Checksum(l4, pseudo) == 0xffff
}
