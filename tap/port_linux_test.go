package tap

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"tapswitch/internal/testutil"
	vswitch "tapswitch/switch"
)

// newTestPort returns a Port over SOCK_SEQPACKET socketpairs, which keep
// frame boundaries as a TAP fd does, and the peer end of each queue.
func newTestPort(t testing.TB, queues int, offloads bool) (*Port, []int) {
	t.Helper()
	var fds, peers []int
	for range queues {
		sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		fds, peers = append(fds, sp[0]), append(peers, sp[1])
	}
	t.Cleanup(func() { closeFDs(peers) })
	cfg, err := Config{NetNS: "test", PortName: "test0", MAC: vswitch.MAC{2, 0, 0, 0, 0, 1},
		Queues: queues, Offloads: offloads}.withDefaults(false)
	if err != nil {
		t.Fatal(err)
	}
	p, err := newPortFromFDs(fds, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p, peers
}

// testFrame returns a frame of n bytes from pool whose bytes encode i.
func testFrame(pool *vswitch.Pool, i, n int, o vswitch.Offload) *vswitch.Frame {
	f := pool.Get()
	copy(f.ReadBuf(0), payload(i, n))
	f.SetLen(n)
	f.Offload = o
	return f
}

func payload(i, n int) []byte {
	return bytes.Repeat([]byte{byte(i)}, n)
}

// peerSend writes one message, a header for o and then frame, to fd.
func peerSend(t testing.TB, fd int, o vswitch.Offload, frame []byte) {
	t.Helper()
	msg := make([]byte, vnetHdrLen, vnetHdrLen+len(frame))
	if err := encodeVnetHdr(msg, o); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.Write(fd, append(msg, frame...)); err != nil {
		t.Fatalf("peer write: %v", err)
	}
}

func releaseAll(frames []*vswitch.Frame) {
	for i, f := range frames {
		if f != nil {
			f.Release()
			frames[i] = nil
		}
	}
}

func TestPortAccessors(t *testing.T) {
	p, _ := newTestPort(t, 3, false)
	if p.Name() != "test0" || p.Queues() != 3 {
		t.Errorf("Name(), Queues() = %q, %d, want test0, 3", p.Name(), p.Queues())
	}
	if got, want := p.Caps(), (vswitch.Caps{GSO: false, MaxFrame: 1514, NonBlockingWrite: true}); got != want {
		t.Errorf("Caps() = %+v, want %+v", got, want)
	}
	p2, _ := newTestPort(t, 1, true)
	if !p2.Caps().GSO {
		t.Errorf("Caps().GSO = false with offloads")
	}
	if _, err := p.ReadBatch(3, make([]*vswitch.Frame, 1)); err == nil {
		t.Errorf("ReadBatch(3) on 3 queues = nil error")
	}
}

func TestReadBatchBatches(t *testing.T) {
	p, peers := newTestPort(t, 1, true)
	tso := vswitch.Offload{GSOType: vswitch.GSOTCPv4, GSOSize: 1448, HdrLen: 66,
		NeedsCsum: true, CsumStart: 34, CsumOffset: 16}
	for i := range 5 {
		peerSend(t, peers[0], tso, payload(i, 60+i))
	}
	frames := make([]*vswitch.Frame, 3)
	var got []*vswitch.Frame
	for _, want := range []int{3, 2} { // batch of 3, then the 2 left
		n, err := p.ReadBatch(0, frames)
		if err != nil || n != want {
			t.Fatalf("ReadBatch = %d, %v, want %d frames in one call", n, err, want)
		}
		got = append(got, frames[:n]...)
	}
	for i, f := range got {
		if !bytes.Equal(f.Bytes(), payload(i, 60+i)) || f.Offload != tso {
			t.Errorf("frame %d = % x %+v, want %d bytes of %d and %+v", i, f.Bytes(), f.Offload, 60+i, i, tso)
		}
		f.Release()
	}
}

func TestReadBatchDropsBadFrames(t *testing.T) {
	p, peers := newTestPort(t, 1, false)
	unix.Write(peers[0], []byte{1, 2, 3})                                       // short
	unix.Write(peers[0], append([]byte{0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 1)) // UFO
	unix.Write(peers[0], make([]byte, vswitch.SmallBufSize))                    // too long
	peerSend(t, peers[0], vswitch.Offload{}, payload(7, 60))

	frames := make([]*vswitch.Frame, 8)
	n, err := p.ReadBatch(0, frames)
	if err != nil || n != 1 || !bytes.Equal(frames[0].Bytes(), payload(7, 60)) {
		t.Fatalf("ReadBatch = %d, %v, want only the good frame", n, err)
	}
	releaseAll(frames[:n])
	if got, want := p.Stats(), (Stats{RxShort: 1, RxTooLong: 1, RxBadHeader: 1}); got != want {
		t.Errorf("Stats() = %+v, want %+v", got, want)
	}
	want := map[string]uint64{"rx_short": 1, "rx_truncated": 1, "rx_bad_vnet_header": 1}
	if got := p.Drops(); !maps.Equal(got, want) {
		t.Errorf("Drops() = %v, want %v", got, want)
	}
}

// TestRoundTrip writes frames out of the port, reflects each message at the
// peer, and reads the same frames and offloads back.
func TestRoundTrip(t *testing.T) {
	p, peers := newTestPort(t, 1, true)
	pool := vswitch.NewPool(vswitch.LargeBufSize)
	offs := []vswitch.Offload{
		{},
		{DataValid: true},
		{GSOType: vswitch.GSOTCPv6, GSOSize: 1428, HdrLen: 86, NeedsCsum: true, CsumStart: 54, CsumOffset: 16},
		{GSOType: vswitch.GSOUDPL4, GSOSize: 1472, HdrLen: 42, NeedsCsum: true, CsumStart: 34, CsumOffset: 6},
	}
	var out []*vswitch.Frame
	for i, o := range offs {
		out = append(out, testFrame(pool, i, 1000*(i+1), o))
	}
	// WriteBatch releases the frames: keep what they held.
	var want [][]byte
	for _, f := range out {
		want = append(want, bytes.Clone(f.Bytes()))
	}
	if n, err := p.WriteBatch(out); n != len(out) || err != nil {
		t.Fatalf("WriteBatch = %d, %v, want %d, nil", n, err, len(out))
	}
	buf := make([]byte, 65536)
	for range out {
		m, err := unix.Read(peers[0], buf)
		if err != nil {
			t.Fatal(err)
		}
		unix.Write(peers[0], buf[:m])
	}
	in := make([]*vswitch.Frame, 8)
	n, err := p.ReadBatch(0, in)
	if err != nil || n != len(out) {
		t.Fatalf("ReadBatch = %d, %v, want %d", n, err, len(out))
	}
	defer releaseAll(in[:n])
	for i := range n {
		if !bytes.Equal(in[i].Bytes(), want[i]) || in[i].Offload != offs[i] {
			t.Errorf("frame %d back = %d bytes %+v, want %d bytes %+v",
				i, in[i].Len(), in[i].Offload, len(want[i]), offs[i])
		}
	}
}

func TestWriteBatchStopsAtFirstError(t *testing.T) {
	pool := vswitch.NewPool(vswitch.SmallBufSize)
	t.Run("bad frame", func(t *testing.T) {
		p, peers := newTestPort(t, 1, false)
		batch := []*vswitch.Frame{
			testFrame(pool, 0, 60, vswitch.Offload{}),
			testFrame(pool, 1, 60, vswitch.Offload{GSOType: 99}),
			testFrame(pool, 2, 60, vswitch.Offload{}),
		}
		n, err := p.WriteBatch(batch)
		if n != 1 || err == nil {
			t.Fatalf("WriteBatch = %d, %v, want 1 and the second frame's error", n, err)
		}
		unix.SetNonblock(peers[0], true)
		buf := make([]byte, 2048)
		var got int
		for {
			if _, err := unix.Read(peers[0], buf); err != nil {
				break
			}
			got++
		}
		if got != 1 {
			t.Errorf("peer received %d frames, want 1", got)
		}
		// Every frame went back to its pool, the unsent ones too.
		for i, f := range batch {
			if f.Len() != 0 {
				t.Errorf("frame %d not released: len %d", i, f.Len())
			}
		}
	})
	t.Run("closed peer", func(t *testing.T) {
		p, peers := newTestPort(t, 1, false)
		unix.Close(peers[0])
		peers[0] = -1
		batch := []*vswitch.Frame{testFrame(pool, 0, 60, vswitch.Offload{})}
		n, err := p.WriteBatch(batch)
		if n != 0 || !errors.Is(err, unix.EPIPE) {
			t.Errorf("WriteBatch to a closed peer = %d, %v, want 0, EPIPE", n, err)
		}
	})
	t.Run("full", func(t *testing.T) {
		p, _ := newTestPort(t, 1, false)
		batch := make([]*vswitch.Frame, 1000)
		for i := range batch {
			batch[i] = testFrame(pool, i, 1500, vswitch.Offload{})
		}
		start := time.Now()
		n, err := p.WriteBatch(batch)
		if n == 0 || n == len(batch) || !errors.Is(err, unix.EAGAIN) {
			t.Errorf("WriteBatch to an unread peer = %d, %v, want some frames and EAGAIN", n, err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("WriteBatch to a full peer took %v; it must not wait", d)
		}
	})
}

func TestCloseUnblocksReadBatch(t *testing.T) {
	testutil.CheckGoroutines(t)
	p, _ := newTestPort(t, 2, false)
	errc := make(chan error, p.Queues())
	for q := range p.Queues() {
		go func() {
			n, err := p.ReadBatch(q, make([]*vswitch.Frame, 4))
			if n != 0 {
				err = fmt.Errorf("ReadBatch(%d) = %d frames from an idle peer", q, n)
			}
			errc <- err
		}()
	}
	select {
	case err := <-errc:
		t.Fatalf("ReadBatch returned before Close: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for range p.Queues() {
		select {
		case err := <-errc:
			if !errors.Is(err, vswitch.ErrClosed) {
				t.Errorf("ReadBatch after Close = %v, want ErrClosed", err)
			}
		case <-time.After(time.Second):
			t.Fatal("ReadBatch still blocked 1s after Close")
		}
	}
	if _, err := p.ReadBatch(0, make([]*vswitch.Frame, 1)); !errors.Is(err, vswitch.ErrClosed) {
		t.Errorf("ReadBatch on a closed port = %v, want ErrClosed", err)
	}
	f := vswitch.NewPool(vswitch.SmallBufSize).Get()
	if _, err := p.WriteBatch([]*vswitch.Frame{f}); !errors.Is(err, vswitch.ErrClosed) {
		t.Errorf("WriteBatch on a closed port = %v, want ErrClosed", err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close = %v, want nil", err)
	}
}

func TestReadWriteAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool drop frames, which allocates")
	}
	p, peers := newTestPort(t, 1, false)
	pool := vswitch.NewPool(vswitch.SmallBufSize)
	out := make([]*vswitch.Frame, 1)
	in := make([]*vswitch.Frame, 1)
	buf := make([]byte, 2048)
	allocs := testing.AllocsPerRun(100, func() {
		out[0] = pool.Get()
		out[0].SetLen(1500)
		p.WriteBatch(out)
		m, _ := unix.Read(peers[0], buf)
		unix.Write(peers[0], buf[:m])
		if n, _ := p.ReadBatch(0, in); n == 1 {
			in[0].Release()
		}
	})
	if allocs != 0 {
		t.Errorf("WriteBatch + ReadBatch allocate %v times per frame, want 0", allocs)
	}
}

// BenchmarkReadBatch measures reading batches of 32 frames of 1500 bytes.
func BenchmarkReadBatch(b *testing.B) {
	p, peers := newTestPort(b, 1, false)
	msg := make([]byte, vnetHdrLen+1500)
	frames := make([]*vswitch.Frame, 32)
	b.ReportAllocs()
	b.SetBytes(int64(len(frames) * 1500))
	for b.Loop() {
		for range frames {
			unix.Write(peers[0], msg)
		}
		for got := 0; got < len(frames); {
			n, err := p.ReadBatch(0, frames[got:])
			if err != nil {
				b.Fatal(err)
			}
			got += n
		}
		releaseAll(frames)
	}
}

// BenchmarkWriteBatch measures writing batches of 32 frames of 1500 bytes.
func BenchmarkWriteBatch(b *testing.B) {
	p, peers := newTestPort(b, 1, false)
	pool := vswitch.NewPool(vswitch.SmallBufSize)
	batch := make([]*vswitch.Frame, 32)
	buf := make([]byte, 2048)
	b.ReportAllocs()
	b.SetBytes(int64(len(batch) * 1500))
	for b.Loop() {
		// WriteBatch releases the frames; take fresh ones from the pool.
		for i := range batch {
			batch[i] = pool.Get()
			batch[i].SetLen(1500)
		}
		if n, err := p.WriteBatch(batch); n != len(batch) {
			b.Fatal(n, err)
		}
		for range batch {
			unix.Read(peers[0], buf)
		}
	}
}
