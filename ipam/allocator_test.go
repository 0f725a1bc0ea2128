package ipam

import (
	"errors"
	"math"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestAllocator(t *testing.T) {
	tests := []struct {
		name string
		run  func(t *testing.T, open func() Store)
	}{
		{"reservation", testReservation},
		{"rotation", testRotation},
		{"exhaustion", testExhaustion},
		{"dual-stack", testDualStack},
		{"dual-stack partial failure", testDualStackPartial},
		{"ipv6 /64", testIPv6Large},
		{"idempotency", testIdempotency},
		{"release unknown", testReleaseUnknown},
		{"gc", testGC},
		{"invalid key", testInvalidKey},
		{"failed commit", testFailedCommit},
		{"failed commit applied", testFailedCommitApplied},
		{"failed commit and reload", testFailedReload},
		{"reserve added later", testReserveAddedLater},
		{"closed", testClosed},
		{"adopt", testAdopt},
		{"adopt into a new store", testAdoptNewStore},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { forEachStore(t, tt.run) })
	}
}

// testReservation allocates a whole dual-stack range and checks that no
// reserved address was handed out.
func testReservation(t *testing.T, open func() Store) {
	cfg := Config{
		V4: pfx("10.0.0.0/28"), // .0 network, .1 gateway, .14 host, .15 broadcast
		V6: pfx("fd00::/124"),  // ::0 network, ::1 gateway, ::f host
		Reserve: []Range{
			{addr("10.0.0.5"), addr("10.0.0.5")},
			{addr("10.0.0.8"), addr("10.0.0.9")},
			{addr("10.0.0.12"), addr("10.0.0.15")}, // overlaps host and broadcast
			{addr("fd00::4"), addr("fd00::4")},
		},
	}
	a := newAllocator(t, cfg, open())
	if v4, v6 := a.Size(); v4 != 7 || v6 != 12 {
		t.Fatalf("Size() = %d, %d; want 7, 12", v4, v6)
	}
	reserved := map[netip.Addr]bool{}
	for _, s := range []string{"10.0.0.0", "10.0.0.1", "10.0.0.5", "10.0.0.8", "10.0.0.9",
		"10.0.0.12", "10.0.0.13", "10.0.0.14", "10.0.0.15", "fd00::", "fd00::1", "fd00::4", "fd00::f"} {
		reserved[addr(s)] = true
	}
	seen := map[netip.Addr]Key{}
	for i := 0; ; i++ {
		l, err := a.Allocate(key(i))
		if errors.Is(err, ErrExhausted) {
			if i != 7 {
				t.Fatalf("exhausted after %d leases, want 7", i)
			}
			break
		}
		if err != nil {
			t.Fatalf("Allocate(%s): %v", key(i), err)
		}
		for _, p := range l.IPs {
			if reserved[p.Addr()] {
				t.Errorf("Allocate(%s) = %s, a reserved address", key(i), p)
			}
			if other, dup := seen[p.Addr()]; dup {
				t.Errorf("Allocate(%s) = %s, already leased to %s", key(i), p, other)
			}
			seen[p.Addr()] = key(i)
		}
	}
}

func testRotation(t *testing.T, open func() Store) {
	a := newAllocator(t, Config{V4: pfx("10.0.0.0/29")}, open()) // pods .2 to .5
	steps := []struct {
		op   string // "a" allocate, "r" release
		key  int
		want string
	}{
		{"a", 1, "10.0.0.2"},
		{"a", 2, "10.0.0.3"},
		{"r", 1, ""},
		{"a", 3, "10.0.0.4"}, // not .2: released addresses wait for the wrap
		{"a", 4, "10.0.0.5"},
		{"a", 5, "10.0.0.2"}, // wrapped
		{"r", 3, ""},
		{"a", 6, "10.0.0.4"}, // .3 is still used: skipped
	}
	for _, s := range steps {
		if s.op == "r" {
			mustRelease(t, a, key(s.key))
			continue
		}
		if l := mustAllocate(t, a, key(s.key)); ips(l) != s.want {
			t.Fatalf("Allocate(%s) = %s, want %s", key(s.key), ips(l), s.want)
		}
	}
}

