package vswitch_test

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"runtime"
	"testing"
	"testing/synctest"
	"time"

	"tapswitch/internal/testutil"
	vswitch "tapswitch/switch"
	"tapswitch/switch/porttest"
)

func TestFlood(t *testing.T) {
	unknown := porttest.MAC(0x50)
	tests := []struct {
		name string
		from int
		dst  vswitch.MAC
	}{
		{"unknown unicast", 0, unknown},
		{"broadcast", 1, vswitch.Broadcast},
		{"ipv4 multicast", 2, vswitch.MAC{0x01, 0x00, 0x5e, 0x00, 0x00, 0x01}},
		{"ipv6 multicast", 0, vswitch.MAC{0x33, 0x33, 0x00, 0x00, 0x00, 0x01}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := newTestSwitch(t, vswitch.Options{}, newPorts(4)...)
			f := frameTo(tt.dst, hostMAC(tt.from), tt.name)
			ts.inject(tt.from, f)
			ts.settle()
			for i := range ts.ports {
				want := [][]byte{f}
				if i == tt.from {
					want = nil
				}
				if got := ts.data(i); !equalFrames(got, want) {
					t.Errorf("port %d got %s, want %s", i, describe(got), describe(want))
				}
			}
		})
	}
}

func TestKnownUnicast(t *testing.T) {
	tests := []struct {
		name     string
		hostOn   int // the port the destination host is learned on
		sendFrom int
	}{
		{"0 to 1", 1, 0},
		{"2 to 0", 0, 2},
		{"1 to 3", 3, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := newTestSwitch(t, vswitch.Options{}, newPorts(4)...)
			host := porttest.MAC(0x40)
			hello := frameTo(vswitch.Broadcast, host, "hello")
			ts.inject(tt.hostOn, hello)
			ts.settle()
			if id, ok := lookupFDB(ts.sw, host); !ok || id != ts.ids[tt.hostOn] {
				t.Fatalf("FDB()[%v] = %d, %v, want %d, true", host, id, ok, ts.ids[tt.hostOn])
			}

			f := frameTo(host, hostMAC(tt.sendFrom), "unicast")
			ts.inject(tt.sendFrom, f)
			ts.settle()
			for i := range ts.ports {
				var want [][]byte
				if i != tt.hostOn {
					want = append(want, hello)
				}
				if i == tt.hostOn {
					want = append(want, f)
				}
				if got := ts.data(i); !equalFrames(got, want) {
					t.Errorf("port %d got %s, want %s", i, describe(got), describe(want))
				}
			}
		})
	}
}

// lookupFDB finds mac in the switch's FDB listing.
func lookupFDB(sw *vswitch.Switch, mac vswitch.MAC) (vswitch.PortID, bool) {
	for _, r := range sw.FDB() {
		if r.MAC == mac {
			return r.Port, true
		}
	}
	return 0, false
}

func TestNoHairpin(t *testing.T) {
	// Two hosts behind port 0, as behind a bridge: traffic between them
	// never needs the switch, and must not come back out of port 0.
	ts := newTestSwitch(t, vswitch.Options{}, newPorts(3)...)
	a, b := porttest.MAC(0x0a), porttest.MAC(0x0b)
	helloA := frameTo(vswitch.Broadcast, a, "a")
	ts.inject(0, helloA)
	ts.settle()

	toA := frameTo(a, b, "b to a")
	ts.inject(0, toA)
	ts.settle()

	for i := range ts.ports {
		var want [][]byte
		if i != 0 {
			want = [][]byte{helloA}
		}
		if got := ts.data(i); !equalFrames(got, want) {
			t.Errorf("port %d got %s, want %s", i, describe(got), describe(want))
		}
	}
	if got := ts.stats(0).Drops; !maps.Equal(got, map[string]uint64{"hairpin": 1}) {
		t.Errorf("port 0 Drops = %v, want map[hairpin:1]", got)
	}
}

