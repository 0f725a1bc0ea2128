package vswitch

// handoff collects the frames of one reader's batch by destination, so
// that each destination gets its share in one piece at the end of the
// batch. A reader owns one handoff; it is not safe for concurrent use.
//
// Handing over is where latency goes: a goroutine wake-up per frame costs
// more than the forwarding. So a destination that is idle — nothing queued,
// no write under way — is written to straight from the reader, with no
// wake-up at all. Only a busy destination gets its frames queued for its
// writer goroutine, and a full queue drops them: the reader never waits.
type handoff struct {
	outs   []*portState
	frames [][]*Frame // frames[i] go to outs[i], in order
	lens   []int      // scratch for write
	segs   []*Frame   // scratch for Segment
}

// add appends f to what goes to out. Batches go to few ports, so a search
// from the end, where the latest destination is, beats a map.
func (h *handoff) add(out *portState, f *Frame) {
	for i := len(h.outs) - 1; i >= 0; i-- {
		if h.outs[i] == out {
			h.frames[i] = append(h.frames[i], f)
			return
		}
	}
	h.outs = append(h.outs, out)
	if len(h.frames) < len(h.outs) {
		h.frames = append(h.frames, nil)
	}
	i := len(h.outs) - 1
	h.frames[i] = append(h.frames[i][:0], f)
}

// flush hands every destination its frames and empties h.
func (s *Switch) flush(h *handoff) {
	for i, out := range h.outs {
		s.deliver(out, h.frames[i], h)
		clear(h.frames[i])
		h.frames[i] = h.frames[i][:0]
		h.outs[i] = nil
	}
	h.outs = h.outs[:0]
}

// deliver hands frames to out: written now if out takes direct writes and
// is idle, else queued for its writer. Order holds because out.pending counts frames queued and not
// yet written, and a direct write happens only when it is zero: a frame
// never overtakes one queued before it. out.wmu serializes WriteBatch, as
// the Port contract asks; a reader only ever tries it, never waits for it.
func (s *Switch) deliver(out *portState, frames []*Frame, h *handoff) {
	if out.removed.Load() {
		for _, f := range frames {
			s.drop(out, f, DropPortGone)
		}
		return
	}
	if out.caps.NonBlockingWrite && out.pending.Load() == 0 && out.wmu.TryLock() {
		if out.pending.Load() == 0 {
			s.write(out, frames, &h.lens)
			out.wmu.Unlock()
			return
		}
		out.wmu.Unlock()
	}
	out.pending.Add(int64(len(frames)))
	for _, f := range frames {
		select {
		case out.queue <- f:
		default:
			out.pending.Add(-1)
			s.drop(out, f, DropQueueFull)
		}
	}
	// The port may have been removed since the check above, and its
	// writer gone after its last look at the queue: then nobody else
	// will release what was just queued. removed is set before the
	// writer is told to stop, so one of the two always sees the frames.
	if out.removed.Load() {
		s.drainGone(out)
	}
}

// drainGone releases the frames left on a removed port's queue, counting
// them as port_gone.
func (s *Switch) drainGone(out *portState) {
	for {
		select {
		case f := <-out.queue:
			s.drop(out, f, DropPortGone)
		default:
			return
		}
	}
}
