package ipam

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

// podKey returns a realistic key: container IDs are 64 hex digits.
func podKey(i int) Key {
	sum := sha256.Sum256([]byte(strconv.Itoa(i)))
	return Key{ContainerID: hex.EncodeToString(sum[:]), IfName: "eth0"}
}

// percentile returns the p-th percentile of sorted durations.
func percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, len(sorted)*p/100)]
}

func microseconds(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }

// largeConfig is a dual-stack node with a /16: room for 10,000 pods.
func largeConfig() Config {
	return Config{V4: pfx("10.244.0.0/16"), V6: pfx("fd00:10:244::/64")}
}

// BenchmarkAllocate measures one Allocate on a Bolt store (one committed,
// synced bbolt transaction), on an empty store and on one holding 10,000
// leases. Each iteration allocates and releases; only Allocate is timed
// for the percentiles, ns/op covers both.
func BenchmarkAllocate(b *testing.B) {
	for _, held := range []int{0, 10000} {
		b.Run(fmt.Sprintf("leases=%d", held), func(b *testing.B) {
			bolt, err := OpenBolt(filepath.Join(b.TempDir(), "ipam.db"), time.Second)
			if err != nil {
				b.Fatal(err)
			}
			a, err := New(largeConfig(), bolt, nil)
			if err != nil {
				b.Fatal(err)
			}
			defer a.Close()
			for i := range held {
				if _, err := a.Allocate(podKey(i)); err != nil {
					b.Fatal(err)
				}
			}
			var lat []time.Duration
			i := held
			b.ReportAllocs()
			for b.Loop() {
				k := podKey(i)
				i++
				start := time.Now()
				if _, err := a.Allocate(k); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
				if _, _, err := a.Release(k); err != nil {
					b.Fatal(err)
				}
			}
			slices.Sort(lat)
			b.ReportMetric(microseconds(percentile(lat, 50)), "p50-us")
			b.ReportMetric(microseconds(percentile(lat, 99)), "p99-us")
		})
	}
}

// TestStoreSize10000 allocates 10,000 dual-stack leases with realistic keys
// into a Bolt store, one commit each as the daemon makes them, and logs
// the file size and the allocation latency (meaningless under -race).
func TestStoreSize10000(t *testing.T) {
	if testing.Short() {
		t.Skip("10,000 synced commits")
	}
	const n = 10000
	path := filepath.Join(t.TempDir(), "ipam.db")
	b := openBolt(t, path)
	a := newAllocator(t, largeConfig(), b)
	lat := make([]time.Duration, 0, n)
	for i := range n {
		start := time.Now()
		if _, err := a.Allocate(podKey(i)); err != nil {
			t.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	var used int64 // pages in use; the file grows ahead of them
	if err := b.db.View(func(tx *bbolt.Tx) error { used = tx.Size(); return nil }); err != nil {
		t.Fatal(err)
	}
	slices.Sort(lat)
	t.Logf("%d leases: store file %d bytes (%d in use, %.0f bytes/lease); allocate p50 %v, p99 %v",
		n, fi.Size(), used, float64(used)/n, percentile(lat, 50), percentile(lat, 99))
	if v4, v6 := a.InUse(); v4 != n || v6 != n {
		t.Fatalf("InUse() = %d, %d; want %d", v4, v6, n)
	}
}
