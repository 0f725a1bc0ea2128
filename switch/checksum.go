package vswitch

import "encoding/binary"

// Checksum returns the 16-bit ones' complement sum of b (RFC 1071), added
// to initial, not yet inverted.
func Checksum(b []byte, initial uint32) uint16 {
	sum := uint64(initial)
	for len(b) >= 8 {
		v := binary.BigEndian.Uint64(b)
		sum += v >> 32
		sum += v & 0xffffffff
		b = b[8:]
	}
	for len(b) >= 2 {
		sum += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint64(b[0]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return uint16(sum)
}

// CompleteChecksum finishes a checksum a sender left to the hardware
// (Offload.NeedsCsum), as the kernel's skb_checksum_help does: the field at
// CsumStart+CsumOffset already holds the pseudo-header sum, so the sum from
// CsumStart to the end, inverted, is the checksum. It reports false if the
// offsets do not fit the frame, or start inside the Ethernet header: a
// checksum written there would rewrite the MAC addresses the switch
// checked and forwarded by.
func CompleteChecksum(f *Frame) bool {
	b := f.Bytes()
	start, field := int(f.Offload.CsumStart), int(f.Offload.CsumStart)+int(f.Offload.CsumOffset)
	if start < EtherHdrLen || start >= len(b) || field+2 > len(b) {
		return false
	}
	sum := ^Checksum(b[start:], 0)
	if sum == 0 && f.Offload.CsumOffset == 6 {
		// UDP transmits a computed zero as all ones (RFC 768).
		sum = 0xffff
	}
	binary.BigEndian.PutUint16(b[field:], sum)
	f.Offload.NeedsCsum = false
	f.Offload.CsumStart, f.Offload.CsumOffset = 0, 0
	return true
}
