package ipam

import (
	"net/netip"
	"path/filepath"
	"sync"
	"testing"

	"tapswitch/internal/testutil"
)

// TestConcurrentAllocate runs 1,000 Allocate calls at once on a Bolt store,
// with readers alongside, and checks that all addresses are distinct and
// all leases are on disk.
func TestConcurrentAllocate(t *testing.T) {
	testutil.CheckGoroutines(t) // the package starts none; bbolt neither
	const n = 1000
	path := filepath.Join(t.TempDir(), "ipam.db")
	cfg := Config{V4: pfx("10.244.0.0/22"), V6: pfx("fd00::/64")} // 1020 IPv4 pods
	a, err := New(cfg, openBolt(t, path), nil)
	if err != nil {
		t.Fatal(err)
	}

	leases := make([]Lease, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { leases[i], errs[i] = a.Allocate(key(i)) })
		if i%100 == 0 {
			wg.Go(func() {
				a.List()
				a.InUse()
				a.Get(key(i))
			})
		}
	}
	wg.Wait()

	seen := map[netip.Addr]Key{}
	for i, l := range leases {
		if errs[i] != nil {
			t.Fatalf("Allocate(%s): %v", key(i), errs[i])
		}
		for _, p := range l.IPs {
			if other, dup := seen[p.Addr()]; dup {
				t.Fatalf("%s leased to both %s and %s", p.Addr(), other, key(i))
			}
			seen[p.Addr()] = key(i)
		}
	}
	if v4, v6 := a.InUse(); v4 != n || v6 != n {
		t.Fatalf("InUse() = %d, %d; want %d, %d", v4, v6, n, n)
	}
	before := a.List()
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}

	a = newAllocator(t, cfg, openBolt(t, path))
	if after := a.List(); !leasesEqual(before, after) {
		t.Fatalf("after reopen: %d leases, want the %d allocated", len(after), len(before))
	}
}
