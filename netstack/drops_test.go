package netstack

import (
	"net/netip"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/refs"

	"tapswitch/internal/testutil"
	vswitch "tapswitch/switch"
	"tapswitch/switch/porttest"
)

// newBarePort returns a Port with no switch, for tests that drive
// WriteBatch and ReadBatch themselves.
func newBarePort(t *testing.T, queueLen int) *Port {
	t.Helper()
	testutil.CheckGoroutines(t)
	p, err := New(Options{MAC: gwMAC, QueueLen: queueLen, Addrs: []netip.Prefix{netip.MustParsePrefix("10.244.0.1/24")}})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		p.Close()
		refs.DoRepeatedLeakCheck()
	})
	return p
}

func framesOf(pool *vswitch.Pool, bs ...[]byte) []*vswitch.Frame {
	var fs []*vswitch.Frame
	for _, b := range bs {
		f := pool.Get()
		f.SetLen(copy(f.ReadBuf(0), b))
		fs = append(fs, f)
	}
	return fs
}

// TestQueueFull checks that the stack's replies beyond the queue are
// dropped and counted, and that WriteBatch does not wait for a reader.
func TestQueueFull(t *testing.T) {
	p := newBarePort(t, 2)
	pool := vswitch.NewPool(vswitch.SmallBufSize)
	var reqs [][]byte
	for i := range 5 {
		reqs = append(reqs, porttest.ARPRequest(porttest.MAC(byte(0x10+i)), netip.AddrFrom4([4]byte{10, 244, 0, byte(2 + i)}), gw4))
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if n, err := p.WriteBatch(framesOf(pool, reqs...)); n != 5 || err != nil {
			t.Errorf("WriteBatch = %d, %v; want 5, nil", n, err)
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("WriteBatch blocked with nobody reading")
	}
	if d := p.Drops()["out_queue_full"]; d != 3 {
		t.Errorf("Drops()[out_queue_full] = %d, want 3", d)
	}
	batch := make([]*vswitch.Frame, 8)
	n, err := p.ReadBatch(0, batch)
	if n != 2 || err != nil {
		t.Fatalf("ReadBatch = %d, %v; want 2, nil", n, err)
	}
	for i, f := range batch[:n] {
		if a := vswitch.ARP(vswitch.Ether(f.Bytes()).Payload()); a.Op() != 2 || a.TPA() != netip.AddrFrom4([4]byte{10, 244, 0, byte(2 + i)}) {
			t.Errorf("frame %d: ARP op %d for %s, want a reply to the %d. request", i, a.Op(), a.TPA(), i+1)
		}
		f.Release()
	}
}

// TestBadFrames checks that frames the Port cannot take are dropped and
// counted without an error: too short, too long without GSO, a UDP
// super-frame that is not UDP, and a flooded frame for another MAC.
func TestBadFrames(t *testing.T) {
	p := newBarePort(t, 0)
	pool := vswitch.NewPool(vswitch.SmallBufSize)
	other := porttest.Ether(porttest.MAC(0x77), podMAC, vswitch.EtherTypeIP4, ipv4Packet(pod4, gw4, 1, icmpEcho(8, 1, 1, nil)))
	fs := framesOf(pool, make([]byte, 10), make([]byte, 1600), porttest.ARPRequest(podMAC, pod4, gw4), other)
	fs[2].Offload.GSOType = vswitch.GSOUDPL4
	fs[2].Offload.GSOSize = 100
	if n, err := p.WriteBatch(fs); n != 4 || err != nil {
		t.Errorf("WriteBatch = %d, %v; want 4, nil", n, err)
	}
	if d := p.Drops()["in_bad_frame"]; d != 3 {
		t.Errorf("Drops()[in_bad_frame] = %d, want 3", d)
	}
	if d := p.Drops()["in_not_ours"]; d != 1 {
		t.Errorf("Drops()[in_not_ours] = %d, want 1", d)
	}
}

// TestCloseWhileWriting runs Close against a busy writer and reader, for
// the race detector and the leak checks.
func TestCloseWhileWriting(t *testing.T) {
	p := newBarePort(t, 16)
	pool := vswitch.NewPool(vswitch.SmallBufSize)
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			if _, err := p.WriteBatch(framesOf(pool, porttest.ARPRequest(podMAC, pod4, gw4))); err != nil {
				return
			}
		}
	})
	wg.Go(func() {
		batch := make([]*vswitch.Frame, 8)
		for {
			n, err := p.ReadBatch(0, batch)
			for _, f := range batch[:n] {
				f.Release()
			}
			if err != nil {
				return
			}
		}
	})
	time.Sleep(50 * time.Millisecond)
	p.Close()
	wg.Wait()
}
