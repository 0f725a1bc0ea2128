package ipam

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime/metrics"
	"slices"
	"strings"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

// TestBoltDamagedPageTree damages the page tree of a store with branch
// pages the way that makes bbolt's cursors loop, and checks that OpenBolt
// refuses the file instead.
func TestBoltDamagedPageTree(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.db")
	cfg := Config{V4: pfx("10.244.0.0/22")}
	writeLeases(t, good, cfg, 600) // three levels of pages in bucket leases
	content, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	tree := readTree(t, good, content)
	if tree.flags(content, tree.leases) != branchPageFlag {
		t.Fatalf("bucket leases' root page %d is not a branch page: the test needs more leases", tree.leases)
	}
	child0 := tree.branchChild(content, tree.leases, 0)
	leaf := child0 // the leftmost leaf page of bucket leases
	for tree.flags(content, leaf) == branchPageFlag {
		leaf = tree.branchChild(content, leaf, 0)
	}
	inline := tree.inlineBucket(t, content, bucketMeta) // offset of bucket meta's inline page

	tests := []struct {
		name   string
		damage func(b []byte)
		want   string
	}{
		{"branch points to its own page", func(b []byte) {
			tree.setBranchChild(b, tree.leases, 0, tree.leases)
		}, fmt.Sprintf("page %d is reached twice (a loop or a shared page)", tree.leases)},
		{"branch points to the page of another element", func(b []byte) {
			tree.setBranchChild(b, tree.leases, 1, child0)
		}, fmt.Sprintf("page %d is reached twice", child0)},
		{"branch points to a meta page", func(b []byte) {
			tree.setBranchChild(b, tree.leases, 0, 1)
		}, "page 1 is outside the data pages"},
		{"branch points past the high water mark", func(b []byte) {
			tree.setBranchChild(b, tree.leases, 0, 1<<40)
		}, "page 1099511627776 is outside the data pages"},
		{"leaf page marked as branch", func(b []byte) {
			binary.NativeEndian.PutUint16(b[tree.off(leaf)+8:], branchPageFlag)
		}, "is outside the data pages"},
		{"leaf record past its page", func(b []byte) {
			binary.NativeEndian.PutUint32(b[tree.off(leaf)+pageHeaderLen+12:], 1<<20) // element 0's vsize
		}, fmt.Sprintf("page %d: record 0 runs past the page", leaf)},
		{"page of another id", func(b []byte) {
			binary.NativeEndian.PutUint64(b[tree.off(child0):], child0+1)
		}, fmt.Sprintf("page %d calls itself page %d", child0, child0+1)},
		{"free page type", func(b []byte) {
			binary.NativeEndian.PutUint16(b[tree.off(child0)+8:], 0x10)
		}, fmt.Sprintf("page %d has flags 0x10, want a branch or leaf page", child0)},
		{"overflow past the end", func(b []byte) {
			binary.NativeEndian.PutUint32(b[tree.off(child0)+12:], 1<<30)
		}, "overflow pages runs past the last page"},
		{"too many elements", func(b []byte) {
			binary.NativeEndian.PutUint16(b[tree.off(child0)+10:], 0xffff)
		}, "65535 elements do not fit"},
		// bbolt returns an inline bucket's page for page id 0: as a
		// branch pointing to 0, it is its own child.
		{"inline bucket page marked as branch", func(b []byte) {
			binary.NativeEndian.PutUint16(b[inline+8:], branchPageFlag)
			clear(b[inline+pageHeaderLen+8 : inline+pageHeaderLen+16]) // element 0's pgid
		}, "inline bucket in page"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			damaged := slices.Clone(content)
			tt.damage(damaged)
			path := filepath.Join(t.TempDir(), "ipam.db")
			if err := os.WriteFile(path, damaged, 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := openWithin(t, path, cfg)
			if err == nil || !strings.Contains(err.Error(), "ipam: store "+path+" is corrupt: damaged page tree: ") ||
				!strings.Contains(err.Error(), tt.want) {
				t.Fatalf("opening the damaged store = %v, want an error naming %s and containing %q", err, path, tt.want)
			}
		})
	}
	// The undamaged store opens.
	if got, err := openWithin(t, good, cfg); err != nil || len(got) != 600 {
		t.Fatalf("opening the good store = %d leases, %v; want 600", len(got), err)
	}
}

