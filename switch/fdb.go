package vswitch

import (
	"errors"
	"math"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// Reasons a MAC is not learned.
var (
	ErrFDBFull     = errors.New("fdb full")
	ErrPortFDBFull = errors.New("port fdb limit reached")
)

// FDB is the forwarding database: which port each source MAC was last seen
// on, and when. It is bounded in total and per port; when full, new MACs are
// refused (the frame is still forwarded, it is just not learned).
//
// The read path is lock-free. Entries live in an immutable map published
// through an atomic pointer; a lookup, and the refresh of a MAC seen again
// on its port, only load it and touch the entry's atomics. A new MAC goes
// first into a small map under mu, which lookups consult (with the lock)
// only while it is not empty, and is folded into a new published map soon:
// at once while the table is small, after a batch of 1/64 of its size when
// it is large, so learning a table of n MACs copies O(64n) entries, and at
// the latest at the next Publish. Moves update the entry in place; expiry
// and flushes publish a new map without the entries they remove.
type FDB struct {
	maxEntries int
	maxPerPort int
	ttl        int64 // nanoseconds

	table   atomic.Pointer[map[macKey]*fdbEntry] // immutable once published
	nRecent atomic.Int32                         // len(recent), read without mu

	mu      sync.RWMutex // guards recent, perPort and publishing table
	recent  map[macKey]*fdbEntry
	perPort map[PortID]int
}

// macKey is a MAC as a uint64, the map key: the runtime hashes a uint64
// with its fast path, a [6]byte with the generic one at twice the cost.
type macKey uint64

func keyOf(m MAC) macKey {
	return macKey(m[0])<<40 | macKey(m[1])<<32 | macKey(m[2])<<24 | macKey(m[3])<<16 | macKey(m[4])<<8 | macKey(m[5])
}

func (k macKey) mac() MAC {
	return MAC{byte(k >> 40), byte(k >> 32), byte(k >> 24), byte(k >> 16), byte(k >> 8), byte(k)}
}

type fdbEntry struct {
	port atomic.Uint32 // PortID
	seen atomic.Int64  // UnixNano of the last frame from this MAC
}

// FDBEntry is one learned MAC, as listed by Entries.
type FDBEntry struct {
	MAC  MAC
	Port PortID
	Age  time.Duration
}

// NewFDB returns an empty FDB. Entries expire ttl after their MAC was last
// seen; maxEntries bounds the whole table and maxPerPort each port.
func NewFDB(maxEntries, maxPerPort int, ttl time.Duration) *FDB {
	d := &FDB{
		maxEntries: maxEntries,
		maxPerPort: maxPerPort,
		ttl:        int64(ttl),
		recent:     make(map[macKey]*fdbEntry),
		perPort:    make(map[PortID]int),
	}
	d.table.Store(&map[macKey]*fdbEntry{})
	return d
}

// find returns mac's entry, or nil.
func (d *FDB) find(mac MAC) *fdbEntry {
	k := keyOf(mac)
	if e := (*d.table.Load())[k]; e != nil {
		return e
	}
	if d.nRecent.Load() == 0 {
		return nil
	}
	// Under the read lock, and with the table loaded again: a publish
	// may have moved the MAC from recent into a new table meanwhile.
	d.mu.RLock()
	e := d.findLocked(mac)
	d.mu.RUnlock()
	return e
}

// findLocked is find for a caller holding mu, for reading or writing.
func (d *FDB) findLocked(mac MAC) *fdbEntry {
	k := keyOf(mac)
	if e := (*d.table.Load())[k]; e != nil {
		return e
	}
	return d.recent[k]
}

// Lookup returns the port mac was last seen on, if it was seen within the
// aging time.
func (d *FDB) Lookup(mac MAC, now int64) (PortID, bool) {
	e := d.find(mac)
	if e == nil || now-e.seen.Load() > d.ttl {
		return 0, false
	}
	return PortID(e.port.Load()), true
}

// Learn records that mac was seen on port at now. It returns ErrFDBFull or
// ErrPortFDBFull when a new MAC cannot be added; a MAC already known always
// refreshes, and moves unless the new port is full.
func (d *FDB) Learn(mac MAC, port PortID, now int64) error {
	if e := d.find(mac); e != nil && PortID(e.port.Load()) == port {
		// Write the shared cache line only when the coarse time changed.
		if e.seen.Load() != now {
			e.seen.Store(now)
		}
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	e := d.findLocked(mac)
	switch {
	case e != nil && PortID(e.port.Load()) == port:
	case e != nil:
		// The MAC moved: a VM migrated, a pod was re-attached. The old
		// entry is wrong either way, so it goes even if the new port is
		// full and the MAC cannot be learned there.
		d.dec(PortID(e.port.Load()))
		if d.perPort[port] >= d.maxPerPort {
			// Leave the entry dead in place, with no port and expired,
			// rather than copy the table: the next Expire removes it,
			// and a Learn of the MAC revives it.
			e.port.Store(0)
			e.seen.Store(deadSeen)
			return ErrPortFDBFull
		}
		e.port.Store(uint32(port))
		d.perPort[port]++
	default:
		if len(*d.table.Load())+len(d.recent) >= d.maxEntries {
			return ErrFDBFull
		}
		if d.perPort[port] >= d.maxPerPort {
			return ErrPortFDBFull
		}
		e = &fdbEntry{}
		e.port.Store(uint32(port))
		e.seen.Store(now)
		d.recent[keyOf(mac)] = e
		d.nRecent.Store(int32(len(d.recent)))
		d.perPort[port]++
		if len(d.recent) >= max(1, len(*d.table.Load())/64) {
			d.publishLocked()
		}
	}
	e.seen.Store(now)
	return nil
}

// deadSeen is the last-seen time of a dead entry: long expired, yet far
// enough from the minimum that now-deadSeen cannot overflow.
const deadSeen = math.MinInt64 / 2

func (d *FDB) dec(port PortID) {
	if port == 0 {
		return // a dead entry, already counted off
	}
	if d.perPort[port]--; d.perPort[port] <= 0 {
		delete(d.perPort, port)
	}
}

// Publish folds the recently learned MACs into the lock-free table. The
// switch calls it every second, so no lookup takes the lock for longer.
func (d *FDB) Publish() {
	if d.nRecent.Load() == 0 {
		return
	}
	d.mu.Lock()
	d.publishLocked()
	d.mu.Unlock()
}

func (d *FDB) publishLocked() {
	if len(d.recent) == 0 {
		return
	}
	cur := *d.table.Load()
	next := make(map[macKey]*fdbEntry, len(cur)+len(d.recent))
	for k, e := range cur {
		next[k] = e
	}
	for k, e := range d.recent {
		next[k] = e
	}
	d.table.Store(&next)
	clear(d.recent)
	d.nRecent.Store(0)
}

// rebuildLocked publishes a table of the entries keep accepts, recent ones
// included, and returns how many it dropped. It does not count them off
// perPort: callers that drop live entries do.
func (d *FDB) rebuildLocked(keep func(macKey, *fdbEntry) bool) int {
	cur := *d.table.Load()
	next := make(map[macKey]*fdbEntry, len(cur)+len(d.recent))
	n := 0
	for _, m := range []map[macKey]*fdbEntry{cur, d.recent} {
		for k, e := range m {
			if keep(k, e) {
				next[k] = e
			} else {
				n++
			}
		}
	}
	d.table.Store(&next)
	clear(d.recent)
	d.nRecent.Store(0)
	return n
}

// Expire removes entries not seen within the aging time and returns how
// many it removed.
func (d *FDB) Expire(now int64) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.rebuildLocked(func(_ macKey, e *fdbEntry) bool {
		if now-e.seen.Load() > d.ttl {
			d.dec(PortID(e.port.Load()))
			return false
		}
		return true
	})
}

// Flush removes every entry of port, as when the port goes away.
func (d *FDB) Flush(port PortID) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.perPort, port)
	return d.rebuildLocked(func(_ macKey, e *fdbEntry) bool { return PortID(e.port.Load()) != port })
}

// Len returns the number of entries, expired ones not yet removed included.
func (d *FDB) Len() int {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return len(*d.table.Load()) + len(d.recent)
}

// PortLen returns the number of entries of one port.
func (d *FDB) PortLen(port PortID) int {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.perPort[port]
}

// Entries lists the live entries sorted by port, then MAC.
func (d *FDB) Entries(now int64) []FDBEntry {
	d.mu.RLock()
	var out []FDBEntry
	for _, m := range []map[macKey]*fdbEntry{*d.table.Load(), d.recent} {
		for k, e := range m {
			age := now - e.seen.Load()
			if age > d.ttl {
				continue
			}
			out = append(out, FDBEntry{MAC: k.mac(), Port: PortID(e.port.Load()), Age: time.Duration(max(age, 0))})
		}
	}
	d.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].Port != out[j].Port {
			return out[i].Port < out[j].Port
		}
		return string(out[i].MAC[:]) < string(out[j].MAC[:])
	})
	return out
}
