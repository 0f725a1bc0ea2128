package vswitch

import "sync"

// Headroom is the space every pooled buffer keeps in front of the frame, so
// a port can prepend its own header (the 12-byte virtio-net header of a TAP,
// later the 50 bytes of a VXLAN encapsulation) without copying the frame.
const Headroom = 64

// Buffer sizes of the two pool classes. SmallBufSize holds any frame of a
// 9000-byte MTU; LargeBufSize holds a 64 KiB GSO super-frame, which is what
// a TAP with TSO hands over.
const (
	SmallBufSize = Headroom + 9216
	LargeBufSize = Headroom + 65550
)

// GSOType says how a super-frame is to be segmented. The values follow the
// meaning of VIRTIO_NET_HDR_GSO_* in include/uapi/linux/virtio_net.h, but the
// numbering is ours: the wire encoding lives in the tap package only.
type GSOType uint8

const (
	GSONone GSOType = iota
	GSOTCPv4
	GSOTCPv6
	GSOUDPL4
)

// Offload is the offload metadata that travels with a frame: the fields of
// the kernel's struct virtio_net_hdr, in host order. All offsets count from
// the first byte of the Ethernet header.
type Offload struct {
	GSOType GSOType
	// GSOSize is the payload size of each segment (the MSS for TCP).
	GSOSize uint16
	// HdrLen is the length of all headers up to the payload.
	HdrLen uint16
	// NeedsCsum means the L4 checksum is not yet complete: the ones'
	// complement sum from CsumStart to the end goes at CsumStart+CsumOffset.
	NeedsCsum  bool
	CsumStart  uint16
	CsumOffset uint16
	// DataValid means the checksum was already verified by the sender.
	DataValid bool
}

// Frame is one Ethernet frame and its offload metadata in a pooled buffer.
// A Frame has exactly one owner at a time; a function that takes frames
// documents whether it forwards them or releases them.
type Frame struct {
	Offload Offload

	buf  []byte // the whole pooled buffer
	n    int    // length of the frame, which starts at buf[Headroom]
	pool *Pool
}

// Bytes returns the Ethernet frame.
func (f *Frame) Bytes() []byte { return f.buf[Headroom : Headroom+f.n] }

// Len returns the length of the Ethernet frame.
func (f *Frame) Len() int { return f.n }

// Cap returns the largest frame the buffer can hold.
func (f *Frame) Cap() int { return len(f.buf) - Headroom }

// ReadBuf returns the buffer from prefix bytes before the frame to the end of
// the buffer, for a port to read a prefixed frame into. The port then calls
// SetLen with the frame's length (the bytes read less prefix).
func (f *Frame) ReadBuf(prefix int) []byte { return f.buf[Headroom-prefix:] }

// Prefixed returns the frame with the prefix bytes in front of it, for a port
// to fill in its header and write both with one call.
func (f *Frame) Prefixed(prefix int) []byte { return f.buf[Headroom-prefix : Headroom+f.n] }

// SetLen sets the frame's length. It panics if n exceeds Cap, as a slice
// expression would: callers read into ReadBuf and never exceed it.
func (f *Frame) SetLen(n int) {
	if n < 0 || n > f.Cap() {
		panic("vswitch: frame length out of range")
	}
	f.n = n
}

// CopyFrom sets the frame to a copy of src and its metadata. It reports false
// if src does not fit.
func (f *Frame) CopyFrom(src *Frame) bool {
	if src.n > f.Cap() {
		return false
	}
	f.n = copy(f.buf[Headroom:], src.Bytes())
	f.Offload = src.Offload
	return true
}

// Release returns the frame to its pool. The caller must not touch it again.
func (f *Frame) Release() {
	if f.pool == nil {
		return
	}
	f.n = 0
	f.Offload = Offload{}
	f.pool.p.Put(f)
}

// Pool hands out frames of one buffer size. It is safe for concurrent use.
type Pool struct {
	size int
	p    sync.Pool
}

// NewPool returns a pool of frames whose buffers are bufSize bytes,
// Headroom included.
func NewPool(bufSize int) *Pool {
	if bufSize <= Headroom {
		panic("vswitch: pool buffer smaller than headroom")
	}
	pl := &Pool{size: bufSize}
	pl.p.New = func() any { return &Frame{buf: make([]byte, bufSize), pool: pl} }
	return pl
}

// Get returns an empty frame. Ownership passes to the caller.
func (pl *Pool) Get() *Frame { return pl.p.Get().(*Frame) }

// FrameCap returns the largest frame this pool's buffers hold.
func (pl *Pool) FrameCap() int { return pl.size - Headroom }

// Pools is the pair of size classes the switch copies into when it floods.
type Pools struct {
	Small, Large *Pool
}

// NewPools returns the two standard size classes.
func NewPools() *Pools {
	return &Pools{Small: NewPool(SmallBufSize), Large: NewPool(LargeBufSize)}
}

// Get returns an empty frame able to hold n bytes, or nil if n is larger
// than the large class.
func (ps *Pools) Get(n int) *Frame {
	switch {
	case n <= ps.Small.FrameCap():
		return ps.Small.Get()
	case n <= ps.Large.FrameCap():
		return ps.Large.Get()
	}
	return nil
}