func testExhaustion(t *testing.T, open func() Store) {
	cfg := Config{V4: pfx("10.244.0.0/29"), Reserve: []Range{{addr("10.244.0.3"), addr("10.244.0.3")}}}
	a := newAllocator(t, cfg, open())
	for i := range 3 {
		mustAllocate(t, a, key(i))
	}
	_, err := a.Allocate(key(3))
	if !errors.Is(err, ErrExhausted) {
		t.Fatalf("Allocate(4th) = %v, want ErrExhausted", err)
	}
	const want = "ipam: 10.244.0.0/29: no free address (3 of 3 in use)"
	if err.Error() != want {
		t.Fatalf("Allocate(4th) error = %q, want %q", err, want)
	}
	// Freeing one makes room again.
	mustRelease(t, a, key(1))
	if l := mustAllocate(t, a, key(3)); ips(l) != "10.244.0.4" {
		t.Fatalf("Allocate after release = %s, want 10.244.0.4", ips(l))
	}
}

func testDualStack(t *testing.T, open func() Store) {
	a := newAllocator(t, Config{V4: pfx("10.244.0.0/24"), V6: pfx("fd00:10:244::/64")}, open())
	l := mustAllocate(t, a, key(1))
	want := []netip.Prefix{pfx("10.244.0.2/24"), pfx("fd00:10:244::2/64")}
	if !slices.Equal(l.IPs, want) {
		t.Fatalf("Allocate = %v, want %v", l.IPs, want)
	}
	if l.Since.IsZero() || l.Since.Location().String() != "UTC" {
		t.Errorf("Since = %v, want a UTC time", l.Since)
	}
	if v4, v6 := a.InUse(); v4 != 1 || v6 != 1 {
		t.Errorf("InUse() = %d, %d; want 1, 1", v4, v6)
	}
	if v4, v6 := a.Size(); v4 != 252 || v6 != math.MaxUint64-2 {
		t.Errorf("Size() = %d, %d; want 252, 2^64-3", v4, v6)
	}
	if v4, v6 := a.Free(); v4 != 251 || v6 != math.MaxUint64-3 {
		t.Errorf("Free() = %d, %d; want 251, 2^64-4", v4, v6)
	}
}

// testDualStackPartial exhausts IPv6 before IPv4: the failing Allocate
// must take neither address nor move either cursor.
func testDualStackPartial(t *testing.T, open func() Store) {
	s := open()
	a := newAllocator(t, Config{V4: pfx("10.0.0.0/28"), V6: pfx("fd00::/125")}, s) // 12 and 5 pods
	for i := range 5 {
		mustAllocate(t, a, key(i))
	}
	_, err := a.Allocate(key(5))
	if !errors.Is(err, ErrExhausted) || err.Error() != "ipam: fd00::/125: no free address (5 of 5 in use)" {
		t.Fatalf("Allocate(6th) = %v, want IPv6 exhausted", err)
	}
	if v4, v6 := a.InUse(); v4 != 5 || v6 != 5 {
		t.Errorf("InUse() = %d, %d; want 5, 5", v4, v6)
	}
	if _, ok := a.Get(key(5)); ok {
		t.Errorf("Get(6th) found a lease after a failed Allocate")
	}
	st, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Leases) != 5 || st.Cursor4 != addr("10.0.0.6") {
		t.Errorf("store has %d leases, cursor4 %s; want 5, 10.0.0.6", len(st.Leases), st.Cursor4)
	}
	mustRelease(t, a, key(0))
	if l := mustAllocate(t, a, key(5)); ips(l) != "10.0.0.7,fd00::2" {
		t.Errorf("Allocate after release = %s, want 10.0.0.7,fd00::2", ips(l))
	}
}

