package ipam

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// ErrExhausted is wrapped by Allocate's error when a CIDR has no free pod
// address. The error's text names the CIDR and how many addresses are in
// use: "ipam: 10.244.0.0/29: no free address (4 of 4 in use)".
var ErrExhausted = errors.New("no free address")

// ErrClosed is returned by the Allocator's changing methods after Close.
var ErrClosed = errors.New("ipam: allocator is closed")

// ErrBroken is wrapped by the changing methods' errors after a commit
// failed and reloading the store failed too: memory may no longer match
// the store, so the Allocator refuses changes until the daemon restarts
// and loads the store afresh. Get and List still answer.
var ErrBroken = errors.New("allocator needs a restart")

// Allocator hands out pod addresses from one IPv4 CIDR and optionally one
// IPv6 CIDR, and keeps every lease in its Store. It is safe for concurrent
// use.
type Allocator struct {
	log   *slog.Logger
	store Store
	name  string  // the store, in messages
	v4    *family // never nil
	v6    *family // nil: IPv4 only

	// mu guards leases, stamped, closed, broken and the families' used
	// sets and cursors. It is held across store commits, against the
	// house rule of no I/O under a lock, on purpose: memory must change
	// exactly when the store does, and bbolt runs one writer at a time
	// anyway, so releasing it would buy no parallelism. Readers (Get,
	// List) wait at most one commit (two fdatasyncs), or one commit and a
	// reload after it failed.
	mu      sync.Mutex
	leases  map[Key]Lease
	stamped bool // the store holds the stamp
	closed  bool
	broken  error // non-nil: memory may differ from the store; wraps ErrBroken
}

// New loads store and checks it against cfg. A store stamped with other
// CIDRs is refused: the daemon does not re-number running pods. A new
// store is stamped with cfg's CIDRs in its first commit. Leases that fall
// inside a Reserve range added since are kept, logged and listed by
// ReservedLeases.
//
// Once New succeeds the Allocator owns store and Close closes it; after an
// error the caller still owns it. log may be nil.
func New(cfg Config, store Store, log *slog.Logger) (*Allocator, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if store == nil {
		return nil, errors.New("ipam: no store")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	a := &Allocator{
		log:    log,
		store:  store,
		name:   storeName(store),
		v4:     newFamily(cfg.V4, cfg.Reserve),
		leases: make(map[Key]Lease),
	}
	if cfg.V6.IsValid() {
		a.v6 = newFamily(cfg.V6, cfg.Reserve)
	}
	if err := a.load(); err != nil {
		return nil, err
	}
	for _, l := range a.ReservedLeases() {
		log.Warn("lease inside a reserved range kept", "container_id", l.Key.ContainerID, "ifname", l.Key.IfName, "ips", l.IPs)
	}
	v4, v6 := a.Size()
	log.Info("ipam loaded", "store", a.name, "cidrs", cidrs(cfg.V4, cfg.V6), "leases", len(a.leases), "size_v4", v4, "size_v6", v6)
	return a, nil
}

// storeName names a store in messages: its file for Bolt.
func storeName(s Store) string {
	if p, ok := s.(interface{ Path() string }); ok {
		return p.Path()
	}
	return fmt.Sprintf("%T", s)
}

// families returns the configured families, IPv4 first, in the order of a
// Lease's IPs.
func (a *Allocator) families() []*family {
	if a.v6 == nil {
		return []*family{a.v4}
	}
	return []*family{a.v4, a.v6}
}

// Allocate returns key's lease, allocating one if key has none. Asking
// again with the same key returns the same lease and commits nothing.
// Addresses rotate: each family's search starts after the address handed
// out last. On error nothing is allocated: with IPv4 free and IPv6
// exhausted, neither is taken.
func (a *Allocator) Allocate(key Key) (Lease, error) {
	if err := key.Validate(); err != nil {
		return Lease{}, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.usable(); err != nil {
		return Lease{}, err
	}
	if l, ok := a.leases[key]; ok {
		return l.clone(), nil
	}
	lease := Lease{Key: key, Since: time.Now().UTC()}
	for _, f := range a.families() {
		addr, err := f.pick()
		if err != nil {
			return Lease{}, err
		}
		lease.IPs = append(lease.IPs, netip.PrefixFrom(addr, f.prefix.Bits()))
	}
	c := Change{Put: []Lease{lease}, Cursor4: lease.IPs[0].Addr()}
	if a.v6 != nil {
		c.Cursor6 = lease.IPs[1].Addr()
	}
	if err := a.commit(c); err != nil {
		return Lease{}, err
	}
	a.add(lease)
	a.v4.cursor = c.Cursor4
	if a.v6 != nil {
		a.v6.cursor = c.Cursor6
	}
	a.log.Debug("allocated", "container_id", key.ContainerID, "ifname", key.IfName, "ips", lease.IPs)
	return lease.clone(), nil
}

// Release frees key's lease and returns it. An unknown key is not an
// error (CNI DEL is idempotent): it returns the zero Lease and false.
func (a *Allocator) Release(key Key) (Lease, bool, error) {
	if err := key.Validate(); err != nil {
		return Lease{}, false, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.usable(); err != nil {
		return Lease{}, false, err
	}
	l, ok := a.leases[key]
	if !ok {
		return Lease{}, false, nil
	}
	if err := a.commit(Change{Delete: []Key{key}}); err != nil {
		return Lease{}, false, err
	}
	a.remove(l)
	a.log.Debug("released", "container_id", key.ContainerID, "ifname", key.IfName, "ips", l.IPs)
	return l.clone(), true, nil
}

// GC releases, in one commit, every lease whose key is not in live, and
// returns them sorted by key.
func (a *Allocator) GC(live []Key) ([]Lease, error) {
	keep := make(map[Key]bool, len(live))
	for _, k := range live {
		keep[k] = true
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.usable(); err != nil {
		return nil, err
	}
	var gone []Lease
	var keys []Key
	for k, l := range a.leases {
		if !keep[k] {
			gone = append(gone, l.clone())
			keys = append(keys, k)
		}
	}
	if len(gone) == 0 {
		return nil, nil
	}
	if err := a.commit(Change{Delete: keys}); err != nil {
		return nil, err
	}
	for _, l := range gone {
		a.remove(l)
	}
	slices.SortFunc(gone, func(x, y Lease) int { return compareKeys(x.Key, y.Key) })
	a.log.Info("released leases of gone attachments", "count", len(gone))
	return gone, nil
}

// Get returns key's lease.
func (a *Allocator) Get(key Key) (Lease, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	l, ok := a.leases[key]
	return l.clone(), ok
}

// List returns every lease, sorted by key.
func (a *Allocator) List() []Lease {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]Lease, 0, len(a.leases))
	for _, l := range a.leases {
		out = append(out, l.clone())
	}
	slices.SortFunc(out, func(x, y Lease) int { return compareKeys(x.Key, y.Key) })
	return out
}

// ReservedLeases returns the leases with an address inside a Reserve
// range, sorted by key: leases made before their range was reserved. They
// are kept until released; their addresses are not handed out again.
func (a *Allocator) ReservedLeases() []Lease {
	var out []Lease
	for _, l := range a.List() {
		for i, f := range a.families() {
			if _, ok := f.reserved(l.IPs[i].Addr()); ok {
				out = append(out, l)
				break
			}
		}
	}
	return out
}

// InUse returns the number of leases per family.
func (a *Allocator) InUse() (v4, v6 int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.v6 != nil {
		v6 = len(a.v6.used)
	}
	return len(a.v4.used), v6
}

// Free returns the number of addresses per family that Allocate can still
// hand out; v6 is 0 when IPv4 only. Leases inside Reserve ranges do not
// count against it.
func (a *Allocator) Free() (v4, v6 uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.v6 != nil {
		v6 = a.v6.size - min(a.v6.podsInUse(), a.v6.size)
	}
	return a.v4.size - min(a.v4.podsInUse(), a.v4.size), v6
}

// Size returns the number of pod addresses per family: the CIDR without
// network, gateway, host port, broadcast and Reserve ranges, capped at
// math.MaxUint64 for huge IPv6 ranges. v6 is 0 when IPv4 only.
func (a *Allocator) Size() (v4, v6 uint64) {
	if a.v6 != nil {
		v6 = a.v6.size
	}
	return a.v4.size, v6 // sizes never change after New: no lock needed
}

// Close closes the store (releasing Bolt's file lock). Later Allocate,
// Adopt, Release and GC calls return ErrClosed; Get and List still answer
// from memory. Close is safe to call twice.
func (a *Allocator) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil
	}
	a.closed = true
	return a.store.Close()
}

