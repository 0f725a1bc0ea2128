package tap

import (
	"encoding/binary"
	"fmt"

	vswitch "tapswitch/switch"
)

// The virtio-net header in front of every frame on a TAP fd with
// IFF_VNET_HDR: struct virtio_net_hdr_v1 from include/uapi/linux/virtio_net.h,
// little-endian (TUNSETVNETLE):
//
//	0  flags        u8
//	1  gso_type     u8
//	2  hdr_len      le16
//	4  gso_size     le16
//	6  csum_start   le16
//	8  csum_offset  le16
//	10 num_buffers  le16  (mergeable rx buffers only; we write 0, ignore it)
const vnetHdrLen = 12

// Flags (VIRTIO_NET_HDR_F_*).
const (
	vnetFlagNeedsCsum = 1 // VIRTIO_NET_HDR_F_NEEDS_CSUM
	vnetFlagDataValid = 2 // VIRTIO_NET_HDR_F_DATA_VALID
)

// GSO types (VIRTIO_NET_HDR_GSO_*).
const (
	vnetGSONone  = 0    // VIRTIO_NET_HDR_GSO_NONE
	vnetGSOTCPv4 = 1    // VIRTIO_NET_HDR_GSO_TCPV4
	vnetGSOUDP   = 3    // VIRTIO_NET_HDR_GSO_UDP: UFO, which we never offer
	vnetGSOTCPv6 = 4    // VIRTIO_NET_HDR_GSO_TCPV6
	vnetGSOUDPL4 = 5    // VIRTIO_NET_HDR_GSO_UDP_L4 (USO)
	vnetGSOECN   = 0x80 // VIRTIO_NET_HDR_GSO_ECN: TCP with CWR; we never offer TUN_F_TSO_ECN
)

// decodeVnetHdr decodes the header at the start of b. It fails on a short b
// and on what vswitch.Offload cannot carry: unknown flags, unknown GSO
// types, UFO and the ECN bit. The kernel sends none of these to us, as we
// do not offer them with TUNSETOFFLOAD, so such a frame is dropped.
func decodeVnetHdr(b []byte) (vswitch.Offload, error) {
	if len(b) < vnetHdrLen {
		return vswitch.Offload{}, fmt.Errorf("vnet header: %d bytes, want %d", len(b), vnetHdrLen)
	}
	flags, gso := b[0], b[1]
	if flags&^(vnetFlagNeedsCsum|vnetFlagDataValid) != 0 {
		return vswitch.Offload{}, fmt.Errorf("vnet header: unknown flags %#x", flags)
	}
	o := vswitch.Offload{
		NeedsCsum:  flags&vnetFlagNeedsCsum != 0,
		DataValid:  flags&vnetFlagDataValid != 0,
		HdrLen:     binary.LittleEndian.Uint16(b[2:4]),
		GSOSize:    binary.LittleEndian.Uint16(b[4:6]),
		CsumStart:  binary.LittleEndian.Uint16(b[6:8]),
		CsumOffset: binary.LittleEndian.Uint16(b[8:10]),
	}
	switch gso {
	case vnetGSONone:
		o.GSOType = vswitch.GSONone
	case vnetGSOTCPv4:
		o.GSOType = vswitch.GSOTCPv4
	case vnetGSOTCPv6:
		o.GSOType = vswitch.GSOTCPv6
	case vnetGSOUDPL4:
		o.GSOType = vswitch.GSOUDPL4
	default:
		return vswitch.Offload{}, fmt.Errorf("vnet header: unsupported gso type %#x", gso)
	}
	return o, nil
}

// encodeVnetHdr writes o as a header into b[:vnetHdrLen]. It fails, writing
// nothing, on a GSO type the header cannot express. It panics if b is
// shorter than vnetHdrLen, as a slice expression would.
func encodeVnetHdr(b []byte, o vswitch.Offload) error {
	var gso byte
	switch o.GSOType {
	case vswitch.GSONone:
		gso = vnetGSONone
	case vswitch.GSOTCPv4:
		gso = vnetGSOTCPv4
	case vswitch.GSOTCPv6:
		gso = vnetGSOTCPv6
	case vswitch.GSOUDPL4:
		gso = vnetGSOUDPL4
	default:
		return fmt.Errorf("vnet header: unknown gso type %d", o.GSOType)
	}
	b = b[:vnetHdrLen]
	var flags byte
	if o.NeedsCsum {
		flags |= vnetFlagNeedsCsum
	}
	if o.DataValid {
		flags |= vnetFlagDataValid
	}
	b[0], b[1] = flags, gso
	binary.LittleEndian.PutUint16(b[2:4], o.HdrLen)
	binary.LittleEndian.PutUint16(b[4:6], o.GSOSize)
	binary.LittleEndian.PutUint16(b[6:8], o.CsumStart)
	binary.LittleEndian.PutUint16(b[8:10], o.CsumOffset)
	binary.LittleEndian.PutUint16(b[10:12], 0)
	return nil
}