func TestMACMove(t *testing.T) {
	ts := newTestSwitch(t, vswitch.Options{}, newPorts(3)...)
	host := porttest.MAC(0x77)

	steps := []struct {
		name   string
		hostOn int
	}{
		{"first seen on port 0", 0},
		{"moved to port 1", 1},
		{"moved back to port 0", 0},
	}
	// The steps build on each other, so they are not subtests.
	for n, st := range steps {
		before := make([]int, len(ts.ports))
		for i := range ts.ports {
			before[i] = len(ts.data(i))
		}
		// The host announces itself from its new port; then port 2
		// talks to it.
		ts.inject(st.hostOn, frameTo(vswitch.Broadcast, host, "announce"))
		ts.settle()
		f := frameTo(host, hostMAC(2), fmt.Sprintf("to host, step %d", n))
		ts.inject(2, f)
		ts.settle()

		if id, ok := lookupFDB(ts.sw, host); !ok || id != ts.ids[st.hostOn] {
			t.Errorf("%s: FDB()[%v] = %d, %v, want %d, true", st.name, host, id, ok, ts.ids[st.hostOn])
		}
		for i := range 2 {
			got := ts.data(i)[before[i]:]
			gotF := containsFrame(got, f)
			if want := i == st.hostOn; gotF != want {
				t.Errorf("%s: port %d got the frame to the host: %v, want %v (frames %s)", st.name, i, gotF, want, describe(got))
			}
		}
		// Exactly one entry for host, counted on its current port.
		for i := range 2 {
			want := 1 // hostMAC(i), learned through the barrier
			if i == st.hostOn {
				want++
			}
			if got := ts.stats(i).FDBEntries; got != want {
				t.Errorf("%s: port %d FDBEntries = %d, want %d", st.name, i, got, want)
			}
		}
	}
}

func containsFrame(frames [][]byte, f []byte) bool {
	for _, g := range frames {
		if string(g) == string(f) {
			return true
		}
	}
	return false
}

func TestIngressDrops(t *testing.T) {
	src := hostMAC(0)
	tests := []struct {
		name     string
		frame    []byte
		wantDrop string // "" means the frame is flooded
	}{
		{"empty", []byte{}, "runt"},
		{"13 bytes", frameOfLen(vswitch.Broadcast, src, 14)[:13], "runt"},
		{"header only", frameOfLen(vswitch.Broadcast, src, 14), ""},
		{"max frame", frameOfLen(vswitch.Broadcast, src, 1514), ""},
		{"over max frame", frameOfLen(vswitch.Broadcast, src, 1515), "too_big"},
		{"jumbo", frameOfLen(vswitch.Broadcast, src, 9000), "too_big"},
		{"multicast source", frameTo(vswitch.Broadcast, vswitch.MAC{0x01, 0, 0x5e, 0, 0, 1}, "x"), "bad_src"},
		{"broadcast source", frameTo(porttest.MAC(9), vswitch.Broadcast, "x"), "bad_src"},
		{"zero source", frameTo(porttest.MAC(9), vswitch.MAC{}, "x"), "bad_src"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := newTestSwitch(t, vswitch.Options{}, newPorts(3)...)
			ts.inject(0, tt.frame)
			ts.settle()

			var want [][]byte
			wantDrops := map[string]uint64{}
			if tt.wantDrop == "" {
				want = [][]byte{tt.frame}
			} else {
				wantDrops[tt.wantDrop] = 1
			}
			for i := 1; i < len(ts.ports); i++ {
				if got := ts.data(i); !equalFrames(got, want) {
					t.Errorf("port %d got %s, want %s", i, describe(got), describe(want))
				}
			}
			st := ts.stats(0)
			if !maps.Equal(st.Drops, wantDrops) {
				t.Errorf("port 0 Drops = %v, want %v", st.Drops, wantDrops)
			}
			// The frame and the two barrier markers from port 0.
			if st.RxFrames != 3 {
				t.Errorf("port 0 RxFrames = %d, want 3", st.RxFrames)
			}
			if len(ts.sw.FDB()) != len(ts.ports) {
				t.Errorf("FDB() = %v, want only the %d barrier hosts", ts.sw.FDB(), len(ts.ports))
			}
		})
	}
}

