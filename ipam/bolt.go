package ipam

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime/debug"
	"time"

	"go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// ErrLocked is wrapped by OpenBolt's error when another process holds the
// store's lock.
var ErrLocked = errors.New("locked by another process")

// Bolt is a Store in a bbolt file. It holds the file's exclusive lock
// (flock) from OpenBolt to Close, so two daemons never share a store.
type Bolt struct {
	path string
	db   *bbolt.DB
}

var _ Store = (*Bolt)(nil)

// OpenBolt opens the store at path, creating it (mode 0600) if missing.
// It waits up to timeout for the file lock; timeout <= 0 means try once
// (bbolt itself would wait forever). A store that is locked, empty,
// corrupt or unreadable is an error naming the file: it is never reset.
// The page tree is checked before any bbolt cursor runs on it
// (checkPages), so a damaged page cannot make bbolt loop.
func OpenBolt(path string, timeout time.Duration) (*Bolt, error) {
	if err := ensureStoreFile(path); err != nil {
		return nil, err
	}
	if timeout <= 0 {
		timeout = time.Nanosecond // one try: bbolt checks the timeout after the first attempt
	}
	var db *bbolt.DB
	err := guard(func() error {
		var err error
		db, err = bbolt.Open(path, 0o600, &bbolt.Options{Timeout: timeout})
		return err
	})
	if err == nil {
		if err = guard(func() error { return checkPages(db, path) }); err != nil {
			db.Close()
		}
	}
	switch {
	case errors.Is(err, berrors.ErrTimeout):
		return nil, fmt.Errorf("ipam: store %s is %w (is another tapswitchd running?)", path, ErrLocked)
	case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrChecksum),
		errors.Is(err, berrors.ErrVersionMismatch), errors.Is(err, errCorrupt), errors.Is(err, errPageTree):
		return nil, fmt.Errorf("ipam: store %s is corrupt: %w (not starting with an empty store, which could hand running pods' addresses out again: repair it or move it away)", path, err)
	case err != nil:
		return nil, fmt.Errorf("ipam: open store %s: %w", path, err)
	}
	return &Bolt{path: path, db: db}, nil
}

// ensureStoreFile creates the store file if it is missing. An empty file
// is refused: createStoreFile never leaves one, and bbolt would silently
// start it afresh.
func ensureStoreFile(path string) error {
	fi, err := os.Stat(path)
	switch {
	case err == nil && fi.Size() == 0:
		return fmt.Errorf("ipam: store %s is empty (truncated?): refusing to start without its leases; remove it to start afresh", path)
	case err == nil:
		return nil
	case !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("ipam: store %s: %w", path, err)
	}
	return createStoreFile(path)
}

// createStoreFile initializes a bbolt file next to path and links it into
// place. bbolt initializes a file by writing its first pages, and a crash
// in the middle would leave a file that never opens again; linking a
// finished file means path is either missing or whole. Unlike rename,
// link fails when another process created path first, so that process's
// file (and lock) is never replaced.
func createStoreFile(path string) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".new-*") // mode 0600
	if err != nil {
		return fmt.Errorf("ipam: create store %s: %w", path, err)
	}
	name := tmp.Name()
	defer os.Remove(name)
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("ipam: create store %s: %w", path, err)
	}
	db, err := bbolt.Open(name, 0o600, nil) // writes and syncs the first pages
	if err != nil {
		return fmt.Errorf("ipam: create store %s: %w", path, err)
	}
	if err := db.Close(); err != nil {
		return fmt.Errorf("ipam: create store %s: %w", path, err)
	}
	if err := os.Link(name, path); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("ipam: create store %s: %w", path, err)
	}
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("ipam: create store %s: %w", path, err)
	}
	return nil
}

// syncDir makes a new directory entry durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Path returns the store's file, for messages.
func (b *Bolt) Path() string { return b.path }

// Load implements Store: one read transaction over both buckets.
func (b *Bolt) Load() (*State, error) {
	var r records
	err := guard(func() error {
		return b.db.View(func(tx *bbolt.Tx) error {
			var err error
			r, err = readRecords(tx)
			return err
		})
	})
	if err != nil {
		return nil, fmt.Errorf("ipam: store %s: %w", b.path, err)
	}
	st, err := decodeState(r)
	if err != nil {
		return nil, fmt.Errorf("ipam: store %s: %w", b.path, err)
	}
	return st, nil
}

