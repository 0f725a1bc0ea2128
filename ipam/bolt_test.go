package ipam

import (
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

func openBolt(t *testing.T, path string) *Bolt {
	t.Helper()
	b, err := OpenBolt(path, time.Second)
	if err != nil {
		t.Fatalf("OpenBolt: %v", err)
	}
	return b
}

func leasesEqual(a, b []Lease) bool {
	return slices.EqualFunc(a, b, func(x, y Lease) bool {
		return x.Key == y.Key && slices.Equal(x.IPs, y.IPs) && x.Since.Equal(y.Since)
	})
}

func TestBoltReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ipam.db")
	cfg := Config{V4: pfx("10.244.0.0/24"), V6: pfx("fd00::/64")}
	a, err := New(cfg, openBolt(t, path), nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		mustAllocate(t, a, key(i))
	}
	for _, i := range []int{2, 5, 9} {
		mustRelease(t, a, key(i))
	}
	before := a.List()
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("store mode = %v (%v), want 0600", fi.Mode(), err)
	}

	a = newAllocator(t, cfg, openBolt(t, path))
	if after := a.List(); !leasesEqual(before, after) {
		t.Fatalf("after reopen List() = %v, want %v", after, before)
	}
	// The cursors survived: .11 was handed out last, .10 is free again
	// (key 9) but comes after the wrap.
	if l := mustAllocate(t, a, key(10)); ips(l) != "10.244.0.12,fd00::c" {
		t.Fatalf("Allocate after reopen = %s, want 10.244.0.12,fd00::c", ips(l))
	}
}

func TestBoltCIDRMismatch(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ipam.db")
	a, err := New(Config{V4: pfx("10.244.0.0/24")}, openBolt(t, path), nil)
	if err != nil {
		t.Fatal(err)
	}
	mustAllocate(t, a, key(1))
	a.Close()

	tests := []struct {
		cfg  Config
		want string
	}{
		{Config{V4: pfx("10.245.0.0/24")}, "ipam: store " + path + " holds leases for 10.244.0.0/24, not 10.245.0.0/24: refusing to re-number pods; start with the old --pod-cidr or move the store away"},
		{Config{V4: pfx("10.244.0.0/24"), V6: pfx("fd00::/64")}, "not 10.244.0.0/24 and fd00::/64: refusing to re-number pods; start with the old --pod-cidr6"},
	}
	for _, tt := range tests {
		b := openBolt(t, path)
		_, err := New(tt.cfg, b, nil)
		b.Close()
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("New(%v) = %v, want an error containing %q", tt.cfg.V4, err, tt.want)
		}
	}
}

// TestBoltUnstampedStore checks that a store never committed to takes
// any CIDR: it holds no leases to re-number.
func TestBoltUnstampedStore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ipam.db")
	a, err := New(Config{V4: pfx("10.244.0.0/24")}, openBolt(t, path), nil)
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	a = newAllocator(t, Config{V4: pfx("10.245.0.0/24")}, openBolt(t, path))
	if l := mustAllocate(t, a, key(1)); ips(l) != "10.245.0.2" {
		t.Fatalf("Allocate = %s, want 10.245.0.2", ips(l))
	}
}

func TestBoltLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ipam.db")
	first := openBolt(t, path)
	start := time.Now()
	_, err := OpenBolt(path, 200*time.Millisecond)
	took := time.Since(start)
	want := "ipam: store " + path + " is locked by another process (is another tapswitchd running?)"
	if !errors.Is(err, ErrLocked) || err.Error() != want {
		t.Fatalf("second OpenBolt = %v, want %q", err, want)
	}
	if took > 2*time.Second {
		t.Errorf("second OpenBolt took %v, want about the 200ms timeout", took)
	}
	if _, err := OpenBolt(path, 0); !errors.Is(err, ErrLocked) {
		t.Fatalf("OpenBolt with timeout 0 = %v, want ErrLocked at once", err)
	}
	first.Close()
	second, err := OpenBolt(path, 0) // one try suffices when unlocked
	if err != nil {
		t.Fatalf("OpenBolt after Close: %v", err)
	}
	second.Close()
}

