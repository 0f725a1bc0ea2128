package vswitch_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"runtime"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"tapswitch/internal/testutil"
	vswitch "tapswitch/switch"
	"tapswitch/switch/porttest"
)

// waitTime bounds every wait for a frame or a counter. Waits end as soon as
// their condition holds, so it only matters when a test fails.
const waitTime = 5 * time.Second

// etherTypeMarker is the IEEE local experimental EtherType 1; the harness
// marks its barrier frames with it.
const etherTypeMarker = 0x88b5

var markerMagic = []byte("tapswitch-barrier")

// markerSeq makes every barrier frame unique.
var markerSeq atomic.Uint64

// hostMAC is the MAC of the host behind port index i, 02:00:00:00:00:(i+1).
// Barrier frames come from it, so it is learned on that port.
func hostMAC(i int) vswitch.MAC { return porttest.MAC(byte(i + 1)) }

// testSwitch is a switch with porttest ports, indexed 0..n-1.
type testSwitch struct {
	t     *testing.T
	sw    *vswitch.Switch
	ports []*porttest.Port
	ids   []vswitch.PortID
}

// newTestSwitch starts a switch with ports attached in order. The switch is
// closed when the test ends, and the test fails if goroutines leaked.
func newTestSwitch(t *testing.T, opts vswitch.Options, ports ...*porttest.Port) *testSwitch {
	t.Helper()
	before := runtime.NumGoroutine()
	ts := &testSwitch{t: t, sw: vswitch.New(opts), ports: ports}
	t.Cleanup(func() {
		if err := ts.sw.Close(); err != nil {
			t.Errorf("Close() = %v, want nil", err)
		}
		testutil.WaitGoroutines(t, before)
	})
	for _, p := range ports {
		id, err := ts.sw.AddPort(p)
		if err != nil {
			t.Fatalf("AddPort(%s) = %v", p.Name(), err)
		}
		ts.ids = append(ts.ids, id)
	}
	return ts
}

// newPorts returns n ordinary ports named p0, p1, ...
func newPorts(n int) []*porttest.Port {
	ps := make([]*porttest.Port, n)
	for i := range ps {
		ps[i] = porttest.New(fmt.Sprintf("p%d", i))
	}
	return ps
}

// inject sends frames into the switch from port index i.
func (ts *testSwitch) inject(i int, frames ...[]byte) { ts.ports[i].Inject(frames...) }

// stats returns the counters of port index i.
func (ts *testSwitch) stats(i int) vswitch.PortStats {
	ts.t.Helper()
	st, err := ts.sw.PortStats(ts.ids[i])
	if err != nil {
		ts.t.Fatalf("PortStats(%d) = %v", ts.ids[i], err)
	}
	return st
}

// settle is the barrier: when it returns, every frame injected so far has
// been forwarded and every frame the switch queued for a port has been
// written. From each port in turn it sends a broadcast marker and waits
// until all other ports wrote it. A reader forwards in order and egress
// queues are FIFO, so whatever a port's earlier frames were queued to was
// written before that port's marker; and a port's own queue is flushed by
// the next port's marker, sent after this port's marker arrived (the last
// port's by a second marker from the first).
func (ts *testSwitch) settle() {
	ts.t.Helper()
	if len(ts.ports) < 2 {
		ts.t.Fatal("settle needs two ports")
	}
	for step := range len(ts.ports) + 1 {
		i := step % len(ts.ports)
		m := marker(hostMAC(i))
		ts.inject(i, m)
		for k, p := range ts.ports {
			if k != i {
				waitFrame(ts.t, p, m)
			}
		}
	}
}

// data returns the frames written to port index i, barrier markers left out.
func (ts *testSwitch) data(i int) [][]byte {
	return slices.DeleteFunc(ts.ports[i].Written(), isMarker)
}

// marker returns a unique barrier frame from src.
func marker(src vswitch.MAC) []byte {
	payload := binary.BigEndian.AppendUint64(slices.Clone(markerMagic), markerSeq.Add(1))
	return porttest.Ether(vswitch.Broadcast, src, etherTypeMarker, payload)
}

func isMarker(b []byte) bool {
	return len(b) >= vswitch.EtherHdrLen && vswitch.Ether(b).Type() == etherTypeMarker &&
		bytes.HasPrefix(vswitch.Ether(b).Payload(), markerMagic)
}

// waitFrame waits until p wrote a frame equal to want.
func waitFrame(t testing.TB, p *porttest.Port, want []byte) {
	t.Helper()
	deadline := time.Now().Add(waitTime)
	for n := 0; ; {
		got := p.WaitWritten(n+1, time.Until(deadline))
		if slices.ContainsFunc(got[n:], func(b []byte) bool { return bytes.Equal(b, want) }) {
			return
		}
		n = len(got)
		if !time.Now().Before(deadline) {
			t.Fatalf("port %s: frame % x not written within %v", p.Name(), want[:min(len(want), 32)], waitTime)
		}
	}
}

// waitFor polls cond until it returns "" or waitTime passed, and then fails
// the test with the last message. It is for counters, which a writer
// updates after the port took the frames.
func waitFor(t testing.TB, cond func() string) {
	t.Helper()
	deadline := time.Now().Add(waitTime)
	for {
		msg := cond()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(msg)
		}
		time.Sleep(time.Millisecond)
	}
}

// frameTo returns a 60-byte IPv4-typed frame from src to dst whose payload
// starts with tag, so tests can tell frames apart.
func frameTo(dst, src vswitch.MAC, tag string) []byte {
	return porttest.Ether(dst, src, vswitch.EtherTypeIP4, []byte(tag))
}

// frameOfLen returns a frame from src to dst of exactly n bytes (n >= 14).
func frameOfLen(dst, src vswitch.MAC, n int) []byte {
	b := make([]byte, n)
	e := vswitch.Ether(b)
	e.SetDst(dst)
	e.SetSrc(src)
	e.SetType(vswitch.EtherTypeIP4)
	for i := vswitch.EtherHdrLen; i < n; i++ {
		b[i] = byte(i)
	}
	return b
}

// equalFrames reports whether got and want hold the same frames in order.
func equalFrames(got, want [][]byte) bool {
	return slices.EqualFunc(got, want, bytes.Equal)
}

// describe prints frames compactly for failure messages.
func describe(frames [][]byte) string {
	var b bytes.Buffer
	b.WriteString("[")
	for i, f := range frames {
		if i > 0 {
			b.WriteString(", ")
		}
		if len(f) < vswitch.EtherHdrLen {
			fmt.Fprintf(&b, "% x", f)
			continue
		}
		e := vswitch.Ether(f)
		fmt.Fprintf(&b, "%v>%v type %04x len %d", e.Src(), e.Dst(), e.Type(), len(f))
	}
	b.WriteString("]")
	return b.String()
}
