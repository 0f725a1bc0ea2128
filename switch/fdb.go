package vswitch

import (
	"errors"
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
// Lookups and refreshes of a known MAC on its own port take only the read
// lock; the write lock is taken when a MAC appears, moves or expires.
type FDB struct {
	maxEntries int
	maxPerPort int
	ttl        int64 // nanoseconds

	mu      sync.RWMutex // guards entries, perPort and the port field of each entry
	entries map[MAC]*fdbEntry
	perPort map[PortID]int
}

type fdbEntry struct {
	port PortID
	seen atomic.Int64 // UnixNano of the last frame from this MAC
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
	return &FDB{
		maxEntries: maxEntries,
		maxPerPort: maxPerPort,
		ttl:        int64(ttl),
		entries:    make(map[MAC]*fdbEntry),
		perPort:    make(map[PortID]int),
	}
}

// Lookup returns the port mac was last seen on, if it was seen within the
// aging time.
func (d *FDB) Lookup(mac MAC, now int64) (PortID, bool) {
	d.mu.RLock()
	e, ok := d.entries[mac]
	var port PortID
	if ok {
		port = e.port
		ok = now-e.seen.Load() <= d.ttl
	}
	d.mu.RUnlock()
	return port, ok
}

// Learn records that mac was seen on port at now. It returns ErrFDBFull or
// ErrPortFDBFull when a new MAC cannot be added; a MAC already known always
// moves or refreshes.
func (d *FDB) Learn(mac MAC, port PortID, now int64) error {
	d.mu.RLock()
	e, ok := d.entries[mac]
	if ok && e.port == port {
		// Write the shared cache line only when the coarse time changed.
		if e.seen.Load() != now {
			e.seen.Store(now)
		}
		d.mu.RUnlock()
		return nil
	}
	d.mu.RUnlock()

	d.mu.Lock()
	defer d.mu.Unlock()
	e, ok = d.entries[mac]
	switch {
	case ok && e.port == port:
	case ok:
		// The MAC moved: a VM migrated, a pod was re-attached. The old
		// entry is wrong either way, so it goes even if the new port is
		// full and the MAC cannot be learned there.
		d.dec(e.port)
		if d.perPort[port] >= d.maxPerPort {
			delete(d.entries, mac)
			return ErrPortFDBFull
		}
		e.port = port
		d.perPort[port]++
	default:
		if len(d.entries) >= d.maxEntries {
			return ErrFDBFull
		}
		if d.perPort[port] >= d.maxPerPort {
			return ErrPortFDBFull
		}
		e = &fdbEntry{port: port}
		d.entries[mac] = e
		d.perPort[port]++
	}
	e.seen.Store(now)
	return nil
}

func (d *FDB) dec(port PortID) {
	if d.perPort[port]--; d.perPort[port] <= 0 {
		delete(d.perPort, port)
	}
}

// Expire removes entries not seen within the aging time and returns how
// many it removed.
func (d *FDB) Expire(now int64) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for mac, e := range d.entries {
		if now-e.seen.Load() > d.ttl {
			delete(d.entries, mac)
			d.dec(e.port)
			n++
		}
	}
	return n
}

// Flush removes every entry of port, as when the port goes away.
func (d *FDB) Flush(port PortID) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for mac, e := range d.entries {
		if e.port == port {
			delete(d.entries, mac)
			n++
		}
	}
	delete(d.perPort, port)
	return n
}

// Len returns the number of entries, expired ones not yet removed included.
func (d *FDB) Len() int {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return len(d.entries)
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
	out := make([]FDBEntry, 0, len(d.entries))
	for mac, e := range d.entries {
		age := now - e.seen.Load()
		if age > d.ttl {
			continue
		}
		out = append(out, FDBEntry{MAC: mac, Port: e.port, Age: time.Duration(max(age, 0))})
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