// TestBoltUnreadable checks that files that are not a whole store are
// errors naming the file, never an empty store.
func TestBoltUnreadable(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	garbage := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rnd.Uint32())
		}
		return b
	}
	tests := []struct {
		name    string
		content []byte
		want    string
	}{
		{"garbage", garbage(64 << 10), "is corrupt"},
		{"short garbage", garbage(100), "is corrupt"},
		{"empty", nil, "is empty"},
		{"text", []byte("not a database\n"), "is corrupt"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "ipam.db")
			if err := os.WriteFile(path, tt.content, 0o600); err != nil {
				t.Fatal(err)
			}
			b, err := OpenBolt(path, time.Second)
			if err == nil {
				b.Close()
				t.Fatalf("OpenBolt(%s) succeeded, want an error", tt.name)
			}
			if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("OpenBolt = %v, want an error naming %s and containing %q", err, path, tt.want)
			}
			if got, _ := os.ReadFile(path); !slices.Equal(got, tt.content) {
				t.Errorf("OpenBolt changed the unreadable file")
			}
		})
	}
}

// TestBoltForeignFile checks that a bbolt file of another program is
// refused.
func TestBoltForeignFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "other.db")
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bbolt.Tx) error { _, err := tx.CreateBucket([]byte("users")); return err })
	db.Close()
	b := openBolt(t, path)
	defer b.Close()
	if _, err := New(Config{V4: pfx("10.0.0.0/24")}, b, nil); err == nil || !strings.Contains(err.Error(), "not a tapswitch ipam store") {
		t.Fatalf("New over a foreign bbolt file = %v, want refused", err)
	}
}

// TestBadRecords writes records that decode but break an invariant, or
// do not decode, and checks that New refuses the store naming it.
func TestBadRecords(t *testing.T) {
	cfg := Config{V4: pfx("10.244.0.0/24")}
	stamp := &Stamp{V4: cfg.V4}
	since := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	lease := func(i int, ips ...string) Lease {
		l := Lease{Key: key(i), Since: since}
		for _, s := range ips {
			l.IPs = append(l.IPs, pfx(s))
		}
		return l
	}
	tests := []struct {
		name   string
		change Change
		raw    func(b *bbolt.Bucket) error // written into bucket leases after change
		want   string
	}{
		{"duplicate address", Change{Stamp: stamp, Put: []Lease{lease(1, "10.244.0.5/24"), lease(2, "10.244.0.5/24")}},
			nil, "lease c00002/eth0: address 10.244.0.5 is also leased to c00001/eth0"},
		{"outside cidr", Change{Stamp: stamp, Put: []Lease{lease(1, "10.9.0.5/24")}},
			nil, "address 10.9.0.5/24 is not a pod address of 10.244.0.0/24"},
		{"gateway", Change{Stamp: stamp, Put: []Lease{lease(1, "10.244.0.1/24")}},
			nil, "is not a pod address"},
		{"wrong prefix length", Change{Stamp: stamp, Put: []Lease{lease(1, "10.244.0.5/16")}},
			nil, "is not a pod address"},
		{"ipv6 lease in ipv4 store", Change{Stamp: stamp, Put: []Lease{lease(1, "10.244.0.5/24", "fd00::5/64")}},
			nil, "has 2 addresses, want 1"},
		{"cursor outside", Change{Stamp: stamp, Cursor4: addr("10.9.9.9")},
			nil, "cursor 10.9.9.9 is not a pod address"},
		{"leases without stamp", Change{Put: []Lease{lease(1, "10.244.0.5/24")}},
			nil, "records without a config stamp"},
		{"flipped byte", Change{Stamp: stamp, Put: []Lease{lease(1, "10.244.0.5/24")}},
			func(b *bbolt.Bucket) error {
				k := storeKey(key(1))
				v := slices.Clone(b.Get(k))
				v[strings.Index(string(v), "0.5")] = '1' // 10.244.1.5: still a valid address
				return b.Put(k, v)
			}, `leases record "c00001/eth0": checksum mismatch`},
		{"truncated", Change{Stamp: stamp, Put: []Lease{lease(1, "10.244.0.5/24")}},
			func(b *bbolt.Bucket) error { return b.Put(storeKey(key(1)), []byte("{")) },
			"too short for its checksum"},
		{"lost record", Change{Stamp: stamp, Put: []Lease{lease(1, "10.244.0.5/24"), lease(2, "10.244.0.6/24")}},
			func(b *bbolt.Bucket) error { return b.Delete(storeKey(key(1))) },
			"1 lease records, but the stored count is 2"},
		{"moved record", Change{Stamp: stamp, Put: []Lease{lease(1, "10.244.0.5/24")}},
			func(b *bbolt.Bucket) error { return b.Put(storeKey(key(2)), b.Get(storeKey(key(1)))) },
			`leases record "c00002/eth0": checksum mismatch`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "ipam.db")
			b := openBolt(t, path)
			if err := b.Commit(tt.change); err != nil {
				t.Fatal(err)
			}
			if tt.raw != nil {
				err := b.db.Update(func(tx *bbolt.Tx) error { return tt.raw(tx.Bucket([]byte(bucketLeases))) })
				if err != nil {
					t.Fatal(err)
				}
			}
			defer b.Close()
			_, err := New(cfg, b, nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), path) {
				t.Fatalf("New = %v, want an error naming %s and containing %q", err, path, tt.want)
			}
		})
	}
}

