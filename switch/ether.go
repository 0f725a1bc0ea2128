package vswitch

import (
	"encoding/binary"
	"fmt"
	"net"
)

// MAC is an Ethernet address. It is a comparable value, so it keys maps on
// the frame path without allocating.
type MAC [6]byte

// Broadcast is ff:ff:ff:ff:ff:ff.
var Broadcast = MAC{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// ParseMAC parses the 6-byte forms net.ParseMAC accepts.
func ParseMAC(s string) (MAC, error) {
	hw, err := net.ParseMAC(s)
	if err != nil {
		return MAC{}, err
	}
	if len(hw) != 6 {
		return MAC{}, fmt.Errorf("mac %q: want 6 bytes, have %d", s, len(hw))
	}
	return MAC(hw), nil
}

// Multicast reports whether the I/G bit is set (broadcast included).
func (m MAC) Multicast() bool { return m[0]&1 != 0 }

// Zero reports whether m is 00:00:00:00:00:00.
func (m MAC) Zero() bool { return m == MAC{} }

func (m MAC) String() string { return net.HardwareAddr(m[:]).String() }

// MarshalText implements encoding.TextMarshaler, so a MAC is a string in JSON.
func (m MAC) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (m *MAC) UnmarshalText(b []byte) error {
	v, err := ParseMAC(string(b))
	if err != nil {
		return err
	}
	*m = v
	return nil
}

// Ethernet header layout (IEEE 802.3).
const (
	EtherHdrLen  = 14
	EtherTypeARP = 0x0806
	EtherTypeIP4 = 0x0800
	EtherTypeIP6 = 0x86dd
)

// Ether is a view of an Ethernet frame. It never copies.
type Ether []byte

func (e Ether) Dst() MAC         { return MAC(e[0:6]) }
func (e Ether) Src() MAC         { return MAC(e[6:12]) }
func (e Ether) Type() uint16     { return binary.BigEndian.Uint16(e[12:14]) }
func (e Ether) Payload() []byte  { return e[EtherHdrLen:] }
func (e Ether) SetDst(m MAC)     { copy(e[0:6], m[:]) }
func (e Ether) SetSrc(m MAC)     { copy(e[6:12], m[:]) }
func (e Ether) SetType(t uint16) { binary.BigEndian.PutUint16(e[12:14], t) }
