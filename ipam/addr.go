package ipam

import (
	"encoding/binary"
	"math"
	"math/bits"
	"net/netip"
)

// u128 is an address, or a number of addresses, as a 128-bit number.
// IPv6 ranges are far larger than a uint64 can count, so range sizes are
// computed here and capped only at the end: capping each term first would
// subtract a capped reserve from a capped range (2^64-1 - 2^64-1 = 0 for
// a /56 with a /64 reserved).
type u128 struct{ hi, lo uint64 }

func toU128(a netip.Addr) u128 {
	b := a.As16()
	return u128{hi: binary.BigEndian.Uint64(b[:8]), lo: binary.BigEndian.Uint64(b[8:])}
}

func (x u128) add(y u128) u128 {
	lo, carry := bits.Add64(x.lo, y.lo, 0)
	hi, _ := bits.Add64(x.hi, y.hi, carry)
	return u128{hi: hi, lo: lo}
}

func (x u128) sub(y u128) u128 {
	lo, borrow := bits.Sub64(x.lo, y.lo, 0)
	hi, _ := bits.Sub64(x.hi, y.hi, borrow)
	return u128{hi: hi, lo: lo}
}

// capped returns x, or math.MaxUint64 if x does not fit a uint64.
func (x u128) capped() uint64 {
	if x.hi != 0 {
		return math.MaxUint64
	}
	return x.lo
}

// count returns how many addresses lie in [first, last]. first must not be
// after last, both of one family, and the range not all of IPv6 (2^128
// does not fit): pod ranges never include the network address.
func count(first, last netip.Addr) u128 {
	return toU128(last).sub(toU128(first)).add(u128{lo: 1})
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