func TestLearnLimits(t *testing.T) {
	srcs := []vswitch.MAC{hostMAC(0), porttest.MAC(0x21), porttest.MAC(0x22), porttest.MAC(0x23)}
	tests := []struct {
		name        string
		opts        vswitch.Options
		wantRefused uint64
		wantLearned []vswitch.MAC
	}{
		{"no limit hit", vswitch.Options{}, 0, srcs},
		{"port limit 2", vswitch.Options{FDBPortLimit: 2}, 2, srcs[:2]},
		{"port limit 1", vswitch.Options{FDBPortLimit: 1}, 3, srcs[:1]},
		{"table limit 3", vswitch.Options{FDBSize: 3}, 1, srcs[:3]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := newTestSwitch(t, tt.opts, newPorts(2)...)
			var sent [][]byte
			for _, src := range srcs {
				f := frameTo(vswitch.Broadcast, src, "learn me")
				sent = append(sent, f)
				ts.inject(0, f)
			}
			// Port 0's barrier comes from srcs[0], already known.
			ts.settle()

			if got := ts.data(1); !equalFrames(got, sent) {
				t.Errorf("port 1 got %s, want every frame %s", describe(got), describe(sent))
			}
			st := ts.stats(0)
			if st.LearnRefused != tt.wantRefused {
				t.Errorf("port 0 LearnRefused = %d, want %d", st.LearnRefused, tt.wantRefused)
			}
			if st.FDBEntries != len(tt.wantLearned) {
				t.Errorf("port 0 FDBEntries = %d, want %d", st.FDBEntries, len(tt.wantLearned))
			}
			for _, mac := range srcs {
				_, got := lookupFDB(ts.sw, mac)
				want := false
				for _, l := range tt.wantLearned {
					want = want || l == mac
				}
				if got != want {
					t.Errorf("FDB() has %v: %v, want %v", mac, got, want)
				}
			}
		})
	}
}

func TestRemovePort(t *testing.T) {
	ts := newTestSwitch(t, vswitch.Options{}, newPorts(2)...)
	goroutines := runtime.NumGoroutine()

	gone := porttest.New("gone")
	id, err := ts.sw.AddPort(gone)
	if err != nil {
		t.Fatalf("AddPort(gone) = %v", err)
	}
	ts.ports, ts.ids = append(ts.ports, gone), append(ts.ids, id)
	host, ip := porttest.MAC(0x33), netip.MustParseAddr("10.0.0.33")
	if err := ts.sw.Bind(vswitch.Binding{IP: ip, MAC: host, Port: id}); err != nil {
		t.Fatalf("Bind(%v) = %v", ip, err)
	}
	ts.inject(2, frameTo(vswitch.Broadcast, host, "hello"))
	ts.settle()
	if got, ok := lookupFDB(ts.sw, host); !ok || got != id {
		t.Fatalf("FDB()[%v] = %d, %v, want %d, true", host, got, ok, id)
	}

	goneWritten := len(gone.Written())
	before := []int{len(ts.data(0)), len(ts.data(1))}
	if err := ts.sw.RemovePort(id); err != nil {
		t.Fatalf("RemovePort(%d) = %v", id, err)
	}
	ts.ports, ts.ids = ts.ports[:2], ts.ids[:2]

	testutil.WaitGoroutines(t, goroutines)
	for _, r := range ts.sw.FDB() {
		if r.Port == id {
			t.Errorf("FDB() has %v on removed port %d", r.MAC, id)
		}
	}
	if got := ts.sw.Bindings(); len(got) != 0 {
		t.Errorf("Bindings() = %v, want none", got)
	}
	if _, err := ts.sw.PortStats(id); !errors.Is(err, vswitch.ErrNoPort) {
		t.Errorf("PortStats(%d) = %v, want ErrNoPort", id, err)
	}
	if err := ts.sw.RemovePort(id); !errors.Is(err, vswitch.ErrNoPort) {
		t.Errorf("second RemovePort(%d) = %v, want ErrNoPort", id, err)
	}
	if err := ts.sw.Bind(vswitch.Binding{IP: ip, MAC: host, Port: id}); !errors.Is(err, vswitch.ErrNoPort) {
		t.Errorf("Bind on removed port = %v, want ErrNoPort", err)
	}
	if n, err := gone.ReadBatch(0, make([]*vswitch.Frame, 1)); n != 0 || !errors.Is(err, vswitch.ErrClosed) {
		t.Errorf("removed port ReadBatch() = %d, %v, want 0, ErrClosed (port closed)", n, err)
	}
	if got := len(ts.sw.Stats()); got != 2 {
		t.Errorf("len(Stats()) = %d, want 2", got)
	}

	// The host is unknown now: traffic to it floods, and its address is
	// not answered for.
	f := frameTo(host, hostMAC(0), "to the gone host")
	req := porttest.ARPRequest(hostMAC(0), netip.MustParseAddr("10.0.0.1"), ip)
	ts.inject(0, f, req)
	ts.settle()
	if got, want := ts.data(1)[before[1]:], [][]byte{f, req}; !equalFrames(got, want) {
		t.Errorf("port 1 got %s, want %s", describe(got), describe(want))
	}
	if got := ts.data(0)[before[0]:]; len(got) != 0 {
		t.Errorf("port 0 got %s, want nothing", describe(got))
	}
	if got := len(gone.Written()); got != goneWritten {
		t.Errorf("removed port has %d frames written, want %d as before removal", got, goneWritten)
	}
}