// testIPv6Large checks that a /64 with a large reserve range is searched,
// not enumerated.
func testIPv6Large(t *testing.T, open func() Store) {
	cfg := Config{
		V4:      pfx("10.0.0.0/16"),
		V6:      pfx("fd00::/64"),
		Reserve: []Range{{addr("fd00::2"), addr("fd00::ffff:ffff")}},
	}
	a := newAllocator(t, cfg, open())
	if l := mustAllocate(t, a, key(1)); ips(l) != "10.0.0.2,fd00::1:0:0" {
		t.Fatalf("Allocate = %s, want 10.0.0.2,fd00::1:0:0", ips(l))
	}
	if _, v6 := a.Size(); v6 != math.MaxUint64-2-0xffff_fffe {
		t.Errorf("Size() v6 = %d, want 2^64-3-(2^32-2)", v6)
	}
}

func testIdempotency(t *testing.T, open func() Store) {
	cs := &countingStore{Store: open()}
	a := newAllocator(t, Config{V4: pfx("10.0.0.0/24"), V6: pfx("fd00::/64")}, cs)
	first := mustAllocate(t, a, key(1))
	again := mustAllocate(t, a, key(1))
	if !slices.Equal(first.IPs, again.IPs) || !first.Since.Equal(again.Since) {
		t.Fatalf("Allocate twice = %v then %v, want the same lease", first, again)
	}
	if cs.commits != 1 {
		t.Errorf("commits = %d, want 1", cs.commits)
	}
	// Another interface of the same container is another attachment.
	other := mustAllocate(t, a, Key{ContainerID: key(1).ContainerID, IfName: "net1"})
	if slices.Equal(other.IPs, first.IPs) {
		t.Errorf("Allocate(net1) = %v, same as eth0", other.IPs)
	}
	// A returned lease is a copy.
	first.IPs[0] = pfx("1.2.3.4/24")
	if l, _ := a.Get(key(1)); l.IPs[0] == first.IPs[0] {
		t.Errorf("changing a returned lease changed the allocator's")
	}
}

func testReleaseUnknown(t *testing.T, open func() Store) {
	cs := &countingStore{Store: open()}
	a := newAllocator(t, Config{V4: pfx("10.0.0.0/24")}, cs)
	l, ok, err := a.Release(key(1))
	if err != nil || ok || l.IPs != nil {
		t.Fatalf("Release(unknown) = %v, %v, %v; want zero, false, nil", l, ok, err)
	}
	mustAllocate(t, a, key(1))
	mustRelease(t, a, key(1))
	if _, ok, err := a.Release(key(1)); err != nil || ok {
		t.Fatalf("second Release = %v, %v; want false, nil", ok, err)
	}
	if cs.commits != 2 {
		t.Errorf("commits = %d, want 2", cs.commits)
	}
}

func testGC(t *testing.T, open func() Store) {
	s := open()
	cs := &countingStore{Store: s}
	a := newAllocator(t, Config{V4: pfx("10.0.0.0/24")}, cs)
	for i := range 5 {
		mustAllocate(t, a, key(i))
	}
	gone, err := a.GC([]Key{key(1), key(3), key(9)})
	if err != nil {
		t.Fatalf("GC: %v", err)
	}
	var goneKeys []Key
	for _, l := range gone {
		goneKeys = append(goneKeys, l.Key)
	}
	if want := []Key{key(0), key(2), key(4)}; !slices.Equal(goneKeys, want) {
		t.Fatalf("GC released %v, want %v", goneKeys, want)
	}
	if cs.commits != 6 {
		t.Errorf("commits = %d, want 6 (5 allocations, 1 GC)", cs.commits)
	}
	var left []Key
	for _, l := range a.List() {
		left = append(left, l.Key)
	}
	if want := []Key{key(1), key(3)}; !slices.Equal(left, want) {
		t.Errorf("List() = %v, want %v", left, want)
	}
	st, err := s.Load()
	if err != nil || len(st.Leases) != 2 {
		t.Errorf("store holds %d leases (%v), want 2", len(st.Leases), err)
	}
	if gone, err := a.GC([]Key{key(1), key(3)}); err != nil || gone != nil || cs.commits != 6 {
		t.Errorf("GC with nothing to do = %v, %v and %d commits; want nil, nil and no commit", gone, err, cs.commits)
	}
}

