// Package porttest provides an in-memory vswitch.Port and frame builders
// for tests of every package that uses the switch.
package porttest

import (
	"encoding/binary"
	"net/netip"
	"sync"
	"time"

	vswitch "tapswitch/switch"
)

// Port is an in-memory vswitch.Port with one queue. Frames given to Inject
// come out of ReadBatch; frames the switch writes are recorded and can be
// awaited. A Port can be stalled to play a slow or dead peer.
type Port struct {
	name string
	caps vswitch.Caps
	pool *vswitch.Pool

	in     chan []byte
	closed chan struct{}
	once   sync.Once

	mu      sync.Mutex // guards written, stalled
	cond    *sync.Cond
	written [][]byte
	offl    []vswitch.Offload
	stalled bool
	delay   time.Duration // each WriteBatch takes this long
}

var _ vswitch.Port = (*Port)(nil)

// New returns a port that takes ordinary frames up to 1514 bytes.
func New(name string) *Port {
	return NewWithCaps(name, vswitch.Caps{MaxFrame: 1514})
}

// NewWithCaps returns a port with the given capabilities.
func NewWithCaps(name string, caps vswitch.Caps) *Port {
	p := &Port{
		name:   name,
		caps:   caps,
		pool:   vswitch.NewPool(vswitch.LargeBufSize),
		in:     make(chan []byte, 4096),
		closed: make(chan struct{}),
	}
	p.cond = sync.NewCond(&p.mu)
	return p
}

func (p *Port) Name() string       { return p.name }
func (p *Port) Caps() vswitch.Caps { return p.caps }
func (p *Port) Queues() int        { return 1 }

// Inject queues frames to be read by the switch. It copies them.
func (p *Port) Inject(frames ...[]byte) {
	for _, f := range frames {
		p.in <- append([]byte(nil), f...)
	}
}

// ReadBatch returns the injected frames, blocking until there is one.
func (p *Port) ReadBatch(q int, frames []*vswitch.Frame) (int, error) {
	var b []byte
	select {
	case b = <-p.in:
	case <-p.closed:
		return 0, vswitch.ErrClosed
	}
	n := 0
	for {
		f := p.pool.Get()
		f.SetLen(copy(f.ReadBuf(0), b))
		frames[n] = f
		n++
		if n == len(frames) {
			return n, nil
		}
		select {
		case b = <-p.in:
		default:
			return n, nil
		}
	}
}

// WriteBatch records copies of the frames and releases them, as the Port
// contract asks. While the port is stalled it blocks, as a peer that stopped
// reading would; closing a stalled port drops the batch.
func (p *Port) WriteBatch(frames []*vswitch.Frame) (int, error) {
	defer func() {
		for _, f := range frames {
			f.Release()
		}
	}()
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.stalled {
		select {
		case <-p.closed:
			return 0, vswitch.ErrClosed
		default:
		}
		p.cond.Wait()
	}
	if p.delay > 0 {
		time.Sleep(p.delay) // a syscall's worth of time, lock held
	}
	for _, f := range frames {
		p.written = append(p.written, append([]byte(nil), f.Bytes()...))
		p.offl = append(p.offl, f.Offload)
	}
	p.cond.Broadcast()
	return len(frames), nil
}

// Close makes ReadBatch return ErrClosed and wakes a stalled writer.
func (p *Port) Close() error {
	p.once.Do(func() {
		close(p.closed)
		p.mu.Lock()
		p.stalled = false
		p.cond.Broadcast()
		p.mu.Unlock()
	})
	return nil
}

// Stall makes WriteBatch block until Unstall or Close.
func (p *Port) Stall() {
	p.mu.Lock()
	p.stalled = true
	p.mu.Unlock()
}

// SetWriteDelay makes every WriteBatch take d, as a write syscall takes
// time, so that concurrent writers of the port contend.
func (p *Port) SetWriteDelay(d time.Duration) {
	p.mu.Lock()
	p.delay = d
	p.mu.Unlock()
}

// Unstall lets a stalled WriteBatch go on.
func (p *Port) Unstall() {
	p.mu.Lock()
	p.stalled = false
	p.cond.Broadcast()
	p.mu.Unlock()
}

// Written returns copies of the frames written so far.
func (p *Port) Written() [][]byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([][]byte(nil), p.written...)
}

// WrittenOffloads returns the offload metadata of the frames written so far.
func (p *Port) WrittenOffloads() []vswitch.Offload {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]vswitch.Offload(nil), p.offl...)
}

// WaitWritten waits until at least n frames were written or d passed, and
// returns the frames written by then.
func (p *Port) WaitWritten(n int, d time.Duration) [][]byte {
	deadline := time.Now().Add(d)
	stop := time.AfterFunc(d, func() {
		p.mu.Lock()
		p.cond.Broadcast()
		p.mu.Unlock()
	})
	defer stop.Stop()
	p.mu.Lock()
	defer p.mu.Unlock()
	for len(p.written) < n && time.Now().Before(deadline) {
		p.cond.Wait()
	}
	return append([][]byte(nil), p.written...)
}

// Frame builders.

// MAC returns the locally administered MAC 02:00:00:00:00:n.
func MAC(n byte) vswitch.MAC { return vswitch.MAC{0x02, 0, 0, 0, 0, n} }

// Ether returns an Ethernet frame with the given payload, padded to the
// 60-byte minimum as a NIC would.
func Ether(dst, src vswitch.MAC, typ uint16, payload []byte) []byte {
	b := make([]byte, vswitch.EtherHdrLen+len(payload), max(60, vswitch.EtherHdrLen+len(payload)))
	e := vswitch.Ether(b)
	e.SetDst(dst)
	e.SetSrc(src)
	e.SetType(typ)
	copy(e.Payload(), payload)
	return b[:cap(b)]
}

// ARPRequest returns a broadcast "who has target, tell sender" frame.
func ARPRequest(sha vswitch.MAC, spa, tpa netip.Addr) []byte {
	return ARP(1, sha, spa, vswitch.MAC{}, tpa, vswitch.Broadcast)
}

// ARP returns an ARP frame for Ethernet/IPv4 with op 1 (request) or 2
// (reply), sent from sha to dst.
func ARP(op uint16, sha vswitch.MAC, spa netip.Addr, tha vswitch.MAC, tpa netip.Addr, dst vswitch.MAC) []byte {
	a := make([]byte, 28)
	binary.BigEndian.PutUint16(a[0:], 1)
	binary.BigEndian.PutUint16(a[2:], vswitch.EtherTypeIP4)
	a[4], a[5] = 6, 4
	binary.BigEndian.PutUint16(a[6:], op)
	copy(a[8:], sha[:])
	s4 := spa.As4()
	copy(a[14:], s4[:])
	copy(a[18:], tha[:])
	t4 := tpa.As4()
	copy(a[24:], t4[:])
	return Ether(dst, sha, vswitch.EtherTypeARP, a)
}
