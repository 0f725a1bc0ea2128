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
	h := new(handoff)
	var backoff time.Duration
	for {
		n, err := ps.port.ReadBatch(q, frames)
		if n > 0 {
			s.forwardBatch(ps, frames[:n], h)
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
// batches until the port is removed; it then drops what is left.
func (s *Switch) writeLoop(ps *portState) {
	defer ps.wg.Done()
	batch := make([]*Frame, 0, s.opts.BatchSize)
	lens := make([]int, 0, s.opts.BatchSize)
	for {
		select {
		case f := <-ps.queue:
			batch = append(batch, f)
		case <-ps.done:
			s.drainGone(ps)
			return
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
		ps.wmu.Lock()
		s.write(ps, batch, &lens)
		ps.pending.Add(-int64(len(batch)))
		ps.wmu.Unlock()
		clear(batch)
		batch = batch[:0]
	}
}

// write hands batch to the port, whose WriteBatch takes ownership of every
// frame and releases it, sent or not. The port sent the first n frames;
// the others are dropped and counted, not retried: they are already back
// in their pool. lens is scratch space for the frames' lengths. The caller
// holds ps.wmu.
func (s *Switch) write(ps *portState, batch []*Frame, lens *[]int) {
	if ps.policer != nil {
		if batch = s.police(ps, batch); len(batch) == 0 {
			return
		}
	}
	// WriteBatch releases the frames, so take their lengths first.
	l := (*lens)[:0]
	for _, f := range batch {
		l = append(l, f.Len())
	}
	*lens = l
	n, err := ps.port.WriteBatch(batch)
	if n < 0 || n > len(batch) {
		// A port bug: count the whole batch as failed rather than guess.
		s.log.Error("port wrote an impossible count", "port", ps.name, "n", n, "batch", len(batch), "err", err)
		n = 0
	}
	var bytes uint64
	for _, b := range l[:n] {
		bytes += uint64(b)
	}
	ps.c.txFrames.Add(uint64(n))
	ps.c.txBytes.Add(bytes)
	if n < len(batch) {
		ps.c.drops[DropWriteError].Add(uint64(len(batch) - n))
	}
}

// Forward switches frames that arrived on port in, as a port's reader does.
// It takes ownership of every frame: each one is handed to its destination
// ports or released. Frames from a port that is not attached are released.
func (s *Switch) Forward(in PortID, frames []*Frame) {
	ps, ok := s.ports.Load().byID[in]
	if !ok {
		for _, f := range frames {
			f.Release()
		}
		return
	}
	h := s.handoffs.Get().(*handoff)
	s.forwardBatch(ps, frames, h)
	s.handoffs.Put(h)
}

// forwardBatch forwards a batch from port in: it decides each frame's
// destinations, collects the frames by destination in h, and hands each
// destination its share at the end.
func (s *Switch) forwardBatch(in *portState, frames []*Frame, h *handoff) {
	t := s.ports.Load()
	// Count before forwarding: once a frame is handed over it may be
	// written and its buffer reused, and a reader of Stats who saw it
	// arrive expects it counted.
	var bytes uint64
	for _, f := range frames {
		bytes += uint64(f.Len())
	}
	in.c.rxFrames.Add(uint64(len(frames)))
	in.c.rxBytes.Add(bytes)
	// The coarse clock: reading the real one costs more than forwarding a
	// frame on some virtual machines, and FDB refreshes then write their
	// entry at most once a second.
	now := s.now.Load()
	for _, f := range frames {
		s.forward(t, in, f, now, h)
	}
	s.flush(h)
}

// forward decides where one frame goes and sends it there.
func (s *Switch) forward(t *portTable, in *portState, f *Frame, now int64, h *handoff) {
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
			s.replyARP(in, e, bd, h)
			f.Release()
			return
		}
	}
	dst := e.Dst()
	r := s.rt.cur.Load()
	if r != nil {
		if in.id == r.cfg.HostPort {
			s.noteHostFlow(f, r, now)
		}
		if dst == r.cfg.MAC && s.route(t, in, f, r, now, h) {
			return
		}
	}
	if !dst.Multicast() {
		if id, ok := s.fdb.Lookup(dst, now); ok {
			if id == in.id {
				s.drop(in, f, DropHairpin)
				return
			}
			if out, ok := t.byID[id]; ok {
				if r != nil && s.viaHost(t, in, out, f, r, now, h) {
					return
				}
				s.send(out, f, h)
				return
			}
		}
	}
	s.flood(t, in, f, h)
}

// flood sends f to every port but in: a copy to each, the original to the
// last one. What h holds goes first, so a flooded frame never overtakes a
// frame of the same batch; the copies go straight out, not through h,
// which would have to search among every port for each one.
func (s *Switch) flood(t *portTable, in *portState, f *Frame, h *handoff) {
	s.flush(h)
	var last *portState
	for _, ps := range t.list {
		if ps == in {
			continue
		}
		if last != nil {
			// A port's own pool may hold frames larger than ours.
			if c := s.pools.Get(f.Len()); c != nil {
				c.CopyFrom(f) // Get sized it to fit
				s.send(last, c, h)
				s.flush(h)
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
	s.send(last, f, h)
	s.flush(h)
}

// send checks that out can take f and adds it to h for out, or drops it
// and counts why. Ownership of f passes either way.
func (s *Switch) send(out *portState, f *Frame, h *handoff) {
	if !out.caps.GSO {
		if f.Offload.GSOType != GSONone {
			s.segment(out, f, h)
			return
		}
		if f.Offload.NeedsCsum && !CompleteChecksum(f) {
			s.drop(out, f, DropBadOffload)
			return
		}
	}
	if f.Offload.GSOType == GSONone && f.Len() > out.caps.MaxFrame {
		s.drop(out, f, DropTooBig)
		return
	}
	h.add(out, f)
}

// segment splits the super-frame f for out, a port without GSO, into
// ordinary frames with complete checksums, and adds them to h. It takes
// ownership of f.
func (s *Switch) segment(out *portState, f *Frame, h *handoff) {
	segs, err := Segment(h.segs[:0], f, s.pools)
	if err != nil {
		s.drop(out, f, DropBadOffload)
		return
	}
	f.Release()
	out.c.segmented.Add(1)
	for i, seg := range segs {
		if seg.Len() > out.caps.MaxFrame {
			s.drop(out, seg, DropTooBig)
		} else {
			h.add(out, seg)
		}
		segs[i] = nil
	}
	h.segs = segs[:0]
}

func (s *Switch) drop(ps *portState, f *Frame, r DropReason) {
	ps.c.drops[r].Add(1)
	f.Release()
}

// replyARP answers an ARP request on the port that asked.
func (s *Switch) replyARP(in *portState, req Ether, bd Binding, h *handoff) {
	r := s.pools.Small.Get()
	r.SetLen(WriteARPReply(r.ReadBuf(0), req, bd))
	in.c.arpReplies.Add(1)
	s.send(in, r, h)
}
