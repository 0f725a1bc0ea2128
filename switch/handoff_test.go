package vswitch_test

import (
	"encoding/binary"
	"testing"
	"time"

	vswitch "tapswitch/switch"
	"tapswitch/switch/porttest"
)

// TestDirectWriteKeepsOrder sends numbered frames from two ports at once
// to a port that takes direct writes. Each source's frames then reach it
// partly straight from that source's reader and partly through its queue,
// whenever the other source is writing; every frame must arrive, and each
// source's in the order sent.
func TestDirectWriteKeepsOrder(t *testing.T) {
	const perSource = 5000
	caps := vswitch.Caps{MaxFrame: 1514, NonBlockingWrite: true}
	a, b, c := porttest.New("a"), porttest.NewWithCaps("b", caps), porttest.New("c")
	b.SetWriteDelay(20 * time.Microsecond) // so the two sources contend for b
	ts := newTestSwitch(t, vswitch.Options{QueueLen: 2 * perSource}, a, b, c)
	// b's MAC is learned first, so nothing below is flooded.
	ts.inject(1, frameTo(hostMAC(0), hostMAC(1), "hello"))
	a.WaitWritten(1, waitTime)

	numbered := func(src vswitch.MAC, i int) []byte {
		var seq [4]byte
		binary.BigEndian.PutUint32(seq[:], uint32(i))
		return porttest.Ether(hostMAC(1), src, vswitch.EtherTypeIP4, seq[:])
	}
	done := make(chan struct{})
	for _, src := range []struct {
		p   *porttest.Port
		mac vswitch.MAC
	}{{a, hostMAC(0)}, {c, hostMAC(2)}} {
		go func() {
			for i := range perSource {
				src.p.Inject(numbered(src.mac, i))
			}
			done <- struct{}{}
		}()
	}
	<-done
	<-done
	got := b.WaitWritten(2*perSource, 20*time.Second)
	if len(got) != 2*perSource {
		t.Fatalf("b got %d frames, want %d; stats %+v", len(got), 2*perSource, ts.stats(1))
	}
	next := map[vswitch.MAC]uint32{}
	for _, f := range got {
		e := vswitch.Ether(f)
		seq := binary.BigEndian.Uint32(e.Payload())
		if seq != next[e.Src()] {
			t.Fatalf("from %v: frame %d after %d: out of order", e.Src(), seq, next[e.Src()]-1)
		}
		next[e.Src()]++
	}
}