func testInvalidKey(t *testing.T, open func() Store) {
	a := newAllocator(t, Config{V4: pfx("10.0.0.0/24")}, open())
	for _, k := range []Key{{"", "eth0"}, {"c1", ""}, {"c\x001", "eth0"}} {
		if _, err := a.Allocate(k); err == nil {
			t.Errorf("Allocate(%q) succeeded, want an error", k)
		}
		if _, _, err := a.Release(k); err == nil {
			t.Errorf("Release(%q) succeeded, want an error", k)
		}
	}
}

// testFailedCommit checks that memory is unchanged when the store fails.
func testFailedCommit(t *testing.T, open func() Store) {
	cs := &countingStore{Store: open()}
	a := newAllocator(t, Config{V4: pfx("10.0.0.0/24")}, cs)
	mustAllocate(t, a, key(1))
	cs.fail = errors.New("disk on fire")
	if _, err := a.Allocate(key(2)); !errors.Is(err, cs.fail) {
		t.Fatalf("Allocate with a failing store = %v, want its error", err)
	}
	if _, _, err := a.Release(key(1)); !errors.Is(err, cs.fail) {
		t.Fatalf("Release with a failing store = %v, want its error", err)
	}
	if _, err := a.GC(nil); !errors.Is(err, cs.fail) {
		t.Fatalf("GC with a failing store = %v, want its error", err)
	}
	if v4, _ := a.InUse(); v4 != 1 {
		t.Fatalf("InUse() = %d after failed commits, want 1", v4)
	}
	cs.fail = nil
	if l := mustAllocate(t, a, key(2)); ips(l) != "10.0.0.3" {
		t.Fatalf("Allocate after recovery = %s, want 10.0.0.3 (cursor unmoved)", ips(l))
	}
}

// testFailedCommitApplied fails commits that the store applied all the
// same: memory must follow the store, so an address is not handed out
// twice and the store opens again.
func testFailedCommitApplied(t *testing.T, open func() Store) {
	cfg := Config{V4: pfx("10.0.0.0/24"), V6: pfx("fd00::/120")}
	s := &lateFailStore{Store: open()}
	a, err := New(cfg, s, nil)
	if err != nil {
		t.Fatal(err)
	}
	mustAllocate(t, a, key(0)) // .2

	s.failCommit = true
	if _, err := a.Allocate(key(1)); !errors.Is(err, errSyncFailed) {
		t.Fatalf("Allocate with a failing sync = %v, want its error", err)
	}
	s.failCommit = false
	want, _ := storedLease(t, s, key(1))
	if got, ok := a.Get(key(1)); !ok || !leasesEqual([]Lease{got}, []Lease{want}) {
		t.Errorf("Get(%s) after the failed commit = %v, %v; want the stored %v", key(1), got, ok, want)
	}
	// The cursor moved with the stored lease: .3 is not handed out again.
	if l := mustAllocate(t, a, key(2)); ips(l) != "10.0.0.4,fd00::4" {
		t.Errorf("Allocate(%s) = %s, want 10.0.0.4,fd00::4 (after the stored lease's 10.0.0.3)", key(2), ips(l))
	}

	s.failCommit = true
	if _, _, err := a.Release(key(0)); !errors.Is(err, errSyncFailed) {
		t.Fatalf("Release with a failing sync = %v, want its error", err)
	}
	if _, err := a.GC([]Key{key(0), key(1)}); !errors.Is(err, errSyncFailed) { // releases key 2
		t.Fatalf("GC with a failing sync = %v, want its error", err)
	}
	s.failCommit = false
	for _, k := range []Key{key(0), key(2)} {
		if l, ok := a.Get(k); ok {
			t.Errorf("Get(%s) = %v after its release was stored, want none", k, l)
		}
	}
	if v4, v6 := a.InUse(); v4 != 1 || v6 != 1 {
		t.Errorf("InUse() = %d, %d; want 1, 1", v4, v6)
	}
	before := a.List()
	a.Close()
	a = newAllocator(t, cfg, open()) // refuses an address leased twice
	if after := a.List(); !leasesEqual(before, after) {
		t.Fatalf("after reopen List() = %v, want %v", after, before)
	}
}

