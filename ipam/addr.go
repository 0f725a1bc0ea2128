package ipam

import (
	"encoding/binary"
	"math"
	"net/netip"
)

// u128 is an address as a 128-bit number. IPv6 ranges are far larger than
// a uint64 can count, so sizes are computed here and then capped.
type u128 struct{ hi, lo uint64 }

func toU128(a netip.Addr) u128 {
	b := a.As16()
	return u128{hi: binary.BigEndian.Uint64(b[:8]), lo: binary.BigEndian.Uint64(b[8:])}
}

func (x u128) sub(y u128) u128 {
	lo := x.lo - y.lo
	borrow := uint64(0)
	if x.lo < y.lo {
		borrow = 1
	}
	return u128{hi: x.hi - y.hi - borrow, lo: lo}
}

// count returns how many addresses lie in [first, last], capped at
// math.MaxUint64. first must not be after last, and both of one family.
func count(first, last netip.Addr) uint64 {
	d := toU128(last).sub(toU128(first))
	if d.hi != 0 || d.lo == math.MaxUint64 {
		return math.MaxUint64
	}
	return d.lo + 1
}

// lastAddr returns the highest address of p (the IPv4 broadcast address).
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// Gateway returns the gateway address of p: its first usable address,
// where the netstack port answers. It returns the zero Addr for an invalid p.
func Gateway(p netip.Prefix) netip.Addr {
	if !p.IsValid() {
		return netip.Addr{}
	}
	return p.Masked().Addr().Next()
}

// Host returns the host port's (tsw0) address of p: its last usable
// address, which is the one before the broadcast address in IPv4 and the
// last address in IPv6 (which has no broadcast). It returns the zero Addr
// for an invalid p.
func Host(p netip.Prefix) netip.Addr {
	if !p.IsValid() {
		return netip.Addr{}
	}
	if p.Addr().Is4() {
		return lastAddr(p).Prev()
	}
	return lastAddr(p)
}
