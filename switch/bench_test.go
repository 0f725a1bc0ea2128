package vswitch_test

import (
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	vswitch "tapswitch/switch"
	"tapswitch/switch/porttest"
)

// memPort is a Port for benchmarks and allocation tests: it counts and
// releases what it is given, allocating nothing, and, if it has a source
// frame, hands out a batch of copies of it each time it is kicked.
type memPort struct {
	name   string
	caps   vswitch.Caps
	closed chan struct{}
	once   sync.Once

	frames atomic.Uint64 // written
	bytes  atomic.Uint64
	target atomic.Uint64 // notify when frames reaches it
	notify chan struct{}

	kick chan struct{}
	pool *vswitch.Pool
	src  []byte
}

var _ vswitch.Port = (*memPort)(nil)

func newMemPort(name string, caps vswitch.Caps) *memPort {
	return &memPort{
		name:   name,
		caps:   caps,
		closed: make(chan struct{}),
		notify: make(chan struct{}, 1),
		kick:   make(chan struct{}),
		pool:   vswitch.NewPool(vswitch.SmallBufSize),
	}
}

func (p *memPort) Name() string       { return p.name }
func (p *memPort) Caps() vswitch.Caps { return p.caps }
func (p *memPort) Queues() int        { return 1 }

// ReadBatch fills frames with copies of the source frame once kicked.
func (p *memPort) ReadBatch(q int, frames []*vswitch.Frame) (int, error) {
	select {
	case <-p.kick:
	case <-p.closed:
		return 0, vswitch.ErrClosed
	}
	for i := range frames {
		f := p.pool.Get()
		f.SetLen(copy(f.ReadBuf(0), p.src))
		frames[i] = f
	}
	return len(frames), nil
}

func (p *memPort) WriteBatch(frames []*vswitch.Frame) (int, error) {
	var n uint64
	for _, f := range frames {
		n += uint64(f.Len())
		f.Release()
	}
	p.bytes.Add(n)
	if total := p.frames.Add(uint64(len(frames))); total >= p.target.Load() {
		select {
		case p.notify <- struct{}{}:
		default:
		}
	}
	return len(frames), nil
}

func (p *memPort) Close() error {
	p.once.Do(func() { close(p.closed) })
	return nil
}

// waitFrames waits until the port wrote at least n frames.
func (p *memPort) waitFrames(n uint64) {
	p.target.Store(n)
	for p.frames.Load() < n {
		<-p.notify
	}
}

// memSwitch is a switch with n memPorts; port 0 is the ingress, and every
// other port i has hostMAC(i) learned on it.
func memSwitch(tb testing.TB, n int) (*vswitch.Switch, []*memPort, []vswitch.PortID) {
	return memSwitchCaps(tb, n, vswitch.Caps{MaxFrame: 1514})
}

// memSwitchCaps is memSwitch with ports of the given capabilities.
func memSwitchCaps(tb testing.TB, n int, caps vswitch.Caps) (*vswitch.Switch, []*memPort, []vswitch.PortID) {
	tb.Helper()
	sw := vswitch.New(vswitch.Options{})
	tb.Cleanup(func() { sw.Close() })
	ports := make([]*memPort, n)
	ids := make([]vswitch.PortID, n)
	pool := vswitch.NewPool(vswitch.SmallBufSize)
	for i := range ports {
		ports[i] = newMemPort(fmt.Sprintf("m%d", i), caps)
		id, err := sw.AddPort(ports[i])
		if err != nil {
			tb.Fatal(err)
		}
		ids[i] = id
	}
	for i := 1; i < n; i++ {
		f := pool.Get()
		f.SetLen(copy(f.ReadBuf(0), frameTo(vswitch.Broadcast, hostMAC(i), "hello")))
		sw.Forward(ids[i], []*vswitch.Frame{f})
	}
	// Port 0 gets every hello, the others all but their own.
	for i := range ports {
		ports[i].waitFrames(uint64(n - 1 - min(i, 1)))
	}
	return sw, ports, ids
}

// forwardOne forwards a copy of b from port in with frames from pool.
func forwardOne(sw *vswitch.Switch, in vswitch.PortID, pool *vswitch.Pool, batch []*vswitch.Frame, b []byte) {
	f := pool.Get()
	f.SetLen(copy(f.ReadBuf(0), b))
	batch[0] = f
	sw.Forward(in, batch)
}

// reportDrops reports the share of frames the named ports dropped.
func reportDrops(b *testing.B, sw *vswitch.Switch, offered int) {
	var drops uint64
	for _, st := range sw.Stats() {
		drops += st.TotalDrops()
	}
	b.ReportMetric(float64(drops)/float64(max(offered, 1)), "drops/frame")
}

// BenchmarkForwardDecision is one known-unicast frame through
// Switch.Forward: validation, learning, lookup and the hand-over to the
// egress queue, which the port's writer drains meanwhile. Every half queue
// it waits for the writer to catch up, so the figure is the forwarding
// path and not a full queue's drop path.
func BenchmarkForwardDecision(b *testing.B) {
	const pace = 512 // half the default egress queue
	for _, size := range []int{60, 1514} {
		b.Run(fmt.Sprintf("%dB", size), func(b *testing.B) {
			sw, ports, ids := memSwitch(b, 2)
			pool := vswitch.NewPool(vswitch.SmallBufSize)
			frame := frameOfLen(hostMAC(1), hostMAC(0), size)
			batch := make([]*vswitch.Frame, 1)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			n, base := 0, ports[1].frames.Load()
			for b.Loop() {
				forwardOne(sw, ids[0], pool, batch, frame)
				if n++; n%pace == 0 {
					ports[1].waitFrames(base + uint64(n))
				}
			}
			reportDrops(b, sw, n)
		})
	}
}