// openWithin opens the store at path as the daemon does, in a goroutine,
// and stops the test binary if that takes over 10 seconds or the heap
// grows past 1 GiB: bbolt looping on a damaged tree cannot be stopped,
// and would otherwise hang the tests or take the machine's memory.
func openWithin(t *testing.T, path string, cfg Config) ([]Lease, error) {
	t.Helper()
	type result struct {
		leases []Lease
		err    error
	}
	done := make(chan result, 1)
	go func() {
		l, err := openAndList(path, cfg)
		done <- result{l, err}
	}()
	deadline := time.After(10 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	heap := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	for {
		select {
		case r := <-done:
			return r.leases, r.err
		case <-deadline:
			panic(fmt.Sprintf("%s: opening %s did not return within 10s: bbolt loops on its damaged page tree", t.Name(), path))
		case <-tick.C:
			if metrics.Read(heap); heap[0].Value.Uint64() > 1<<30 {
				panic(fmt.Sprintf("%s: opening %s grew the heap past 1 GiB: bbolt loops on its damaged page tree", t.Name(), path))
			}
		}
	}
}

// writeLeases writes a store at path holding n leases, in one commit.
func writeLeases(t *testing.T, path string, cfg Config, n int) {
	t.Helper()
	a := newFamily(cfg.V4, nil)
	c := Change{Stamp: &Stamp{V4: cfg.V4}}
	since := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	for i, ip := 0, a.first; i < n; i, ip = i+1, ip.Next() {
		c.Put = append(c.Put, Lease{Key: podKey(i), IPs: []netip.Prefix{netip.PrefixFrom(ip, cfg.V4.Bits())}, Since: since})
	}
	b := openBolt(t, path)
	defer b.Close()
	if err := b.Commit(c); err != nil {
		t.Fatal(err)
	}
}

// pageTree locates pages of a store file for damaging it: bbolt finds
// them, the test writes bytes at their offsets.
type pageTree struct {
	pageSize int
	root     uint64 // the root bucket's page (a leaf holding the buckets)
	leases   uint64 // bucket leases' root page
}

func readTree(t *testing.T, path string, content []byte) pageTree {
	t.Helper()
	// The meta page: page header, magic, version, page size.
	pt := pageTree{pageSize: int(binary.NativeEndian.Uint32(content[pageHeaderLen+8:]))}
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.View(func(tx *bbolt.Tx) error {
		pt.root = uint64(tx.Cursor().Bucket().Root())
		pt.leases = uint64(tx.Bucket([]byte(bucketLeases)).Root())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return pt
}

// off returns the file offset of page id.
func (pt pageTree) off(id uint64) int { return int(id) * pt.pageSize }

func (pt pageTree) flags(b []byte, id uint64) uint16 {
	return binary.NativeEndian.Uint16(b[pt.off(id)+8:])
}

// branchChild returns the page that element i of branch page id points to.
func (pt pageTree) branchChild(b []byte, id uint64, i int) uint64 {
	return binary.NativeEndian.Uint64(b[pt.off(id)+pageHeaderLen+i*branchElemLen+8:])
}

func (pt pageTree) setBranchChild(b []byte, id uint64, i int, child uint64) {
	binary.NativeEndian.PutUint64(b[pt.off(id)+pageHeaderLen+i*branchElemLen+8:], child)
}

// inlineBucket returns the file offset of the page of the inline bucket
// name, found among the root bucket's leaf elements.
func (pt pageTree) inlineBucket(t *testing.T, b []byte, name string) int {
	t.Helper()
	p := pt.off(pt.root)
	count := int(binary.NativeEndian.Uint16(b[p+10:]))
	for i := range count {
		e := p + pageHeaderLen + i*leafElemLen
		pos, ksize := int(binary.NativeEndian.Uint32(b[e+4:])), int(binary.NativeEndian.Uint32(b[e+8:]))
		if !bytes.Equal(b[e+pos:e+pos+ksize], []byte(name)) {
			continue
		}
		v := e + pos + ksize
		if binary.NativeEndian.Uint64(b[v:]) != 0 {
			t.Fatalf("bucket %s is not inline", name)
		}
		return v + bucketHeaderLen
	}
	t.Fatalf("bucket %s not found in root page %d", name, pt.root)
	return 0
}

// TestPageWalkerDepth checks the depth limit on a chain of branch pages,
// each the only child of the one before: no loop, but deeper than any
// ipam store.
func TestPageWalkerDepth(t *testing.T) {
	const pageSize = 256
	chain := func(n int) []byte { // pages 2 to n+1 branch, n+2 an empty leaf
		b := make([]byte, (n+3)*pageSize)
		for id := 2; id <= n+2; id++ {
			p := b[id*pageSize:]
			binary.NativeEndian.PutUint64(p, uint64(id))
			if id == n+2 {
				binary.NativeEndian.PutUint16(p[8:], leafPageFlag)
				continue
			}
			binary.NativeEndian.PutUint16(p[8:], branchPageFlag)
			binary.NativeEndian.PutUint16(p[10:], 1)
			binary.NativeEndian.PutUint64(p[pageHeaderLen+8:], uint64(id+1))
		}
		return b
	}
	for _, tt := range []struct {
		n    int
		want string
	}{
		{maxTreeDepth, ""},
		{maxTreeDepth + 1, "is more than 32 levels deep"},
	} {
		b := chain(tt.n)
		w := &pageWalker{r: bytes.NewReader(b), fileSize: int64(len(b)), pageSize: pageSize, hwm: uint64(len(b) / pageSize), seen: map[uint64]bool{}}
		err := w.page(2, 0)
		if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("walking a chain of %d branch pages = %v, want %q", tt.n, err, tt.want)
		}
	}
}