// testFailedReload fails a commit and the reload after it: the allocator
// refuses changes until restarted, and still answers reads.
func testFailedReload(t *testing.T, open func() Store) {
	cfg := Config{V4: pfx("10.0.0.0/24")}
	s := &lateFailStore{Store: open()}
	a, err := New(cfg, s, nil)
	if err != nil {
		t.Fatal(err)
	}
	mustAllocate(t, a, key(0))
	s.failCommit, s.failLoad = true, true
	if _, err := a.Allocate(key(1)); !errors.Is(err, errSyncFailed) || !errors.Is(err, ErrBroken) {
		t.Fatalf("Allocate with failing sync and reload = %v, want both errors", err)
	}
	s.failCommit, s.failLoad = false, false
	if _, err := a.Allocate(key(2)); !errors.Is(err, ErrBroken) {
		t.Errorf("Allocate after a failed reload = %v, want ErrBroken", err)
	}
	if _, err := a.Allocate(key(0)); !errors.Is(err, ErrBroken) {
		t.Errorf("Allocate(held key) after a failed reload = %v, want ErrBroken", err)
	}
	if _, _, err := a.Release(key(0)); !errors.Is(err, ErrBroken) {
		t.Errorf("Release after a failed reload = %v, want ErrBroken", err)
	}
	if _, err := a.GC(nil); !errors.Is(err, ErrBroken) {
		t.Errorf("GC after a failed reload = %v, want ErrBroken", err)
	}
	if _, err := a.Adopt(key(3), []netip.Prefix{pfx("10.0.0.9/24")}); !errors.Is(err, ErrBroken) {
		t.Errorf("Adopt after a failed reload = %v, want ErrBroken", err)
	}
	if _, ok := a.Get(key(0)); !ok || len(a.List()) != 1 {
		t.Errorf("Get and List after a failed reload lost the lease of %s", key(0))
	}
	a.Close()
	a = newAllocator(t, cfg, open()) // a restart loads what the store holds
	if _, ok := a.Get(key(1)); !ok {
		t.Errorf("after restart: no lease for %s, whose failed commit was applied", key(1))
	}
	mustAllocate(t, a, key(2))
}

