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
	if binary.BigEndian.Uint16(l4[field:]) != partial {
		return false
	}
	// One pass: v is the sum of the pseudo-header, the data and the
	// field. All ones means the checksum was right already (and only
	// happened to equal the pseudo-header sum); else taking the field's
	// value back out leaves pseudo-header and data, whose complement is
	// the checksum.
	v := vswitch.Checksum(l4, pseudo)
	if v == 0xffff {
		return false
	}
	rest := uint32(v) + uint32(^partial)
	rest = rest&0xffff + rest>>16
	sum := ^uint16(rest&0xffff + rest>>16)
	if proto == vswitch.ProtoUDP && sum == 0 {
		sum = 0xffff // RFC 768
	}
	binary.BigEndian.PutUint16(l4[field:], sum)
	return true
}
