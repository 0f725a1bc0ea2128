package vswitch

import "errors"

// ErrClosed is returned by a Port's ReadBatch after Close. Readers stop on it.
var ErrClosed = errors.New("port closed")

// Caps says what a port accepts on egress.
type Caps struct {
	// GSO means the port takes GSO super-frames and frames whose checksum
	// is still to be completed (Offload.NeedsCsum). Without it, the switch
	// hands the port only complete, ordinary frames.
	GSO bool
	// MaxFrame is the largest ordinary frame, Ethernet header included,
	// that the port sends or receives. Larger frames are dropped.
	MaxFrame int
	// NonBlockingWrite means WriteBatch never waits (a TAP writes to a
	// non-blocking fd, and the kernel takes or drops each frame at once).
	// The switch then writes to an idle port straight from the reader
	// that forwards the frames, saving a goroutine wake-up; other ports
	// get every frame through their queue and writer goroutine.
	NonBlockingWrite bool
}

// Port is one attachment of the switch: a TAP, the gateway netstack, a
// VXLAN tunnel, a capture mirror. The switch owns no I/O; it runs one reader
// goroutine per queue that calls ReadBatch, and one writer goroutine that
// calls WriteBatch.
type Port interface {
	// Name names the port in counters and logs. It does not change.
	Name() string

	// Caps reports what the port accepts. It does not change.
	Caps() Caps

	// Queues returns how many receive queues the port has (at least 1).
	// The switch calls ReadBatch concurrently, one goroutine per queue.
	Queues() int

	// ReadBatch blocks until at least one frame arrived on queue q, stores
	// up to len(frames) of them in frames and returns how many. Ownership
	// of the returned frames passes to the caller. After Close it returns
	// ErrClosed (wrapped or not); an error other than ErrClosed is
	// reported and the call repeated after a back-off.
	ReadBatch(q int, frames []*Frame) (int, error)

	// WriteBatch sends frames in order. It takes ownership of every frame
	// and releases each one, sent or not, before it returns. It returns n,
	// meaning the first n frames were sent, and the error that stopped
	// the rest. It must not block for long; the switch calls it from one
	// goroutine at a time and does not retry.
	WriteBatch(frames []*Frame) (int, error)

	// Close stops the port and makes blocked ReadBatch calls return. It is
	// safe to call concurrently with ReadBatch and WriteBatch.
	Close() error
}

// DropCounter is an optional interface of a Port that drops frames before
// the switch sees them, such as a TAP read that may be truncated. Stats
// adds its counts, by reason, to the port's drops. Drops must be safe to
// call concurrently with the other methods.
type DropCounter interface {
	Drops() map[string]uint64
}
