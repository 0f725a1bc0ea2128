package ipam

import "net/netip"

// Store persists leases. Implementations: Bolt (disk) and Mem (memory, for
// tests).
//
// The Allocator calls a Store's methods one at a time, never
// concurrently, and owns it once New succeeded. Both implementations are
// nevertheless safe for concurrent use.
type Store interface {
	// Load returns the saved config stamp (nil if the store is new),
	// leases and rotation cursors. Every record is decoded and checked;
	// a record that does not decode is an error naming the store, never
	// skipped.
	Load() (*State, error)
	// Commit applies one change atomically and durably (one bbolt
	// transaction): the stamp if new, put/delete leases, cursors. After an
	// error c may be applied whole or not at all: bbolt reports a failed
	// sync after writing its meta page, which later reads see. The
	// Allocator reloads after an error.
	Commit(c Change) error
	Close() error
}

// Stamp records which CIDRs a store's leases belong to, so a daemon
// started with other CIDRs refuses to run instead of re-numbering pods.
type Stamp struct {
	V4 netip.Prefix `json:"v4"`
	V6 netip.Prefix `json:"v6,omitzero"` // zero: IPv4 only
}

// State is a store's content.
type State struct {
	Stamp   *Stamp     // nil: a new store, never committed to
	Leases  []Lease    // sorted by key
	Cursor4 netip.Addr // the IPv4 address handed out last; zero: none yet
	Cursor6 netip.Addr // the IPv6 address handed out last; zero: none yet
}

// Change is what one Commit writes.
type Change struct {
	Stamp   *Stamp     // non-nil: write the stamp (the first commit to a new store)
	Put     []Lease    // leases to add or replace
	Delete  []Key      // leases to remove; unknown keys are ignored
	Cursor4 netip.Addr // zero: unchanged
	Cursor6 netip.Addr // zero: unchanged
}
