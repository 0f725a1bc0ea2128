package ipam

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"

	"go.etcd.io/bbolt"
)

// errPageTree is wrapped by checkPages' error when the page tree is
// damaged (rather than unreadable).
var errPageTree = errors.New("damaged page tree")

// bbolt's file format, from go.etcd.io/bbolt internal/common (page.go,
// meta.go, bucket.go, types.go). Integers are in the host's byte order.
const (
	pageHeaderLen   = 16 // id u64, flags u16, count u16, overflow u32
	branchElemLen   = 16 // pos u32, ksize u32, pgid u64; pos counts from the element
	leafElemLen     = 16 // flags u32, pos u32, ksize u32, vsize u32; pos counts from the element
	bucketHeaderLen = 16 // root pgid u64 (0: inline, the page follows), sequence u64

	branchPageFlag = 0x01
	leafPageFlag   = 0x02
	bucketLeafFlag = 0x01 // a leaf element whose value is a bucket

	// A meta page's body, after the page header: magic u32, version u32,
	// page size u32, flags u32, root bucket (root pgid u64, sequence u64),
	// freelist pgid u64, high water mark u64, txid u64, then the FNV-64a
	// checksum of the 56 bytes before it.
	metaMagic      = 0xED0CDAED
	metaVersion    = 2
	metaRootOff    = 16
	metaHWMOff     = 40
	metaTxidOff    = 48
	metaSumOff     = 56
	metaPageMinLen = pageHeaderLen + metaSumOff + 8

	// maxTreeDepth bounds the walk, buckets in buckets included. A B+tree
	// of 4 KiB pages holding every IPv4 pod address is 4 levels deep.
	maxTreeDepth = 32
)