// BenchmarkForwardDirect is BenchmarkForwardDecision to a port that takes
// direct writes, as a TAP does: the reader writes the frame itself, so
// the figure is the forwarding decision plus the port's write, with no
// queue and no other goroutine.
func BenchmarkForwardDirect(b *testing.B) {
	for _, size := range []int{60, 1514} {
		b.Run(fmt.Sprintf("%dB", size), func(b *testing.B) {
			sw, _, ids := memSwitchCaps(b, 2, vswitch.Caps{MaxFrame: 1514, NonBlockingWrite: true})
			pool := vswitch.NewPool(vswitch.SmallBufSize)
			frame := frameOfLen(hostMAC(1), hostMAC(0), size)
			batch := make([]*vswitch.Frame, 1)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			n := 0
			for b.Loop() {
				forwardOne(sw, ids[0], pool, batch, frame)
				n++
			}
			reportDrops(b, sw, n)
		})
	}
}

// BenchmarkFlood is one broadcast frame copied to every other port.
func BenchmarkFlood(b *testing.B) {
	for _, ports := range []int{2, 4, 8} {
		b.Run(fmt.Sprintf("%dports", ports), func(b *testing.B) {
			sw, _, ids := memSwitch(b, ports)
			pool := vswitch.NewPool(vswitch.SmallBufSize)
			frame := frameOfLen(vswitch.Broadcast, hostMAC(0), 1514)
			batch := make([]*vswitch.Frame, 1)
			b.SetBytes(int64(len(frame)))
			b.ReportAllocs()
			n := 0
			for b.Loop() {
				forwardOne(sw, ids[0], pool, batch, frame)
				n++
			}
			reportDrops(b, sw, n*(ports-1))
		})
	}
}

// BenchmarkBatch moves batches of 64 frames end to end through in-memory
// ports: the source port's reader, forwarding, the egress queue, the
// destination's writer.
func BenchmarkBatch(b *testing.B) {
	const batch = 64
	for _, size := range []int{60, 1514} {
		b.Run(fmt.Sprintf("%dB", size), func(b *testing.B) {
			_, ports, _ := memSwitch(b, 2)
			src, dst := ports[0], ports[1]
			src.src = frameOfLen(hostMAC(1), hostMAC(0), size)
			want := dst.frames.Load()
			b.SetBytes(batch * int64(size))
			b.ReportAllocs()
			for b.Loop() {
				want += batch
				src.kick <- struct{}{}
				dst.waitFrames(want)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batch), "ns/frame")
		})
	}
}

func BenchmarkFDBLookup(b *testing.B) {
	const entries = 100_000
	d := vswitch.NewFDB(2*entries, 2*entries, time.Hour)
	macs := make([]vswitch.MAC, entries)
	for i := range macs {
		macs[i] = vswitch.MAC{0x02, 0xfd, 0, byte(i >> 16), byte(i >> 8), byte(i)}
		if err := d.Learn(macs[i], vswitch.PortID(1+i%64), 0); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("hit", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if _, ok := d.Lookup(macs[i], 0); !ok {
				b.Fatalf("Lookup(%v) missed", macs[i])
			}
			i = (i + 7919) % entries
		}
	})
	b.Run("miss", func(b *testing.B) {
		b.ReportAllocs()
		mac := vswitch.MAC{0x02, 0xee, 0, 0, 0, 1}
		for b.Loop() {
			d.Lookup(mac, 0)
		}
	})
	b.Run("refresh", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			d.Learn(macs[i], vswitch.PortID(1+i%64), 0)
			i = (i + 7919) % entries
		}
	})
}

// TestForwardAllocs proves that forwarding allocates nothing per frame once
// the pools are warm. It measures Switch.Forward and the writer that drains
// the egress queue, waiting for each frame to be written and released
// before the next, so the pools always have a frame to give.
func TestForwardAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under the race detector")
	}
	tests := []struct {
		name  string
		frame []byte
		// the ports that get a frame, by index
		to []int
	}{
		{"known unicast", frameOfLen(hostMAC(1), hostMAC(0), 1514), []int{1}},
		{"flood", frameOfLen(vswitch.Broadcast, hostMAC(0), 1514), []int{1, 2}},
		{"arp reply", porttest.ARPRequest(hostMAC(0), askerIP, boundIP), []int{0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sw, ports, ids := memSwitch(t, 3)
			if err := sw.Bind(vswitch.Binding{IP: boundIP, MAC: hostMAC(1), Port: ids[1]}); err != nil {
				t.Fatal(err)
			}
			pool := vswitch.NewPool(vswitch.SmallBufSize)
			batch := make([]*vswitch.Frame, 1)
			want := make([]uint64, len(ports))
			for i, p := range ports {
				want[i] = p.frames.Load()
			}
			allocs := testing.AllocsPerRun(1000, func() {
				forwardOne(sw, ids[0], pool, batch, tt.frame)
				for _, i := range tt.to {
					want[i]++
					for spins := 0; ports[i].frames.Load() < want[i]; spins++ {
						if spins > 10_000_000 {
							t.Fatalf("port %d: frame not written", i)
						}
						runtime.Gosched()
					}
				}
			})
			if allocs != 0 {
				t.Errorf("AllocsPerRun(Forward %s) = %v, want 0", tt.name, allocs)
			}
			for _, st := range sw.Stats() {
				if st.TotalDrops() != 0 {
					t.Errorf("port %s Drops = %v, want none", st.Name, st.Drops)
				}
			}
		})
	}
}