func TestStats(t *testing.T) {
	ts := newTestSwitch(t, vswitch.Options{}, newPorts(3)...)
	b0 := frameOfLen(vswitch.Broadcast, hostMAC(0), 60)
	runt := make([]byte, 13)
	b1 := frameOfLen(vswitch.Broadcast, hostMAC(0), 1514)
	ts.inject(0, b0, runt, b1)
	ts.ports[1].WaitWritten(2, waitTime)
	// hostMAC(0) is known now: a unicast to it reaches port 0 only.
	u := frameOfLen(hostMAC(0), hostMAC(1), 100)
	ts.inject(1, u)
	waitFrame(t, ts.ports[0], u)

	type io struct{ rxF, rxB, txF, txB uint64 }
	want := []io{
		{rxF: 3, rxB: 60 + 13 + 1514, txF: 1, txB: 100},
		{rxF: 1, rxB: 100, txF: 2, txB: 60 + 1514},
		{rxF: 0, rxB: 0, txF: 2, txB: 60 + 1514},
	}
	waitFor(t, func() string {
		for i, w := range want {
			st := ts.stats(i)
			if got := (io{st.RxFrames, st.RxBytes, st.TxFrames, st.TxBytes}); got != w {
				return fmt.Sprintf("port %d rx/tx frames and bytes = %+v, want %+v", i, got, w)
			}
		}
		return ""
	})

	all := ts.sw.Stats()
	if len(all) != 3 {
		t.Fatalf("len(Stats()) = %d, want 3", len(all))
	}
	for i, st := range all {
		if st.ID != ts.ids[i] || st.Name != ts.ports[i].Name() {
			t.Errorf("Stats()[%d] = port %d %q, want %d %q", i, st.ID, st.Name, ts.ids[i], ts.ports[i].Name())
		}
	}
	if got := all[0].Drops; !maps.Equal(got, map[string]uint64{"runt": 1}) {
		t.Errorf("port 0 Drops = %v, want map[runt:1]", got)
	}
	if got := all[0].TotalDrops(); got != 1 {
		t.Errorf("port 0 TotalDrops() = %d, want 1", got)
	}
	if all[0].FDBEntries != 1 || all[1].FDBEntries != 1 || all[2].FDBEntries != 0 {
		t.Errorf("FDBEntries = %d, %d, %d, want 1, 1, 0", all[0].FDBEntries, all[1].FDBEntries, all[2].FDBEntries)
	}
}

