package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"testing"
	"time"
)

// storeKind makes a store for a test. new returns an opener that opens the
// same store again each time, as a restarted daemon does.
type storeKind struct {
	name string
	new  func(t *testing.T) (open func() Store)
}

func storeKinds() []storeKind {
	return []storeKind{
		{"mem", func(t *testing.T) func() Store {
			m := NewMem()
			return func() Store { return m }
		}},
		{"bolt", func(t *testing.T) func() Store {
			path := filepath.Join(t.TempDir(), "ipam.db")
			return func() Store {
				t.Helper()
				b, err := OpenBolt(path, time.Second)
				if err != nil {
					t.Fatalf("OpenBolt: %v", err)
				}
				return b
			}
		}},
	}
}

// forEachStore runs fn as a subtest per store kind.
func forEachStore(t *testing.T, fn func(t *testing.T, open func() Store)) {
	for _, sk := range storeKinds() {
		t.Run(sk.name, func(t *testing.T) { fn(t, sk.new(t)) })
	}
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func addr(s string) netip.Addr  { return netip.MustParseAddr(s) }

func key(i int) Key { return Key{ContainerID: fmt.Sprintf("c%05d", i), IfName: "eth0"} }

// newAllocator calls New and closes the allocator when the test ends.
func newAllocator(t *testing.T, cfg Config, s Store) *Allocator {
	t.Helper()
	a, err := New(cfg, s, nil)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

func mustAllocate(t *testing.T, a *Allocator, k Key) Lease {
	t.Helper()
	l, err := a.Allocate(k)
	if err != nil {
		t.Fatalf("Allocate(%s): %v", k, err)
	}
	return l
}

func mustRelease(t *testing.T, a *Allocator, k Key) {
	t.Helper()
	if _, ok, err := a.Release(k); err != nil || !ok {
		t.Fatalf("Release(%s) = %v, %v; want true, nil", k, ok, err)
	}
}

// ips formats a lease's addresses without prefix lengths.
func ips(l Lease) string {
	s := ""
	for i, p := range l.IPs {
		if i > 0 {
			s += ","
		}
		s += p.Addr().String()
	}
	return s
}

// countingStore counts commits and fails them while fail is set.
type countingStore struct {
	Store
	commits int
	fail    error
}

func (c *countingStore) Commit(ch Change) error {
	if c.fail != nil {
		return c.fail
	}
	c.commits++
	return c.Store.Commit(ch)
}

// errSyncFailed is lateFailStore's commit error.
var errSyncFailed = errors.New("fdatasync: input/output error")

// lateFailStore applies a commit and then reports it failed, as bbolt does
// when the sync after its meta page write fails: the transaction is
// rolled back, but later transactions read the meta page it wrote.
type lateFailStore struct {
	Store
	failCommit bool // apply, then return errSyncFailed
	failLoad   bool // Load fails
}

func (s *lateFailStore) Commit(c Change) error {
	if err := s.Store.Commit(c); err != nil {
		return err
	}
	if s.failCommit {
		return errSyncFailed
	}
	return nil
}

func (s *lateFailStore) Load() (*State, error) {
	if s.failLoad {
		return nil, errors.New("ipam: store (test): read: input/output error")
	}
	return s.Store.Load()
}

// storedLease returns key's lease as s holds it.
func storedLease(t *testing.T, s Store, k Key) (Lease, bool) {
	t.Helper()
	st, err := s.Load()
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	for _, l := range st.Leases {
		if l.Key == k {
			return l, true
		}
	}
	return Lease{}, false
}
