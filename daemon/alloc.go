package daemon

import (
	"errors"
	"fmt"
	"net/netip"
)

// ErrExhausted is returned when a pod CIDR has no free address.
var ErrExhausted = errors.New("no free address")

// addrRange hands out the pod addresses of one CIDR, in memory. The first
// usable address is the gateway, the last usable one (in IPv6 the last
// address) is the host port, and the rest go to pods. Allocation rotates through the range, so a
// released address is reused only when the range wraps.
//
// It is not safe for concurrent use; the daemon serializes calls.
type addrRange struct {
	prefix      netip.Prefix
	gateway     netip.Addr
	host        netip.Addr // the host port tsw0
	first, last netip.Addr // pod addresses, inclusive
	next        netip.Addr
	used        map[netip.Addr]string // address → pod ID
	size        uint64                // pod addresses in the range, capped
}

// newAddrRange validates prefix and lays out its addresses.
func newAddrRange(prefix netip.Prefix) (*addrRange, error) {
	if !prefix.IsValid() {
		return nil, fmt.Errorf("invalid cidr")
	}
	if prefix != prefix.Masked() {
		return nil, fmt.Errorf("cidr %s has host bits set (did you mean %s?)", prefix, prefix.Masked())
	}
	bits := prefix.Addr().BitLen() - prefix.Bits()
	r := &addrRange{prefix: prefix, used: make(map[netip.Addr]string)}
	network := prefix.Addr()
	r.gateway = network.Next()
	if prefix.Addr().Is4() {
		if bits < 3 {
			return nil, fmt.Errorf("cidr %s is too small: need /29 or larger for gateway, host port and pods", prefix)
		}
		bcast := lastAddr(prefix)
		r.host = bcast.Prev()
		r.first, r.last = r.gateway.Next(), r.host.Prev()
		r.size = 1<<bits - 4
	} else {
		if bits < 3 {
			return nil, fmt.Errorf("cidr %s is too small: need /125 or larger", prefix)
		}
		r.host = lastAddr(prefix)
		r.first, r.last = r.gateway.Next(), r.host.Prev()
		r.size = 1<<min(bits, 63) - 3
	}
	r.next = r.first
	return r, nil
}

// lastAddr returns the highest address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// allocate gives id the next free address.
func (r *addrRange) allocate(id string) (netip.Prefix, error) {
	if uint64(len(r.used)) >= r.size {
		return netip.Prefix{}, fmt.Errorf("pod cidr %s exhausted: %d of %d addresses in use: %w", r.prefix, len(r.used), r.size, ErrExhausted)
	}
	for a := r.next; ; {
		if _, taken := r.used[a]; !taken {
			r.used[a] = id
			r.next = r.advance(a)
			return netip.PrefixFrom(a, r.prefix.Bits()), nil
		}
		a = r.advance(a)
	}
}

func (r *addrRange) advance(a netip.Addr) netip.Addr {
	if a == r.last {
		return r.first
	}
	return a.Next()
}

// reserve marks a known address as used, as when state is loaded.
func (r *addrRange) reserve(a netip.Addr, id string) error {
	if a.Less(r.first) || r.last.Less(a) {
		return fmt.Errorf("address %s is not a pod address of %s", a, r.prefix)
	}
	if owner, taken := r.used[a]; taken && owner != id {
		return fmt.Errorf("address %s is used by both %s and %s", a, owner, id)
	}
	r.used[a] = id
	return nil
}

func (r *addrRange) release(a netip.Addr) { delete(r.used, a) }