func TestSlowPort(t *testing.T) {
	const (
		queueLen  = 4
		batchSize = 8
		frames    = 100
	)
	// The slow port is attached before the fast one, so when flooding it
	// is offered each frame first: once the fast port has every frame, the
	// slow port has been offered every frame too.
	in, slow, fast := porttest.New("in"), porttest.New("slow"), porttest.New("fast")
	ts := newTestSwitch(t, vswitch.Options{QueueLen: queueLen, BatchSize: batchSize}, in, slow, fast)
	slow.Stall()
	defer slow.Unstall()

	// One frame at a time, so that only the stalled port can fall behind:
	// every queue is short.
	var sent [][]byte
	for i := range frames {
		f := frameTo(vswitch.Broadcast, hostMAC(0), fmt.Sprintf("frame %d", i))
		sent = append(sent, f)
		ts.inject(0, f)
		waitFrame(t, fast, f)
	}
	if got := fast.Written(); !equalFrames(got, sent) {
		t.Fatalf("fast port got %d frames, want all %d in order", len(got), frames)
	}
	dropped := ts.stats(1).Drops["queue_full"]
	// The stalled writer holds at most one batch, the queue at most
	// queueLen frames; everything else was dropped.
	if min := uint64(frames - queueLen - batchSize); dropped < min || dropped > frames {
		t.Errorf("slow port Drops[queue_full] = %d, want between %d and %d", dropped, min, frames)
	}
	if got := ts.stats(0).TotalDrops(); got != 0 {
		t.Errorf("ingress port TotalDrops() = %d, want 0", got)
	}
	if got := ts.stats(2).TotalDrops(); got != 0 {
		t.Errorf("fast port TotalDrops() = %d, want 0", got)
	}

	// Once unstalled, the slow port gets what was held, in order.
	slow.Unstall()
	got := slow.WaitWritten(frames-int(dropped), waitTime)
	if uint64(len(got))+dropped != frames {
		t.Fatalf("slow port wrote %d and dropped %d, want %d in all", len(got), dropped, frames)
	}
	if !isSubsequence(got, sent) {
		t.Errorf("slow port got %s, want a subsequence of the sent frames in order", describe(got))
	}
	waitFor(t, func() string {
		if st := ts.stats(1); st.TxFrames != uint64(len(got)) {
			return fmt.Sprintf("slow port TxFrames = %d, want %d", st.TxFrames, len(got))
		}
		return ""
	})
}

func isSubsequence(sub, seq [][]byte) bool {
	i := 0
	for _, f := range seq {
		if i < len(sub) && string(sub[i]) == string(f) {
			i++
		}
	}
	return i == len(sub)
}

func TestAging(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const aging = 10 * time.Second
		sweep := time.Second // the age loop runs every AgingTime/10, at least a second
		ports := newPorts(3)
		sw := vswitch.New(vswitch.Options{AgingTime: aging})
		defer sw.Close()
		ids := make([]vswitch.PortID, len(ports))
		for i, p := range ports {
			id, err := sw.AddPort(p)
			if err != nil {
				t.Fatalf("AddPort(%s) = %v", p.Name(), err)
			}
			ids[i] = id
		}
		host := porttest.MAC(0x44)
		ports[1].Inject(frameTo(vswitch.Broadcast, host, "hello"))
		synctest.Wait()

		check := func(when string, wantKnown bool) {
			t.Helper()
			before := [3]int{}
			for i, p := range ports {
				before[i] = len(p.Written())
			}
			f := frameTo(host, hostMAC(0), when)
			ports[0].Inject(f)
			synctest.Wait()
			for i := 1; i < 3; i++ {
				got := containsFrame(ports[i].Written()[before[i]:], f)
				want := i == 1 || !wantKnown
				if got != want {
					t.Errorf("%s: port %d got the frame to the host: %v, want %v", when, i, got, want)
				}
			}
		}

		recs := sw.FDB()
		if len(recs) != 1 || recs[0].MAC != host || recs[0].Port != ids[1] || recs[0].PortName != "p1" {
			t.Fatalf("FDB() = %+v, want %v on p1", recs, host)
		}
		check("fresh", true)

		time.Sleep(aging / 2)
		synctest.Wait() // the clock's tick at aging/2 has run
		// Port 0 learned hostMAC(0) when it sent; the host is older.
		for _, r := range sw.FDB() {
			if r.MAC == host && r.Age != aging/2 {
				t.Errorf("FDB() age of %v = %v, want %v", host, r.Age, aging/2)
			}
		}
		check("half aged", true)

		time.Sleep(aging/2 + sweep + time.Second)
		synctest.Wait()
		if _, ok := lookupFDB(sw, host); ok {
			t.Errorf("FDB() still has %v after %v", host, aging+sweep)
		}
		st, err := sw.PortStats(ids[1])
		if err != nil {
			t.Fatal(err)
		}
		if st.FDBEntries != 0 {
			t.Errorf("p1 FDBEntries = %d, want 0: the sweep should have removed the entry", st.FDBEntries)
		}
		check("aged out", false)
	})
}

