package tap

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"

	vswitch "tapswitch/switch"
)

// newPortFromFDs returns a Port over fds, one per receive queue, each a
// descriptor that keeps frame boundaries and carries a virtio-net header in
// front of every frame: a TAP queue, or in tests a SOCK_SEQPACKET socket.
// cfg must have its defaults. The Port owns fds, also when this fails.
func newPortFromFDs(fds []int, cfg Config) (*Port, error) {
	p := &Port{
		name: cfg.PortName,
		caps: vswitch.Caps{GSO: cfg.Offloads, MaxFrame: cfg.MTU + vswitch.EtherHdrLen, NonBlockingWrite: true},
		pool: vswitch.NewPool(bufSize(cfg.Offloads)),
		log:  cfg.Logger.With("port", cfg.PortName),
	}
	for i, fd := range fds {
		// Non-blocking before os.NewFile, which then uses the netpoller.
		if err := unix.SetNonblock(fd, true); err != nil {
			p.Close()
			for _, fd := range fds[i:] {
				unix.Close(fd)
			}
			return nil, fmt.Errorf("tap: set %s queue %d non-blocking: %w", cfg.PortName, i, err)
		}
		q := &queue{p: p, f: os.NewFile(uintptr(fd), fmt.Sprintf("tap:%s/%d", cfg.PortName, i))}
		q.rc, _ = q.f.SyscallConn() // fails only on a nil *os.File
		q.read = q.readFrames
		p.queues = append(p.queues, q)
	}
	if len(p.queues) == 0 {
		return nil, fmt.Errorf("tap: %s: no queues", cfg.PortName)
	}
	p.w.rc = p.queues[0].rc
	p.w.write = p.w.writeFrames
	return p, nil
}

// ReadBatch waits until queue q has a frame, then reads up to len(frames)
// frames that are ready into frames from the Port's pool; ownership of
// frames[:n] passes to the caller. Bad frames are dropped and counted. It
// must not be called concurrently for the same queue. After Close it
// returns an error wrapping vswitch.ErrClosed.
func (p *Port) ReadBatch(q int, frames []*vswitch.Frame) (int, error) {
	if q < 0 || q >= len(p.queues) {
		return 0, fmt.Errorf("tap: read %s: no queue %d", p.name, q)
	}
	if len(frames) == 0 {
		return 0, nil
	}
	qu := p.queues[q]
	qu.frames, qu.n, qu.err = frames, 0, nil
	err := qu.rc.Read(qu.read)
	n, rerr := qu.n, qu.err
	qu.frames, qu.err = nil, nil
	switch {
	case n > 0:
		// A read error after some frames is not returned: a lasting
		// one (a device gone) recurs on the next call.
		return n, nil
	case p.closed.Load():
		return 0, fmt.Errorf("tap: read %s: %w", p.name, vswitch.ErrClosed)
	case err == nil:
		err = rerr
	}
	return 0, fmt.Errorf("tap: read %s queue %d: %w", p.name, q, err)
}

// readFrames is the RawConn.Read callback: it reads frames until the batch
// is full or the fd has no more. It returns false, so the netpoller waits,
// only while nothing was read yet.
func (qu *queue) readFrames(fd uintptr) bool {
	p := qu.p
	for qu.n < len(qu.frames) {
		if qu.spare == nil {
			qu.spare = p.pool.Get()
		}
		f := qu.spare
		buf := f.ReadBuf(vnetHdrLen)
		m, err := unix.Read(int(fd), buf)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return qu.n > 0
		case err != nil:
			qu.err = err
			return true
		case m == 0:
			// A TAP never reads 0 bytes; a socket does at end of file.
			qu.err = io.EOF
			return true
		case m < vnetHdrLen:
			p.rxShort.Add(1)
			continue
		case m == len(buf):
			p.rxTooLong.Add(1)
			continue
		}
		off, err := decodeVnetHdr(buf)
		if err != nil {
			p.rxBadHeader.Add(1)
			continue
		}
		f.Offload = off
		f.SetLen(m - vnetHdrLen)
		qu.frames[qu.n] = f
		qu.n++
		qu.spare = nil
	}
	return true
}

// WriteBatch writes frames in order, each with its virtio-net header in
// the headroom and one write(2). It stops at the first frame that fails and
// returns how many were written before it and that frame's error: the first
// n frames were sent, the rest were not. It never waits for the fd: a write
// that would block fails. As vswitch.Port asks, it takes ownership of every
// frame and releases each one, sent or not. Calls must not overlap.
func (p *Port) WriteBatch(frames []*vswitch.Frame) (int, error) {
	defer releaseFrames(frames)
	if p.closed.Load() {
		return 0, fmt.Errorf("tap: write %s: %w", p.name, vswitch.ErrClosed)
	}
	w := &p.w
	w.frames, w.n, w.err = frames, 0, nil
	err := w.rc.Write(w.write)
	n, werr := w.n, w.err
	w.frames, w.err = nil, nil
	switch {
	case err != nil && p.closed.Load():
		return n, fmt.Errorf("tap: write %s: %w", p.name, vswitch.ErrClosed)
	case err != nil:
		return n, fmt.Errorf("tap: write %s: %w", p.name, err)
	case werr != nil:
		return n, fmt.Errorf("tap: write %s: frame %d: %w", p.name, n, werr)
	}
	return n, nil
}

// writeFrames is the RawConn.Write callback. It always returns true: the
// netpoller never waits on a write.
func (w *writer) writeFrames(fd uintptr) bool {
	for w.n < len(w.frames) {
		f := w.frames[w.n]
		b := f.Prefixed(vnetHdrLen)
		if err := encodeVnetHdr(b, f.Offload); err != nil {
			w.err = err
			return true
		}
		m, err := unix.Write(int(fd), b)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			w.err = err
			return true
		case m != len(b):
			w.err = io.ErrShortWrite
			return true
		}
		w.n++
	}
	return true
}

// Close closes the queue fds and wakes blocked ReadBatch calls. The device
// stays: it is persistent until Delete. Later calls return nil.
func (p *Port) Close() error {
	if !p.closed.CompareAndSwap(false, true) {
		return nil
	}
	var errs []error
	for i, q := range p.queues {
		if err := q.f.Close(); err != nil {
			errs = append(errs, fmt.Errorf("tap: close %s queue %d: %w", p.name, i, err))
		}
	}
	p.log.Info("port closed")
	return errors.Join(errs...)
}

func releaseFrames(frames []*vswitch.Frame) {
	for _, f := range frames {
		f.Release()
	}
}