// checkPages walks the page tree of db's current commit, as read from the
// file at path, before any bbolt cursor runs on it.
//
// bbolt trusts its pages: only the meta pages carry a checksum, and a
// cursor follows branch pointers without checking them. A branch element
// pointing back at its own page makes a cursor descend forever, appending
// to its stack until the process dies of "fatal error: out of memory",
// which no recover catches. bbolt's own Tx.Check recurses the same way.
// So the walk checks, from the root bucket's page and from every bucket's
// root: each page lies below the meta's high water mark, self-identifies,
// is a branch or leaf page, is reached once (no loops, no shared pages) and
// no deeper than maxTreeDepth; every element lies inside its page. Pages
// are read from the file, not the mmap: a page past the end of the file is
// then a read error, not a fault.
func checkPages(db *bbolt.DB, path string) error {
	var txid, size int64
	if err := db.View(func(tx *bbolt.Tx) error { // reads only the meta
		txid, size = int64(tx.ID()), tx.Size()
		return nil
	}); err != nil {
		return err
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	w := &pageWalker{r: f, fileSize: fi.Size(), pageSize: int64(db.Info().PageSize), seen: make(map[uint64]bool)}
	root, err := w.meta(uint64(txid))
	if err != nil {
		return err
	}
	if int64(w.hwm)*w.pageSize != size {
		return fmt.Errorf("%w: meta page of transaction %d claims %d pages, bbolt %d", errPageTree, txid, w.hwm, size/w.pageSize)
	}
	return w.page(root, 0)
}

// pageWalker reads and checks pages of one commit.
type pageWalker struct {
	r        io.ReaderAt
	fileSize int64
	pageSize int64
	hwm      uint64          // pages below this id are in use or free
	seen     map[uint64]bool // pages reached so far, overflow pages included
}

// meta finds the meta page bbolt chose, the valid one of transaction
// txid, and returns its root bucket's page.
func (w *pageWalker) meta(txid uint64) (uint64, error) {
	buf := make([]byte, metaPageMinLen)
	for id := range int64(2) {
		if _, err := w.r.ReadAt(buf, id*w.pageSize); err != nil {
			return 0, fmt.Errorf("read meta page %d: %w", id, err)
		}
		m := buf[pageHeaderLen:]
		h := fnv.New64a()
		h.Write(m[:metaSumOff])
		switch {
		case binary.NativeEndian.Uint32(m) != metaMagic, binary.NativeEndian.Uint32(m[4:]) != metaVersion,
			binary.NativeEndian.Uint64(m[metaSumOff:]) != h.Sum64(),
			binary.NativeEndian.Uint64(m[metaTxidOff:]) != txid:
			continue
		}
		w.hwm = binary.NativeEndian.Uint64(m[metaHWMOff:])
		return binary.NativeEndian.Uint64(m[metaRootOff:]), nil
	}
	return 0, fmt.Errorf("%w: no valid meta page of transaction %d", errPageTree, txid)
}

// page checks page id and the pages below it. depth counts the pages and
// buckets above it.
func (w *pageWalker) page(id uint64, depth int) error {
	if depth > maxTreeDepth {
		return fmt.Errorf("%w: page %d is more than %d levels deep", errPageTree, id, maxTreeDepth)
	}
	if id < 2 || id >= w.hwm { // 0 and 1 are the meta pages
		return fmt.Errorf("%w: page %d is outside the data pages 2 to %d", errPageTree, id, w.hwm-1)
	}
	hdr := make([]byte, pageHeaderLen)
	if _, err := w.r.ReadAt(hdr, int64(id)*w.pageSize); err != nil {
		return fmt.Errorf("read page %d: %w", id, err)
	}
	self, flags, count := binary.NativeEndian.Uint64(hdr), binary.NativeEndian.Uint16(hdr[8:]), binary.NativeEndian.Uint16(hdr[10:])
	overflow := uint64(binary.NativeEndian.Uint32(hdr[12:]))
	switch {
	case self != id:
		return fmt.Errorf("%w: page %d calls itself page %d", errPageTree, id, self)
	case flags != branchPageFlag && flags != leafPageFlag:
		return fmt.Errorf("%w: page %d has flags %#x, want a branch or leaf page", errPageTree, id, flags)
	case overflow >= w.hwm-id || int64(id+overflow+1) > w.fileSize/w.pageSize:
		return fmt.Errorf("%w: page %d with %d overflow pages runs past the last page", errPageTree, id, overflow)
	}
	for p := id; p <= id+overflow; p++ {
		if w.seen[p] {
			return fmt.Errorf("%w: page %d is reached twice (a loop or a shared page)", errPageTree, p)
		}
		w.seen[p] = true
	}
	buf := make([]byte, int64(overflow+1)*w.pageSize)
	if _, err := w.r.ReadAt(buf, int64(id)*w.pageSize); err != nil {
		return fmt.Errorf("read page %d: %w", id, err)
	}
	name := fmt.Sprintf("page %d", id)
	if flags == leafPageFlag {
		return w.leaf(name, buf, count, depth)
	}
	if count == 0 {
		return fmt.Errorf("%w: branch %s is empty", errPageTree, name)
	}
	if err := elementsFit(name, buf, count); err != nil {
		return err
	}
	for i := range int(count) {
		e := buf[pageHeaderLen+i*branchElemLen:]
		pos, ksize := uint64(binary.NativeEndian.Uint32(e)), uint64(binary.NativeEndian.Uint32(e[4:]))
		if pos+ksize > uint64(len(e)) {
			return fmt.Errorf("%w: %s: key %d runs past the page", errPageTree, name, i)
		}
		if err := w.page(binary.NativeEndian.Uint64(e[8:]), depth+1); err != nil {
			return err
		}
	}
	return nil
}

// leaf checks a leaf page's elements (buf: the page and its overflow, or
// an inline bucket's page) and walks the buckets among them.
func (w *pageWalker) leaf(name string, buf []byte, count uint16, depth int) error {
	if err := elementsFit(name, buf, count); err != nil {
		return err
	}
	for i := range int(count) {
		e := buf[pageHeaderLen+i*leafElemLen:]
		flags, pos := binary.NativeEndian.Uint32(e), uint64(binary.NativeEndian.Uint32(e[4:]))
		ksize, vsize := uint64(binary.NativeEndian.Uint32(e[8:])), uint64(binary.NativeEndian.Uint32(e[12:]))
		if pos+ksize+vsize > uint64(len(e)) {
			return fmt.Errorf("%w: %s: record %d runs past the page", errPageTree, name, i)
		}
		if flags&bucketLeafFlag == 0 {
			continue
		}
		if err := w.bucket(name, e[pos+ksize:pos+ksize+vsize], depth+1); err != nil {
			return err
		}
	}
	return nil
}

// bucket checks a bucket stored as value v in the leaf called name.
func (w *pageWalker) bucket(name string, v []byte, depth int) error {
	if len(v) < bucketHeaderLen {
		return fmt.Errorf("%w: %s: bucket record of %d bytes, want at least %d", errPageTree, name, len(v), bucketHeaderLen)
	}
	if root := binary.NativeEndian.Uint64(v); root != 0 {
		return w.page(root, depth)
	}
	// An inline bucket: its one page, always a leaf, follows the header.
	// bbolt returns that page for any page id the bucket asks for, so
	// branch flags here would make a cursor loop too.
	inline := v[bucketHeaderLen:]
	name = "inline bucket in " + name
	if len(inline) < pageHeaderLen {
		return fmt.Errorf("%w: %s: %d bytes, too short for a page", errPageTree, name, len(inline))
	}
	if flags := binary.NativeEndian.Uint16(inline[8:]); flags != leafPageFlag {
		return fmt.Errorf("%w: %s has flags %#x, want a leaf page", errPageTree, name, flags)
	}
	if depth > maxTreeDepth {
		return fmt.Errorf("%w: %s is more than %d levels deep", errPageTree, name, maxTreeDepth)
	}
	return w.leaf(name, inline, binary.NativeEndian.Uint16(inline[10:]), depth)
}

// elementsFit checks that count elements fit in the page buf.
func elementsFit(name string, buf []byte, count uint16) error {
	if n := pageHeaderLen + int(count)*branchElemLen; n > len(buf) { // both element kinds are 16 bytes
		return fmt.Errorf("%w: %s: %d elements do not fit in %d bytes", errPageTree, name, count, len(buf))
	}
	return nil
}
