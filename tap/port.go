package tap

import (
	"log/slog"
	"os"
	"sync/atomic"
	"syscall"

	vswitch "tapswitch/switch"
)

var (
	_ vswitch.Port        = (*Port)(nil)
	_ vswitch.DropCounter = (*Port)(nil)
)

// Port is a vswitch.Port over the queue fds of one TAP device. Each queue
// has its own ReadBatch caller (one goroutine per queue, as the switch
// runs); WriteBatch has one caller at a time and writes on queue 0. Close
// may be called at any time, concurrently with both.
type Port struct {
	name   string
	caps   vswitch.Caps
	pool   *vswitch.Pool
	log    *slog.Logger
	queues []*queue
	w      writer // state of the one WriteBatch in progress
	closed atomic.Bool

	rxShort, rxTooLong, rxBadHeader atomic.Uint64
}

// queue is one receive queue and the state of the one ReadBatch call in
// progress on it. The state lives here, and read is bound once, so that a
// ReadBatch does not allocate a closure for RawConn.Read.
type queue struct {
	p    *Port
	f    *os.File
	rc   syscall.RawConn
	read func(fd uintptr) bool // q.readFrames

	frames []*vswitch.Frame // the caller's batch
	n      int              // frames filled so far
	err    error            // read error, other than EAGAIN
	spare  *vswitch.Frame   // pool frame not yet filled, kept for the next read
}

// writer is the state of the one WriteBatch in progress, like queue's.
type writer struct {
	rc     syscall.RawConn
	write  func(fd uintptr) bool // w.writeFrames
	frames []*vswitch.Frame
	n      int
	err    error
}

// Stats counts frames ReadBatch dropped, by reason.
type Stats struct {
	RxShort     uint64 // shorter than the virtio-net header
	RxTooLong   uint64 // filled the whole buffer, so maybe truncated
	RxBadHeader uint64 // virtio-net header that does not decode
}

// Name returns the port name from Config.PortName.
func (p *Port) Name() string { return p.name }

// Caps reports GSO when offloads are on, and MTU plus the Ethernet header.
func (p *Port) Caps() vswitch.Caps { return p.caps }

// Queues returns the number of receive queues.
func (p *Port) Queues() int { return len(p.queues) }

// Drops returns the drop counters that are not zero, by reason, for the
// switch's statistics (vswitch.DropCounter).
func (p *Port) Drops() map[string]uint64 {
	st := p.Stats()
	m := make(map[string]uint64, 3)
	for reason, n := range map[string]uint64{"rx_short": st.RxShort, "rx_truncated": st.RxTooLong, "rx_bad_vnet_header": st.RxBadHeader} {
		if n != 0 {
			m[reason] = n
		}
	}
	return m
}

// Stats returns a snapshot of the drop counters.
func (p *Port) Stats() Stats {
	return Stats{
		RxShort:     p.rxShort.Load(),
		RxTooLong:   p.rxTooLong.Load(),
		RxBadHeader: p.rxBadHeader.Load(),
	}
}