// maxRecordLen bounds a record's key and value as read. Real ones are a
// few hundred bytes; a damaged page can claim a length of gigabytes, which
// must be refused before it is copied.
const maxRecordLen = 16 << 10

// readRecords copies every record out of tx: bbolt's slices are valid only
// inside the transaction.
func readRecords(tx *bbolt.Tx) (records, error) {
	r := records{meta: make(map[string][]byte)}
	err := tx.ForEach(func(name []byte, bk *bbolt.Bucket) error {
		switch string(name) {
		case bucketMeta:
			return bk.ForEach(func(k, v []byte) error {
				if err := checkRecord(bucketMeta, k, v); err != nil {
					return err
				}
				r.meta[string(k)] = bytes.Clone(v)
				return nil
			})
		case bucketLeases:
			return bk.ForEach(func(k, v []byte) error { // in key order
				if err := checkRecord(bucketLeases, k, v); err != nil {
					return err
				}
				r.leases = append(r.leases, record{key: bytes.Clone(k), value: bytes.Clone(v)})
				return nil
			})
		default:
			return fmt.Errorf("unexpected bucket %q: not a tapswitch ipam store", name)
		}
	})
	return r, err
}

// checkRecord refuses what no ipam record looks like, before it is copied.
func checkRecord(bucket string, k, v []byte) error {
	switch {
	case v == nil:
		return fmt.Errorf("bucket %s: unexpected nested bucket", bucket)
	case len(k) > maxRecordLen || len(v) > maxRecordLen:
		return fmt.Errorf("bucket %s: record of %d+%d bytes, want at most %d each", bucket, len(k), len(v), maxRecordLen)
	}
	return nil
}

// Commit implements Store: one read-write transaction, which bbolt syncs
// to disk before it returns.
func (b *Bolt) Commit(c Change) error {
	o, err := encodeChange(c)
	if err != nil {
		return fmt.Errorf("ipam: store %s: commit: %w", b.path, err)
	}
	err = guard(func() error {
		return b.db.Update(func(tx *bbolt.Tx) error { return writeOps(tx, o) })
	})
	if err != nil {
		return fmt.Errorf("ipam: store %s: commit: %w", b.path, err)
	}
	return nil
}

func writeOps(tx *bbolt.Tx, o ops) error {
	meta, err := tx.CreateBucketIfNotExists([]byte(bucketMeta))
	if err != nil {
		return err
	}
	leases, err := tx.CreateBucketIfNotExists([]byte(bucketLeases))
	if err != nil {
		return err
	}
	return applyOps(boltKV{meta: meta, leases: leases}, o)
}

// boltKV is a kv over the buckets of one bbolt transaction.
type boltKV struct{ meta, leases *bbolt.Bucket }

func (b boltKV) bucket(name string) *bbolt.Bucket {
	if name == bucketMeta {
		return b.meta
	}
	return b.leases
}

func (b boltKV) get(bucket string, k []byte) []byte   { return b.bucket(bucket).Get(k) }
func (b boltKV) put(bucket string, k, v []byte) error { return b.bucket(bucket).Put(k, v) }
func (b boltKV) del(bucket string, k []byte) error    { return b.bucket(bucket).Delete(k) }

// Close implements Store: it releases the file lock.
func (b *Bolt) Close() error {
	if err := b.db.Close(); err != nil {
		return fmt.Errorf("ipam: close store %s: %w", b.path, err)
	}
	return nil
}

// errCorrupt is wrapped by guard's error.
var errCorrupt = errors.New("corrupt store")

// guard runs fn and turns a panic into an error. bbolt trusts its pages
// (only its meta pages carry a checksum), so a damaged file can make it
// index out of range or read outside its mapping. SetPanicOnFault turns
// such a memory fault into a panic on this goroutine, which the recover
// catches: a corrupt store is an error naming the file, not a crash.
func guard(fn func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %v", errCorrupt, r)
		}
	}()
	return fn()
}
