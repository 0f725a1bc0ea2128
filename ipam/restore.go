package ipam

import (
	"errors"
	"fmt"
)

// restore checks a loaded store against the configuration and fills the
// in-memory indexes. Any inconsistency is an error naming the store: a
// lease that does not fit could be handed out twice, so nothing is
// skipped or repaired.
func (a *Allocator) restore(st *State) error {
	if st.Stamp == nil {
		return nil // a new store; decodeState made sure it holds nothing
	}
	want := a.stamp()
	if *st.Stamp != *want {
		return fmt.Errorf("ipam: store %s holds leases for %s, not %s: refusing to re-number pods; start with the old %s or move the store away",
			a.name, cidrs(st.Stamp.V4, st.Stamp.V6), cidrs(want.V4, want.V6), changedFlags(*st.Stamp, *want))
	}
	a.stamped = true
	for _, l := range st.Leases {
		if err := a.restoreLease(l); err != nil {
			return fmt.Errorf("ipam: store %s: lease %s: %w", a.name, l.Key, err)
		}
	}
	if err := a.restoreCursors(st); err != nil {
		return fmt.Errorf("ipam: store %s: %w", a.name, err)
	}
	return nil
}

// changedFlags names the daemon flags whose CIDR differs, for the
// refusal's advice.
func changedFlags(have, want Stamp) string {
	switch {
	case have.V4 != want.V4 && have.V6 != want.V6:
		return "--pod-cidr and --pod-cidr6"
	case have.V4 != want.V4:
		return "--pod-cidr"
	}
	return "--pod-cidr6"
}

func (a *Allocator) restoreLease(l Lease) error {
	fams := a.families()
	if len(l.IPs) != len(fams) {
		return fmt.Errorf("has %d addresses, want %d", len(l.IPs), len(fams))
	}
	if _, dup := a.leases[l.Key]; dup {
		return errors.New("stored twice")
	}
	for i, f := range fams {
		p := l.IPs[i]
		if p.Bits() != f.prefix.Bits() || !f.inPods(p.Addr()) {
			return fmt.Errorf("address %s is not a pod address of %s", p, f.prefix)
		}
		if other, taken := f.used[p.Addr()]; taken {
			return fmt.Errorf("address %s is also leased to %s", p.Addr(), other)
		}
	}
	a.add(l)
	return nil
}

func (a *Allocator) restoreCursors(st *State) error {
	if c := st.Cursor4; c.IsValid() {
		if !a.v4.inPods(c) {
			return fmt.Errorf("cursor %s is not a pod address of %s", c, a.v4.prefix)
		}
		a.v4.cursor = c
	}
	if c := st.Cursor6; c.IsValid() {
		if a.v6 == nil || !a.v6.inPods(c) {
			return fmt.Errorf("cursor %s is not a pod address of %s", c, cidrs(a.v4.prefix, a.stamp().V6))
		}
		a.v6.cursor = c
	}
	return nil
}
