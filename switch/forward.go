package vswitch

import (
	"errors"
	"time"
)

// readLoop reads batches from one queue of a port and forwards them until
// the port is closed.
func (s *Switch) readLoop(ps *portState, q int) {
	defer ps.wg.Done()
	frames := make([]*Frame, s.opts.BatchSize)
	var backoff time.Duration
	for {
		n, err := ps.port.ReadBatch(q, frames)
		if n > 0 {
			s.Forward(ps.id, frames[:n])
			clear(frames[:n])
		}
		if err == nil {
			backoff = 0
			continue
		}
		if errors.Is(err, ErrClosed) || ps.removed.Load() {
			return
		}
		// Never retry in a tight loop: back off, doubling to a second.
		ps.c.readErrors.Add(1)
		backoff = min(max(2*backoff, 10*time.Millisecond), time.Second)
		if backoff == time.Second {
			s.log.Warn("port read failing", "port", ps.name, "queue", q, "err", err)
		}
		select {
		case <-ps.done:
			return
		case <-time.After(backoff):
		}
	}
}

// writeLoop takes frames from the port's egress queue and writes them in
// batches until the port is removed; it then releases what is left.
func (s *Switch) writeLoop(ps *portState) {
	defer ps.wg.Done()
	batch := make([]*Frame, 0, s.opts.BatchSize)
	lens := make([]int, 0, s.opts.BatchSize)
	for {
		select {
		case f := <-ps.queue:
			batch = append(batch, f)
		case <-ps.done:
			for {
				select {
				case f := <-ps.queue:
					f.Release()
				default:
					return
				}
			}
		}
	fill:
		for len(batch) < cap(batch) {
			select {
			case f := <-ps.queue:
				batch = append(batch, f)
			default:
				break fill
			}
		}
		// WriteBatch releases the frames, so take their lengths first.
		for _, f := range batch {
			lens = append(lens, f.Len())
		}
		s.write(ps, batch, lens)
		clear(batch)
		batch, lens = batch[:0], lens[:0]
	}
}

// write hands batch to the port, whose WriteBatch takes ownership of every
// frame and releases it, sent or not. lens holds the frames' lengths. The
// port sent the first n frames; the others are dropped and counted. They
// are not retried: they are already back in their pool.
func (s *Switch) write(ps *portState, batch []*Frame, lens []int) {
	n, _ := ps.port.WriteBatch(batch)
	n = min(max(n, 0), len(batch))
	var bytes uint64
	for _, l := range lens[:n] {
		bytes += uint64(l)
	}
	ps.c.txFrames.Add(uint64(n))
	ps.c.txBytes.Add(bytes)
	if n < len(batch) {
		ps.c.drops[DropWriteError].Add(uint64(len(batch) - n))
	}
}

// Forward switches frames that arrived on port in, as a port's reader does.
// It takes ownership of every frame: each one is queued on its destination
// ports or released. Frames from a port that is not attached are released.
func (s *Switch) Forward(in PortID, frames []*Frame) {
	t := s.ports.Load()
	ps, ok := t.byID[in]
	if !ok {
		for _, f := range frames {
			f.Release()
		}
		return
	}
	// Count before forwarding: once a frame is queued it may be written
	// and its buffer reused, and a reader of Stats who saw it arrive
	// expects it counted.
	var bytes uint64
	for _, f := range frames {
		bytes += uint64(f.Len())
	}
	ps.c.rxFrames.Add(uint64(len(frames)))
	ps.c.rxBytes.Add(bytes)
	// The coarse clock: reading the real one costs more than forwarding a
	// frame on some virtual machines, and FDB refreshes then write their
	// entry at most once a second.
	now := s.now.Load()
	for _, f := range frames {
		s.forward(t, ps, f, now)
	}
}

// forward decides where one frame goes and sends it there.
func (s *Switch) forward(t *portTable, in *portState, f *Frame, now int64) {
	b := f.Bytes()
	if len(b) < EtherHdrLen {
		s.drop(in, f, DropRunt)
		return
	}
	if f.Offload.GSOType == GSONone && len(b) > in.caps.MaxFrame {
		s.drop(in, f, DropTooBig)
		return
	}
	e := Ether(b)
	src := e.Src()
	if src.Multicast() || src.Zero() {
		s.drop(in, f, DropBadSrc)
		return
	}
	if s.fdb.Learn(src, in.id, now) != nil {
		in.c.learnRefused.Add(1)
	}
	if e.Type() == EtherTypeARP {
		if bd, ok := s.binds.arpReplyTo(e, in.id); ok {
			s.replyARP(in, e, bd)
			f.Release()
			return
		}
	}
	dst := e.Dst()
	if !dst.Multicast() {
		if id, ok := s.fdb.Lookup(dst, now); ok {
			if id == in.id {
				s.drop(in, f, DropHairpin)
				return
			}
			if out, ok := t.byID[id]; ok {
				s.send(out, f)
				return
			}
		}
	}
	s.flood(t, in, f)
}

// flood sends f to every port but in: a copy to each, the original to the
// last one.
func (s *Switch) flood(t *portTable, in *portState, f *Frame) {
	var last *portState
	for _, ps := range t.list {
		if ps == in {
			continue
		}
		if last != nil {
			// A port's own pool may hold frames larger than ours.
			if c := s.pools.Get(f.Len()); c != nil {
				c.CopyFrom(f) // Get sized it to fit
				s.send(last, c)
			} else {
				last.c.drops[DropTooBig].Add(1)
			}
		}
		last = ps
	}
	if last == nil {
		f.Release()
		return
	}
	s.send(last, f)
}

// send puts f on the egress queue of out, or drops it and counts why.
// Ownership of f passes either way.
func (s *Switch) send(out *portState, f *Frame) {
	if out.removed.Load() {
		s.drop(out, f, DropPortGone)
		return
	}
	if !out.caps.GSO {
		if f.Offload.GSOType != GSONone {
			s.drop(out, f, DropNoGSO)
			return
		}
		if f.Offload.NeedsCsum && !CompleteChecksum(f) {
			s.drop(out, f, DropNoGSO)
			return
		}
	}
	if f.Offload.GSOType == GSONone && f.Len() > out.caps.MaxFrame {
		s.drop(out, f, DropTooBig)
		return
	}
	select {
	case out.queue <- f:
	default:
		s.drop(out, f, DropQueueFull)
	}
}

func (s *Switch) drop(ps *portState, f *Frame, r DropReason) {
	ps.c.drops[r].Add(1)
	f.Release()
}

// replyARP answers an ARP request on the port that asked.
func (s *Switch) replyARP(in *portState, req Ether, bd Binding) {
	r := s.pools.Small.Get()
	r.SetLen(WriteARPReply(r.ReadBuf(0), req, bd))
	in.c.arpReplies.Add(1)
	s.send(in, r)
}
