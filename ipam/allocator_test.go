package ipam

import (
	"errors"
	"math"
	"net/netip"
	"slices"
	"testing"
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
		{"reserve added later", testReserveAddedLater},
		{"closed", testClosed},
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
	if l := mustAllocate(t, a, key(3)); ips(l) != "10.0.0.5" {
		t.Fatalf("Allocate = %s, want 10.0.0.5", ips(l))
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
