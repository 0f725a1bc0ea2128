package vswitch

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// PortID names a port for the lifetime of the switch. IDs are not reused.
type PortID uint32

// Options configure a Switch. The zero value of each field means its default.
type Options struct {
	// FDBSize bounds the forwarding database (default 65536 entries).
	FDBSize int
	// FDBPortLimit bounds the entries learned on one port (default 1024).
	FDBPortLimit int
	// AgingTime is how long a learned MAC lives without traffic (default 300s).
	AgingTime time.Duration
	// QueueLen is each port's egress queue, in frames (default 1024).
	QueueLen int
	// BatchSize is the most frames one read or write moves (default 64).
	BatchSize int
	// Now is the clock, for tests (default time.Now).
	Now func() time.Time
	// Logger receives lifecycle events (default: discard).
	Logger *slog.Logger
}

func (o *Options) setDefaults() {
	if o.FDBSize <= 0 {
		o.FDBSize = 65536
	}
	if o.FDBPortLimit <= 0 {
		o.FDBPortLimit = 1024
	}
	if o.AgingTime <= 0 {
		o.AgingTime = 300 * time.Second
	}
	if o.QueueLen <= 0 {
		o.QueueLen = 1024
	}
	if o.BatchSize <= 0 {
		o.BatchSize = 64
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Switch is a learning Ethernet switch between Ports.
//
// Goroutines: per port, one readLoop per receive queue and one writeLoop;
// one ageLoop for the switch. RemovePort and Close stop and wait for them.
// A reader forwards its batch itself (no central goroutine): it learns,
// looks up, and puts each frame on the egress queue of its destination.
// Egress queues are bounded; a full queue drops the frame and counts it on
// that port, so a slow port never stalls a reader.
type Switch struct {
	opts  Options
	log   *slog.Logger
	fdb   *FDB
	pools *Pools
	binds bindings
	rt    routerState // see router.go

	mu     sync.Mutex // guards nextID, closed and the publishing of ports
	nextID PortID
	closed bool
	ports  atomic.Pointer[portTable] // immutable snapshot, read lock-free

	// now is the coarse clock of the frame path, in UnixNano truncated
	// to the second; ageLoop advances it.
	now atomic.Int64

	handoffs sync.Pool // of *handoff, for Forward

	stop chan struct{}
	wg   sync.WaitGroup // ageLoop
}

// portTable is an immutable snapshot of the attached ports.
type portTable struct {
	list []*portState
	byID map[PortID]*portState
}

// portState is the switch's side of one attached port.
type portState struct {
	id    PortID
	port  Port
	name  string
	caps  Caps
	c     counters
	queue chan *Frame
	// wmu serializes WriteBatch between the writer and readers writing
	// directly (see handoff); readers only TryLock it.
	wmu sync.Mutex
	// policer, if set, limits the rate of frames written to the port
	// (SetTxLimit). Guarded by wmu.
	policer *policer
	// pending counts frames queued and not yet written.
	pending atomic.Int64
	removed atomic.Bool
	done    chan struct{}
	wg      sync.WaitGroup // its readLoops and writeLoop
}

// New returns a running switch with no ports.
func New(opts Options) *Switch {
	opts.setDefaults()
	s := &Switch{
		opts:  opts,
		log:   opts.Logger,
		fdb:   NewFDB(opts.FDBSize, opts.FDBPortLimit, opts.AgingTime),
		pools: NewPools(),
		stop:  make(chan struct{}),
	}
	s.ports.Store(&portTable{byID: map[PortID]*portState{}})
	s.handoffs.New = func() any { return new(handoff) }
	s.now.Store(s.coarseNow())
	s.wg.Add(1)
	go s.ageLoop()
	return s
}

// ErrSwitchClosed is returned by AddPort after Close.
var ErrSwitchClosed = errors.New("switch closed")

// ErrNoPort is returned for a PortID that is not attached.
var ErrNoPort = errors.New("no such port")

// AddPort attaches p and starts its goroutines. The switch owns p from then
// on and closes it in RemovePort or Close. If AddPort fails, p stays the
// caller's.
func (s *Switch) AddPort(p Port) (PortID, error) {
	caps := p.Caps()
	if caps.MaxFrame < EtherHdrLen {
		return 0, fmt.Errorf("vswitch: port %s: max frame %d is below an Ethernet header", p.Name(), caps.MaxFrame)
	}
	queues := p.Queues()
	if queues < 1 {
		return 0, fmt.Errorf("vswitch: port %s: %d queues", p.Name(), queues)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, ErrSwitchClosed
	}
	s.nextID++
	ps := &portState{
		id:    s.nextID,
		port:  p,
		name:  p.Name(),
		caps:  caps,
		queue: make(chan *Frame, s.opts.QueueLen),
		done:  make(chan struct{}),
	}
	s.publish(func(t *portTable) { t.byID[ps.id] = ps })
	ps.wg.Add(queues + 1)
	for q := range queues {
		go s.readLoop(ps, q)
	}
	go s.writeLoop(ps)
	s.log.Info("port added", "port", ps.name, "port_id", ps.id, "queues", queues, "gso", caps.GSO, "max_frame", caps.MaxFrame)
	return ps.id, nil
}

// publish copies the port table, lets fn change the copy, and stores it.
// The caller holds s.mu.
func (s *Switch) publish(fn func(*portTable)) {
	cur := s.ports.Load()
	next := &portTable{byID: make(map[PortID]*portState, len(cur.byID)+1)}
	for id, ps := range cur.byID {
		next.byID[id] = ps
	}
	fn(next)
	next.list = make([]*portState, 0, len(next.byID))
	for _, ps := range next.byID {
		next.list = append(next.list, ps)
	}
	// A stable order keeps flooding and listings deterministic.
	slices.SortFunc(next.list, func(a, b *portState) int { return cmp.Compare(a.id, b.id) })
	s.ports.Store(next)
}

// RemovePort detaches a port: it stops its goroutines, closes it, forgets
// its MACs and its address bindings, and releases frames still queued.
func (s *Switch) RemovePort(id PortID) error {
	s.mu.Lock()
	ps, ok := s.ports.Load().byID[id]
	if !ok {
		s.mu.Unlock()
		return fmt.Errorf("vswitch: remove port %d: %w", id, ErrNoPort)
	}
	s.publish(func(t *portTable) { delete(t.byID, id) })
	s.mu.Unlock()
	return s.stopPort(ps)
}

func (s *Switch) stopPort(ps *portState) error {
	ps.removed.Store(true)
	err := ps.port.Close()
	close(ps.done)
	ps.wg.Wait()
	s.fdb.Flush(ps.id)
	s.binds.update(func(m map[netip.Addr]Binding) {
		for ip, b := range m {
			if b.Port == ps.id {
				delete(m, ip)
			}
		}
	})
	s.log.Info("port removed", "port", ps.name, "port_id", ps.id)
	if err != nil {
		return fmt.Errorf("vswitch: close port %s: %w", ps.name, err)
	}
	return nil
}

// Close removes every port and stops the switch.
func (s *Switch) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	t := s.ports.Load()
	s.publish(func(t *portTable) { clear(t.byID) })
	s.mu.Unlock()
	var errs []error
	for _, ps := range t.list {
		errs = append(errs, s.stopPort(ps))
	}
	close(s.stop)
	s.wg.Wait()
	return errors.Join(errs...)
}

// Bind tells the ARP responder that ip belongs to mac on port b.Port.
func (s *Switch) Bind(b Binding) error {
	if !b.IP.Is4() && !b.IP.Is6() {
		return fmt.Errorf("vswitch: bind: invalid address %v", b.IP)
	}
	b.IP = b.IP.Unmap() // the key and the answer use the same form
	var err error
	s.binds.update(func(m map[netip.Addr]Binding) {
		// Check under the bindings' lock: RemovePort unpublishes the port
		// before it takes that lock to drop the port's bindings, so a
		// binding added here can never outlive its port.
		if _, ok := s.ports.Load().byID[b.Port]; !ok {
			err = fmt.Errorf("vswitch: bind %v: %w", b.IP, ErrNoPort)
			return
		}
		m[b.IP] = b
	})
	return err
}

// Unbind forgets the binding of ip.
func (s *Switch) Unbind(ip netip.Addr) {
	s.binds.update(func(m map[netip.Addr]Binding) { delete(m, ip.Unmap()) })
}

// Bindings lists the address bindings the ARP responder answers for.
func (s *Switch) Bindings() []Binding { return s.binds.list() }

// FDBRecord is one learned MAC with the name of its port.
type FDBRecord struct {
	MAC      MAC           `json:"mac"`
	Port     PortID        `json:"port_id"`
	PortName string        `json:"port"`
	Age      time.Duration `json:"age_ns"`
}

// FDB lists the learned MACs.
func (s *Switch) FDB() []FDBRecord {
	t := s.ports.Load()
	entries := s.fdb.Entries(s.now.Load())
	out := make([]FDBRecord, 0, len(entries))
	for _, e := range entries {
		r := FDBRecord{MAC: e.MAC, Port: e.Port, Age: e.Age}
		if ps, ok := t.byID[e.Port]; ok {
			r.PortName = ps.name
		}
		out = append(out, r)
	}
	return out
}

// Stats returns a snapshot of every port's counters, in port order.
func (s *Switch) Stats() []PortStats {
	t := s.ports.Load()
	out := make([]PortStats, 0, len(t.list))
	for _, ps := range t.list {
		out = append(out, s.snapshot(ps))
	}
	return out
}

// PortStats returns one port's counters.
func (s *Switch) PortStats(id PortID) (PortStats, error) {
	ps, ok := s.ports.Load().byID[id]
	if !ok {
		return PortStats{}, fmt.Errorf("vswitch: stats of port %d: %w", id, ErrNoPort)
	}
	return s.snapshot(ps), nil
}

func (s *Switch) snapshot(ps *portState) PortStats {
	st := ps.c.snapshot()
	st.ID, st.Name = ps.id, ps.name
	st.FDBEntries = s.fdb.PortLen(ps.id)
	if dc, ok := ps.port.(DropCounter); ok {
		for reason, n := range dc.Drops() {
			st.Drops[reason] += n
		}
	}
	return st
}

// coarseNow reads the clock to the second, the resolution of the FDB.
func (s *Switch) coarseNow() int64 { return s.opts.Now().Truncate(time.Second).UnixNano() }

// ageLoop advances the coarse clock the frame path reads, once a second,
// folds newly learned MACs into the FDB's lock-free table, and removes
// expired FDB entries. Lookups already ignore those; removing
// them only returns their memory and their place under the limits.
func (s *Switch) ageLoop() {
	defer s.wg.Done()
	every := min(max(s.opts.AgingTime/10, time.Second), 30*time.Second)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	lastSweep := s.now.Load()
	for {
		select {
		case <-s.stop:
			return
		case <-tick.C:
		}
		now := s.coarseNow()
		s.now.Store(now)
		s.fdb.Publish()
		if time.Duration(now-lastSweep) < every {
			continue
		}
		lastSweep = now
		if n := s.fdb.Expire(now); n > 0 {
			s.log.Debug("fdb entries expired", "count", n)
		}
		if n := s.rt.flows.expire(now); n > 0 {
			s.log.Debug("host flows expired", "count", n)
		}
	}
}