// testReserveAddedLater restarts with a reserve range over a lease: the
// lease is kept and reported, its address not handed out again.
func testReserveAddedLater(t *testing.T, open func() Store) {
	cfg := Config{V4: pfx("10.0.0.0/29")} // pods .2 to .5
	a, err := New(cfg, open(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		mustAllocate(t, a, key(i)) // .2 .3 .4
	}
	a.Close()

	cfg.Reserve = []Range{{addr("10.0.0.3"), addr("10.0.0.3")}}
	a = newAllocator(t, cfg, open())
	if got := a.ReservedLeases(); len(got) != 1 || got[0].Key != key(1) {
		t.Fatalf("ReservedLeases() = %v, want the lease of %s", got, key(1))
	}
	if v4, _ := a.Size(); v4 != 3 {
		t.Fatalf("Size() = %d, want 3", v4)
	}
	// The lease on reserved .3 takes nothing from the 3 pod addresses.
	if free, _ := a.Free(); free != 1 {
		t.Fatalf("Free() = %d, want 1 (.5)", free)
	}
	if l := mustAllocate(t, a, key(3)); ips(l) != "10.0.0.5" {
		t.Fatalf("Allocate = %s, want 10.0.0.5", ips(l))
	}
	if free, _ := a.Free(); free != 0 {
		t.Fatalf("Free() = %d after the last address went, want 0", free)
	}
	if _, err := a.Allocate(key(4)); !errors.Is(err, ErrExhausted) {
		t.Fatalf("Allocate = %v, want exhausted (3 pods in use, .3 reserved)", err)
	}
	mustRelease(t, a, key(1)) // frees .3, which stays reserved
	if _, err := a.Allocate(key(4)); !errors.Is(err, ErrExhausted) {
		t.Fatalf("Allocate after releasing the reserved lease = %v, want exhausted", err)
	}
	if got := a.ReservedLeases(); len(got) != 0 {
		t.Fatalf("ReservedLeases() = %v after release, want none", got)
	}
}

func testClosed(t *testing.T, open func() Store) {
	a, err := New(Config{V4: pfx("10.0.0.0/24")}, open(), nil)
	if err != nil {
		t.Fatal(err)
	}
	mustAllocate(t, a, key(1))
	if err := a.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := a.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := a.Allocate(key(2)); !errors.Is(err, ErrClosed) {
		t.Errorf("Allocate after Close = %v, want ErrClosed", err)
	}
	if _, ok := a.Get(key(1)); !ok {
		t.Errorf("Get after Close found nothing, want the lease from memory")
	}
}

// TestIPv6BeyondSlash64 checks ranges of more than 2^64 addresses with
// reserves of 2^64: sizes are computed in 128 bits and capped only at the
// end, and a capped size is never exhausted. Sizes do not depend on the
// store: Mem only.
func TestIPv6BeyondSlash64(t *testing.T) {
	tests := []struct {
		v6, reserve string
		size        uint64
		want        []string // IPv6 addresses of the leases, in order
		exhausted   bool     // the next Allocate fails
	}{
		// Capping each term first gave 2^64-1 - (2^64-1) = 0: exhausted at once.
		{"fd00::/56", "fd00:0:0:1::/64", math.MaxUint64, []string{"fd00::2", "fd00::3"}, false},
		// ... and 2^64-1 - (2^64-2) = 1: exhausted after one lease.
		{"fd00::/48", "fd00::/64", math.MaxUint64, []string{"fd00:0:0:1::", "fd00:0:0:1::1", "fd00:0:0:1::2"}, false},
		// Exact below the cap: all but 3 of the 2^72-3 pod addresses reserved.
		{"fd00::/56", "fd00::2-fd00:0:0:ff:ffff:ffff:ffff:fffb", 3,
			[]string{"fd00:0:0:ff:ffff:ffff:ffff:fffc", "fd00:0:0:ff:ffff:ffff:ffff:fffd", "fd00:0:0:ff:ffff:ffff:ffff:fffe"}, true},
	}
	for _, tt := range tests {
		name := tt.v6 + " reserving " + tt.reserve
		rs, err := ParseReserve(tt.reserve)
		if err != nil {
			t.Fatal(err)
		}
		a := newAllocator(t, Config{V4: pfx("10.0.0.0/16"), V6: pfx(tt.v6), Reserve: rs}, NewMem())
		if _, v6 := a.Size(); v6 != tt.size {
			t.Errorf("%s: Size() v6 = %d, want %d", name, v6, tt.size)
		}
		for i, want := range tt.want {
			l, err := a.Allocate(key(i))
			if err != nil {
				t.Errorf("%s: Allocate #%d: %v", name, i+1, err)
				break
			}
			if got := l.IPs[1].Addr(); got != addr(want) {
				t.Errorf("%s: Allocate #%d = %s, want %s", name, i+1, got, want)
			}
		}
		if _, err := a.Allocate(key(len(tt.want))); errors.Is(err, ErrExhausted) != tt.exhausted {
			t.Errorf("%s: Allocate #%d = %v, want exhausted %v", name, len(tt.want)+1, err, tt.exhausted)
		}
	}
}

// testAdopt adopts addresses in a dual-stack allocator holding one lease:
// the checks, idempotency, no commit on error, cursors unmoved, and the
// adopted lease surviving a restart.
func testAdopt(t *testing.T, open func() Store) {
	cfg := Config{
		V4:      pfx("10.0.0.0/24"), // .0 network, .1 gateway, .254 host, .255 broadcast
		V6:      pfx("fd00::/120"),  // ::1 gateway, ::ff host
		Reserve: []Range{{addr("10.0.0.50"), addr("10.0.0.50")}, {addr("fd00::50"), addr("fd00::50")}},
	}
	cs := &countingStore{Store: open()}
	a, err := New(cfg, cs, nil)
	if err != nil {
		t.Fatal(err)
	}
	mustAllocate(t, a, key(0)) // 10.0.0.2, fd00::2

	ok4, ok6 := pfx("10.0.0.100/24"), pfx("fd00::a0/120")
	tests := []struct {
		name string
		key  Key
		ips  []netip.Prefix
		want string // error text; "" for success
	}{
		{"adopted", key(1), []netip.Prefix{ok4, ok6}, ""},
		{"again", key(1), []netip.Prefix{ok4, ok6}, ""},
		{"key holds others", key(1), []netip.Prefix{pfx("10.0.0.101/24"), pfx("fd00::a1/120")},
			"ipam: adopt c00001/eth0: it holds [10.0.0.100/24 fd00::a0/120], not [10.0.0.101/24 fd00::a1/120]"},
		{"invalid key", Key{"", "eth0"}, []netip.Prefix{ok4, ok6}, "ipam: adopt /eth0: key has an empty container id"},
		{"ipv4 only", key(2), []netip.Prefix{pfx("10.0.0.101/24")}, "ipam: adopt c00002/eth0: 1 addresses, want 2 (one IPv4, then one IPv6)"},
		{"three", key(2), []netip.Prefix{pfx("10.0.0.101/24"), pfx("fd00::a1/120"), pfx("fd00::a2/120")}, "3 addresses, want 2"},
		{"ipv6 first", key(2), []netip.Prefix{pfx("fd00::a1/120"), pfx("10.0.0.101/24")}, "address fd00::a1/120 is not in 10.0.0.0/24"},
		{"invalid", key(2), []netip.Prefix{{}, pfx("fd00::a1/120")}, "invalid address invalid Prefix, want one in 10.0.0.0/24"},
		{"outside", key(2), []netip.Prefix{pfx("10.1.0.101/24"), pfx("fd00::a1/120")}, "address 10.1.0.101/24 is not in 10.0.0.0/24"},
		{"outside v6", key(2), []netip.Prefix{pfx("10.0.0.101/24"), pfx("fd00::1:a1/120")}, "address fd00::1:a1/120 is not in fd00::/120"},
		{"prefix length", key(2), []netip.Prefix{pfx("10.0.0.101/16"), pfx("fd00::a1/120")}, "address 10.0.0.101/16 does not have the prefix length of 10.0.0.0/24"},
		{"prefix length v6", key(2), []netip.Prefix{pfx("10.0.0.101/24"), pfx("fd00::a1/64")}, "does not have the prefix length of fd00::/120"},
		{"network", key(2), []netip.Prefix{pfx("10.0.0.0/24"), pfx("fd00::a1/120")}, "address 10.0.0.0 is the network address of 10.0.0.0/24, not a pod address"},
		{"gateway", key(2), []netip.Prefix{pfx("10.0.0.1/24"), pfx("fd00::a1/120")}, "address 10.0.0.1 is the gateway address of 10.0.0.0/24"},
		{"host port", key(2), []netip.Prefix{pfx("10.0.0.254/24"), pfx("fd00::a1/120")}, "address 10.0.0.254 is the host port's address of 10.0.0.0/24"},
		{"broadcast", key(2), []netip.Prefix{pfx("10.0.0.255/24"), pfx("fd00::a1/120")}, "address 10.0.0.255 is the broadcast address of 10.0.0.0/24"},
		{"network v6", key(2), []netip.Prefix{pfx("10.0.0.101/24"), pfx("fd00::/120")}, "address fd00:: is the network address of fd00::/120"},
		{"gateway v6", key(2), []netip.Prefix{pfx("10.0.0.101/24"), pfx("fd00::1/120")}, "address fd00::1 is the gateway address of fd00::/120"},
		{"host port v6", key(2), []netip.Prefix{pfx("10.0.0.101/24"), pfx("fd00::ff/120")}, "address fd00::ff is the host port's address of fd00::/120"},
		{"reserved", key(2), []netip.Prefix{pfx("10.0.0.50/24"), pfx("fd00::a1/120")}, "ipam: adopt c00002/eth0: address 10.0.0.50 is reserved (10.0.0.50)"},
		{"reserved v6", key(2), []netip.Prefix{pfx("10.0.0.101/24"), pfx("fd00::50/120")}, "address fd00::50 is reserved (fd00::50)"},
		{"leased", key(2), []netip.Prefix{pfx("10.0.0.2/24"), pfx("fd00::a1/120")}, "ipam: adopt c00002/eth0: address 10.0.0.2 is leased to c00000/eth0"},
		{"leased v6", key(2), []netip.Prefix{pfx("10.0.0.101/24"), pfx("fd00::a0/120")}, "address fd00::a0 is leased to c00001/eth0"},
	}
	var first Lease
	for _, tt := range tests {
		before := cs.commits
		l, err := a.Adopt(tt.key, tt.ips)
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%s: Adopt(%s, %v) = %v, want success", tt.name, tt.key, tt.ips, err)
		case tt.want == "" && !slices.Equal(l.IPs, tt.ips):
			t.Errorf("%s: Adopt(%s, %v) = %v, want these addresses", tt.name, tt.key, tt.ips, l.IPs)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%s: Adopt(%s, %v) = %v, want an error containing %q", tt.name, tt.key, tt.ips, err, tt.want)
		case tt.want != "" && cs.commits != before:
			t.Errorf("%s: failed Adopt committed", tt.name)
		}
		if tt.name == "adopted" {
			first = l
			if cs.commits != before+1 {
				t.Errorf("Adopt made %d commits, want 1", cs.commits-before)
			}
			if d := time.Since(l.Since); d < 0 || d > time.Minute || l.Since.Location() != time.UTC {
				t.Errorf("Adopt's Since = %v, want now in UTC", l.Since)
			}
		}
		if tt.name == "again" && (cs.commits != before || !l.Since.Equal(first.Since)) {
			t.Errorf("Adopt again: %d commits and Since %v; want none and the first lease's %v", cs.commits-before, l.Since, first.Since)
		}
	}
	if v4, v6 := a.InUse(); v4 != 2 || v6 != 2 {
		t.Errorf("InUse() = %d, %d; want 2, 2", v4, v6)
	}
	// The cursors did not move to the adopted addresses.
	if l := mustAllocate(t, a, key(3)); ips(l) != "10.0.0.3,fd00::3" {
		t.Errorf("Allocate after Adopt = %s, want 10.0.0.3,fd00::3", ips(l))
	}
	// An adopted address is skipped as used.
	if _, err := a.Adopt(key(4), []netip.Prefix{pfx("10.0.0.4/24"), pfx("fd00::4/120")}); err != nil {
		t.Fatal(err)
	}
	if l := mustAllocate(t, a, key(5)); ips(l) != "10.0.0.5,fd00::5" {
		t.Errorf("Allocate after adopting .4 = %s, want 10.0.0.5,fd00::5", ips(l))
	}
	before := a.List()
	a.Close()
	a = newAllocator(t, cfg, open())
	if after := a.List(); !leasesEqual(before, after) {
		t.Fatalf("after reopen List() = %v, want %v", after, before)
	}
}