func TestClose(t *testing.T) {
	before := runtime.NumGoroutine()
	sw := vswitch.New(vswitch.Options{})
	ports := newPorts(3)
	for _, p := range ports {
		if _, err := sw.AddPort(p); err != nil {
			t.Fatalf("AddPort(%s) = %v", p.Name(), err)
		}
	}
	// Leave traffic in flight and one writer stuck in a stalled port.
	ports[2].Stall()
	for i := range 50 {
		ports[i%2].Inject(frameTo(vswitch.Broadcast, hostMAC(i%2), "x"))
	}
	ports[1].WaitWritten(1, waitTime)
	if err := sw.Close(); err != nil {
		t.Errorf("Close() = %v, want nil", err)
	}
	testutil.WaitGoroutines(t, before)

	if err := sw.Close(); err != nil {
		t.Errorf("second Close() = %v, want nil", err)
	}
	if _, err := sw.AddPort(porttest.New("late")); !errors.Is(err, vswitch.ErrSwitchClosed) {
		t.Errorf("AddPort after Close = %v, want ErrSwitchClosed", err)
	}
	if got := sw.Stats(); len(got) != 0 {
		t.Errorf("Stats() after Close = %v, want none", got)
	}
	// Forward after Close releases the frames and does not panic.
	pool := vswitch.NewPool(vswitch.SmallBufSize)
	f := pool.Get()
	f.SetLen(copy(f.ReadBuf(0), frameTo(vswitch.Broadcast, hostMAC(0), "late")))
	sw.Forward(1, []*vswitch.Frame{f})
}

func TestAddPortErrors(t *testing.T) {
	sw := vswitch.New(vswitch.Options{})
	defer sw.Close()
	tests := []struct {
		name string
		caps vswitch.Caps
	}{
		{"zero max frame", vswitch.Caps{}},
		{"max frame below header", vswitch.Caps{MaxFrame: 13}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := sw.AddPort(porttest.NewWithCaps("bad", tt.caps)); err == nil {
				t.Errorf("AddPort(caps %+v) = nil error, want one", tt.caps)
			}
		})
	}
	if err := sw.RemovePort(42); !errors.Is(err, vswitch.ErrNoPort) {
		t.Errorf("RemovePort(42) = %v, want ErrNoPort", err)
	}
}

// failPort is a memPort whose reads fail until it is closed and whose
// writes send at most `sends` frames of each batch.
type failPort struct {
	*memPort
	sends int
}

var errLinkDown = errors.New("link down")

func (p *failPort) ReadBatch(q int, frames []*vswitch.Frame) (int, error) {
	select {
	case <-p.closed:
		return 0, vswitch.ErrClosed
	default:
		return 0, errLinkDown
	}
}

func (p *failPort) WriteBatch(frames []*vswitch.Frame) (int, error) {
	n := min(p.sends, len(frames))
	for _, f := range frames {
		f.Release()
	}
	if n < len(frames) {
		return n, fmt.Errorf("%d frames: %w", len(frames)-n, errLinkDown)
	}
	return n, nil
}

func TestReadErrorBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sw := vswitch.New(vswitch.Options{})
		defer sw.Close()
		id, err := sw.AddPort(&failPort{memPort: newMemPort("failing", vswitch.Caps{MaxFrame: 1514})})
		if err != nil {
			t.Fatal(err)
		}
		// Reads fail at once; the reader retries after 10ms, 20ms, 40ms,
		// ... up to a second: at 0, 10, 30, 70, 150, 310, 630, 1270ms.
		tests := []struct {
			at   time.Duration
			want uint64
		}{
			{5 * time.Millisecond, 1},
			{1 * time.Second, 7},
			{1300 * time.Millisecond, 8},
			{2300 * time.Millisecond, 9}, // the back-off stays at a second
		}
		start := time.Now()
		for _, tt := range tests {
			time.Sleep(tt.at - time.Since(start))
			synctest.Wait()
			st, err := sw.PortStats(id)
			if err != nil {
				t.Fatal(err)
			}
			if st.ReadErrors != tt.want {
				t.Errorf("after %v: ReadErrors = %d, want %d", tt.at, st.ReadErrors, tt.want)
			}
		}
		// RemovePort does not wait out the back-off.
		before := time.Now()
		if err := sw.RemovePort(id); err != nil {
			t.Errorf("RemovePort() = %v", err)
		}
		if d := time.Since(before); d != 0 {
			t.Errorf("RemovePort took %v of back-off, want 0", d)
		}
	})
}