// usable returns why the changing methods must not run, or nil.
func (a *Allocator) usable() error {
	if a.closed {
		return ErrClosed
	}
	return a.broken
}

// commit writes c, adding the stamp to a new store's first commit.
//
// After a failed commit, c may be in the store all the same: bbolt writes
// its meta page into the file before the sync that fails, rolls back and
// returns the error, but later transactions read the newer meta page. So
// memory is reloaded from the store, whatever it holds now; the caller
// returns the error and changes nothing itself. A lease committed that
// way is held until released, like one whose ADD failed later. If the
// reload fails too, the Allocator refuses changes (ErrBroken).
func (a *Allocator) commit(c Change) error {
	if !a.stamped {
		c.Stamp = a.stamp()
	}
	err := a.store.Commit(c)
	if err == nil {
		a.stamped = true
		return nil
	}
	if rerr := a.load(); rerr != nil {
		a.broken = fmt.Errorf("ipam: %w: reloading store %s after a failed commit: %w", ErrBroken, a.name, rerr)
		a.log.Error("ipam memory may differ from the store; restart to reload it", "store", a.name, "commit_error", err, "reload_error", rerr)
		return errors.Join(err, a.broken)
	}
	a.log.Warn("commit failed; reloaded the store", "store", a.name, "error", err)
	return err
}

// load replaces the in-memory state (leases, used sets, cursors, stamped)
// with the store's content, checked as restore checks it. On error memory
// is unchanged.
func (a *Allocator) load() error {
	st, err := a.store.Load()
	if err != nil {
		return err
	}
	fresh := &Allocator{name: a.name, v4: a.v4.blank(), leases: make(map[Key]Lease)}
	if a.v6 != nil {
		fresh.v6 = a.v6.blank()
	}
	if err := fresh.restore(st); err != nil {
		return err
	}
	a.leases, a.stamped = fresh.leases, fresh.stamped
	a.v4.setState(fresh.v4)
	if a.v6 != nil {
		a.v6.setState(fresh.v6)
	}
	return nil
}

// stamp returns the configured CIDRs as a Stamp.
func (a *Allocator) stamp() *Stamp {
	s := &Stamp{V4: a.v4.prefix}
	if a.v6 != nil {
		s.V6 = a.v6.prefix
	}
	return s
}

// add records l in memory; l's addresses are known to be free.
func (a *Allocator) add(l Lease) {
	a.leases[l.Key] = l
	for i, f := range a.families() {
		f.add(l.IPs[i].Addr(), l.Key)
	}
}

// remove forgets l in memory.
func (a *Allocator) remove(l Lease) {
	delete(a.leases, l.Key)
	for i, f := range a.families() {
		f.remove(l.IPs[i].Addr())
	}
}