// TestBoltDamagedPages overwrites bytes of a valid store at random places
// and checks that opening it never panics or crashes, and never loads
// other leases than were committed: it fails with an error naming the
// file, or the damage missed every record. One exception is bbolt's
// design: when the newer of its two meta pages is damaged, bbolt falls
// back to the older one, the store as of the commit before. That is what
// makes a torn meta write in a crash safe; for later disk damage it loses
// the last change (here: the last lease).
func TestBoltDamagedPages(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.db")
	cfg := Config{V4: pfx("10.244.0.0/22"), V6: pfx("fd00::/64")}
	a, err := New(cfg, openBolt(t, good), nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 300 {
		mustAllocate(t, a, key(i))
	}
	want := a.List()
	a.Close()
	content, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	metaEnd := 2 * os.Getpagesize() // bbolt's two meta pages

	rnd := rand.New(rand.NewPCG(3, 4))
	var refused, loaded, previous int
	for i := range 200 {
		damaged := slices.Clone(content)
		metaDamaged := false
		for range 1 + rnd.IntN(8) {
			off := rnd.IntN(len(damaged))
			damaged[off] = byte(rnd.Uint32())
			metaDamaged = metaDamaged || off < metaEnd
		}
		path := filepath.Join(dir, "damaged.db")
		if err := os.WriteFile(path, damaged, 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := openAndList(path, cfg)
		switch {
		case err != nil && !strings.Contains(err.Error(), path):
			t.Fatalf("run %d: error %q does not name the file", i, err)
		case err != nil:
			refused++
		case leasesEqual(got, want):
			loaded++
		case metaDamaged && leasesEqual(got, want[:len(want)-1]):
			previous++
		default:
			t.Fatalf("run %d: damaged store loaded with %d leases, want the %d committed", i, len(got), len(want))
		}
	}
	t.Logf("damaged stores: %d refused, %d loaded intact (damage in unused space), %d as of the commit before (meta page damaged)", refused, loaded, previous)
}

func openAndList(path string, cfg Config) ([]Lease, error) {
	b, err := OpenBolt(path, time.Second)
	if err != nil {
		return nil, err
	}
	defer b.Close()
	a, err := New(cfg, b, nil)
	if err != nil {
		return nil, err
	}
	return a.List(), nil
}