func TestWriteErrors(t *testing.T) {
	const frames = 50
	tests := []struct {
		name  string
		sends int
	}{
		{"all fail", 0},
		{"one per batch", 1},
		{"all sent", 1 << 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := &failPort{memPort: newMemPort("out", vswitch.Caps{MaxFrame: 1514}), sends: tt.sends}
			in := porttest.New("in")
			ts := newTestSwitch(t, vswitch.Options{}, in)
			id, err := ts.sw.AddPort(out)
			if err != nil {
				t.Fatal(err)
			}
			const size = 100
			for range frames {
				in.Inject(frameOfLen(vswitch.Broadcast, hostMAC(0), size))
			}
			waitFor(t, func() string {
				st, _ := ts.sw.PortStats(id)
				if st.TxFrames+st.Drops["write_error"] != frames {
					return fmt.Sprintf("TxFrames %d + Drops[write_error] %d = %d, want %d",
						st.TxFrames, st.Drops["write_error"], st.TxFrames+st.Drops["write_error"], frames)
				}
				return ""
			})
			st, _ := ts.sw.PortStats(id)
			if st.TxBytes != st.TxFrames*size {
				t.Errorf("TxBytes = %d, want %d frames of %d", st.TxBytes, st.TxFrames, size)
			}
			switch tt.sends {
			case 0:
				if st.TxFrames != 0 {
					t.Errorf("TxFrames = %d, want 0", st.TxFrames)
				}
			case 1:
				// One per WriteBatch call: how many calls depends on
				// how the writer's batches fell.
				if st.TxFrames == 0 {
					t.Errorf("TxFrames = 0, want at least one")
				}
			default:
				if st.TxFrames != frames {
					t.Errorf("TxFrames = %d, want %d", st.TxFrames, frames)
				}
			}
		})
	}
}

// TestFramesReleasedOnce checks the ownership contract: a Port's
// WriteBatch releases what it is given, and the switch must then not
// release the frames again. A frame put back twice would be handed to two
// owners at once.
func TestFramesReleasedOnce(t *testing.T) {
	const frames = 64
	sw, ports, ids := memSwitch(t, 3)
	pool := vswitch.NewPool(vswitch.SmallBufSize)
	batch := make([]*vswitch.Frame, 1)
	before, before2 := ports[1].frames.Load(), ports[2].frames.Load()
	for i := range frames {
		dst := hostMAC(1)
		if i%2 == 0 {
			dst = vswitch.Broadcast // a copy for port 2 from the switch's pool
		}
		forwardOne(sw, ids[0], pool, batch, frameTo(dst, hostMAC(0), "x"))
		ports[1].waitFrames(before + uint64(i) + 1)
	}
	ports[2].waitFrames(before2 + frames/2)
	seen := map[*vswitch.Frame]bool{}
	for range 2 * frames {
		f := pool.Get()
		if seen[f] {
			t.Fatalf("pool.Get() returned frame %p twice: it was released twice", f)
		}
		seen[f] = true
	}
}

// droppingPort is a port that drops frames itself, as a TAP does with a
// truncated read, and says so through vswitch.DropCounter.
type droppingPort struct {
	*porttest.Port
}

func (droppingPort) Drops() map[string]uint64 { return map[string]uint64{"rx_short": 3, "too_big": 1} }

func TestPortDropsMergedIntoStats(t *testing.T) {
	sw := vswitch.New(vswitch.Options{})
	defer sw.Close()
	a := porttest.New("a")
	id, err := sw.AddPort(droppingPort{a})
	if err != nil {
		t.Fatal(err)
	}
	a.Inject(make([]byte, 5)) // a runt, which the switch counts itself
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, err := sw.PortStats(id)
		if err != nil {
			t.Fatal(err)
		}
		if st.Drops["runt"] == 1 {
			if st.Drops["rx_short"] != 3 || st.Drops["too_big"] != 1 {
				t.Errorf("Drops = %v, want the port's rx_short=3 and too_big=1 merged in", st.Drops)
			}
			if all := sw.Stats(); len(all) != 1 || all[0].Drops["rx_short"] != 3 {
				t.Errorf("Stats() = %+v, want the port's own drops too", all)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("runt never counted: %v", st.Drops)
		}
		time.Sleep(time.Millisecond)
	}
}
