package overlay

import (
	"encoding/binary"

	vswitch "tapswitch/switch"
)

// VXLAN header layout (RFC 7348 section 5).
const (
	hdrLen = 8
	flagI  = 0x08 // the I flag: the VNI is valid
	maxVNI = 1<<24 - 1
)

// header is a view of a VXLAN header. It never copies.
type header []byte

func (h header) flags() byte { return h[0] }

// vni returns the 24-bit VNI in bytes 4-6.
func (h header) vni() uint32 { return binary.BigEndian.Uint32(h[4:8]) >> 8 }

// putHeader writes a VXLAN header for vni into b[:hdrLen]: the I flag,
// the VNI, and zero in every reserved field.
func putHeader(b []byte, vni uint32) {
	h := b[:hdrLen]
	h[0], h[1], h[2], h[3] = flagI, 0, 0, 0
	binary.BigEndian.PutUint32(h[4:8], vni<<8)
}

// dropReason says why a packet or frame was dropped; each names a counter
// (see the package documentation).
type dropReason uint8

const (
	rxUnknownSource dropReason = iota
	rxShort
	rxBadFlags
	rxWrongVNI
	rxTooBig
	rxNotOurs
	rxNotIP
	txBadFrame
	txUnknownVTEP
	txQueueFull
	txError
	numDropReasons

	// accepted is what checkPacket returns for a packet it accepts.
	accepted = numDropReasons
)

var dropNames = [numDropReasons]string{
	rxUnknownSource: "rx_unknown_source",
	rxShort:         "rx_short",
	rxBadFlags:      "rx_bad_flags",
	rxWrongVNI:      "rx_wrong_vni",
	rxTooBig:        "rx_too_big",
	rxNotOurs:       "rx_not_ours",
	rxNotIP:         "rx_not_ip",
	txBadFrame:      "tx_bad_frame",
	txUnknownVTEP:   "tx_unknown_vtep",
	txQueueFull:     "tx_queue_full",
	txError:         "tx_error",
}

func (r dropReason) String() string {
	if r < numDropReasons {
		return dropNames[r]
	}
	return "accepted"
}

// checkPacket checks a received UDP payload, a VXLAN header and the inner
// frame, and returns the first reason to drop it or accepted. The inner
// frame must be at most maxFrame bytes, belong to vni and be an IP frame
// for vtepMAC. The source address is checked before, by the caller.
func checkPacket(pkt []byte, vni uint32, vtepMAC vswitch.MAC, maxFrame int) dropReason {
	if len(pkt) < hdrLen+vswitch.EtherHdrLen {
		return rxShort
	}
	h := header(pkt[:hdrLen])
	switch {
	// Only the I flag is required; RFC 7348 says receivers ignore the
	// reserved bits.
	case h.flags()&flagI == 0:
		return rxBadFlags
	case h.vni() != vni:
		return rxWrongVNI
	case len(pkt)-hdrLen > maxFrame:
		return rxTooBig
	}
	e := vswitch.Ether(pkt[hdrLen:])
	if e.Dst() != vtepMAC {
		return rxNotOurs
	}
	if t := e.Type(); t != vswitch.EtherTypeIP4 && t != vswitch.EtherTypeIP6 {
		return rxNotIP
	}
	return accepted
}