// testAdoptNewStore adopts into a store never committed to: the commit
// stamps it, as Allocate's does, so it opens again with its lease.
func testAdoptNewStore(t *testing.T, open func() Store) {
	cfg := Config{V4: pfx("10.0.0.0/24")}
	a, err := New(cfg, open(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Adopt(key(1), []netip.Prefix{pfx("10.0.0.7/24"), pfx("fd00::7/64")}); err == nil ||
		!strings.Contains(err.Error(), "2 addresses, want 1 (one IPv4)") {
		t.Errorf("Adopt of two addresses in an IPv4 store = %v, want refused", err)
	}
	if _, err := a.Adopt(key(1), []netip.Prefix{pfx("10.0.0.7/24")}); err != nil {
		t.Fatalf("Adopt: %v", err)
	}
	a.Close()
	a = newAllocator(t, cfg, open())
	if l, ok := a.Get(key(1)); !ok || ips(l) != "10.0.0.7" {
		t.Fatalf("after reopen Get(%s) = %v, %v; want 10.0.0.7", key(1), l, ok)
	}
	a.Close()
	s := open()
	defer s.Close()
	if _, err := New(Config{V4: pfx("10.1.0.0/24")}, s, nil); err == nil || !strings.Contains(err.Error(), "refusing to re-number pods") {
		t.Errorf("New with another CIDR = %v, want refused: the store is stamped", err)
	}
}
