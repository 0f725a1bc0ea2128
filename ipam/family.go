package ipam

import (
	"fmt"
	"math"
	"net/netip"
	"slices"
)

// family is the pod range of one CIDR: the layout, the reserved ranges and
// which addresses are in use.
type family struct {
	// Set by newFamily, never changed.
	prefix      netip.Prefix
	first, last netip.Addr // pod addresses, inclusive: after the gateway, before the host port
	reserve     []Range    // Config.Reserve clipped to [first, last], sorted, merged
	size        uint64     // pod addresses outside reserve, capped at MaxUint64 (then never exhausted)

	// Guarded by the Allocator's mu.
	used      map[netip.Addr]Key // every lease's address
	inReserve int                // leases in used whose address lies in reserve
	cursor    netip.Addr         // the address handed out last; zero: none yet
}

// newFamily lays out a validated CIDR. reserve may hold ranges of the other
// family or outside the pod addresses; those are dropped.
func newFamily(p netip.Prefix, reserve []Range) *family {
	f := &family{
		prefix: p,
		first:  Gateway(p).Next(),
		last:   Host(p).Prev(),
		used:   make(map[netip.Addr]Key),
	}
	var rs []Range
	for _, r := range reserve {
		if r.First.BitLen() != p.Addr().BitLen() || r.Last.Less(f.first) || f.last.Less(r.First) {
			continue
		}
		rs = append(rs, Range{First: maxAddr(r.First, f.first), Last: minAddr(r.Last, f.last)})
	}
	f.reserve = mergeRanges(rs)
	// In 128 bits, capped only at the end: the merged reserve ranges lie
	// inside [first, last] without overlap, so the difference is exact.
	size := count(f.first, f.last)
	for _, r := range f.reserve {
		size = size.sub(count(r.First, r.Last))
	}
	f.size = size.capped()
	return f
}

// blank returns a family with f's layout and nothing in use.
func (f *family) blank() *family {
	return &family{prefix: f.prefix, first: f.first, last: f.last, reserve: f.reserve, size: f.size, used: make(map[netip.Addr]Key)}
}

// setState takes g's leases and cursor; g has f's layout.
func (f *family) setState(g *family) {
	f.used, f.inReserve, f.cursor = g.used, g.inReserve, g.cursor
}

func maxAddr(a, b netip.Addr) netip.Addr {
	if a.Less(b) {
		return b
	}
	return a
}

func minAddr(a, b netip.Addr) netip.Addr {
	if a.Less(b) {
		return a
	}
	return b
}

// mergeRanges sorts rs and joins ranges that overlap or touch, so every
// address is counted once and a search skips each gap in one step.
func mergeRanges(rs []Range) []Range {
	slices.SortFunc(rs, func(a, b Range) int { return a.First.Compare(b.First) })
	var out []Range
	for _, r := range rs {
		if n := len(out); n > 0 && !out[n-1].Last.Next().Less(r.First) {
			out[n-1].Last = maxAddr(out[n-1].Last, r.Last)
			continue
		}
		out = append(out, r)
	}
	return out
}

// reserved returns the reserve range holding a, if any.
func (f *family) reserved(a netip.Addr) (Range, bool) {
	i, _ := slices.BinarySearchFunc(f.reserve, a, func(r Range, a netip.Addr) int {
		return r.Last.Compare(a) // finds the first range ending at or after a
	})
	if i < len(f.reserve) && f.reserve[i].Contains(a) {
		return f.reserve[i], true
	}
	return Range{}, false
}

// inPods reports whether a is a pod address of f (reserved or not).
func (f *family) inPods(a netip.Addr) bool {
	return a.BitLen() == f.first.BitLen() && !a.Less(f.first) && !f.last.Less(a)
}

// podsInUse counts the leases that take an address out of size.
func (f *family) podsInUse() uint64 { return uint64(len(f.used) - f.inReserve) }

// after returns the pod address after a, wrapping from last to first.
func (f *family) after(a netip.Addr) netip.Addr {
	if !a.Less(f.last) {
		return f.first
	}
	return a.Next()
}

// pick returns the next free address after the cursor, as host-local does:
// a released address comes back only once the search wraps. It changes
// nothing; the caller records the address once it is committed.
//
// It never walks the whole range (2^64 addresses in a /64): each step
// either returns, skips one used address or skips one reserve range, and a
// free address exists, so it returns within one lap, after at most
// len(used) + len(reserve) + 1 skips.
func (f *family) pick() (netip.Addr, error) {
	inUse := f.podsInUse()
	// A capped size stands for 2^64 or more addresses, more than a map
	// can hold leases: never exhausted.
	if f.size < math.MaxUint64 && inUse >= f.size {
		return netip.Addr{}, fmt.Errorf("ipam: %s: %w (%d of %d in use)", f.prefix, ErrExhausted, inUse, f.size)
	}
	a := f.first
	if f.cursor.IsValid() {
		a = f.after(f.cursor)
	}
	for range len(f.used) + len(f.reserve) + 2 {
		if r, ok := f.reserved(a); ok {
			a = f.after(r.Last)
			continue
		}
		if _, taken := f.used[a]; taken {
			a = f.after(a)
			continue
		}
		return a, nil
	}
	return netip.Addr{}, fmt.Errorf("ipam: %s: bug: no free address found although %d of %d are in use", f.prefix, inUse, f.size)
}

// add records a's lease.
func (f *family) add(a netip.Addr, k Key) {
	f.used[a] = k
	if _, ok := f.reserved(a); ok {
		f.inReserve++
	}
}

// remove forgets a's lease.
func (f *family) remove(a netip.Addr) {
	delete(f.used, a)
	if _, ok := f.reserved(a); ok {
		f.inReserve--
	}
}
