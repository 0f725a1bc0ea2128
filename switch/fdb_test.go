package vswitch_test

import (
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	vswitch "tapswitch/switch"
	"tapswitch/switch/porttest"
)

// fdbStep is one call on an FDB and what it must return. Times are in
// seconds from an arbitrary origin.
type fdbStep struct {
	do   string // learn, lookup, expire, flush, len, portlen
	mac  vswitch.MAC
	port vswitch.PortID
	at   int64
	err  error          // learn
	want vswitch.PortID // lookup
	ok   bool           // lookup
	n    int            // expire, flush, len, portlen
}

func learn(mac vswitch.MAC, port vswitch.PortID, at int64, err error) fdbStep {
	return fdbStep{do: "learn", mac: mac, port: port, at: at, err: err}
}
func hit(mac vswitch.MAC, at int64, port vswitch.PortID) fdbStep {
	return fdbStep{do: "lookup", mac: mac, at: at, want: port, ok: true}
}
func miss(mac vswitch.MAC, at int64) fdbStep {
	return fdbStep{do: "lookup", mac: mac, at: at}
}
func expire(at int64, n int) fdbStep { return fdbStep{do: "expire", at: at, n: n} }
func flush(port vswitch.PortID, n int) fdbStep {
	return fdbStep{do: "flush", port: port, n: n}
}
func length(n int) fdbStep                       { return fdbStep{do: "len", n: n} }
func portLen(port vswitch.PortID, n int) fdbStep { return fdbStep{do: "portlen", port: port, n: n} }

// sec converts seconds to the nanoseconds the FDB's clock counts.
func sec(s int64) int64 { return s * int64(time.Second) }

// fdbMAC returns a distinct MAC for each i below 65536.
func fdbMAC(i int) vswitch.MAC { return vswitch.MAC{0x02, 0xfd, 0, 0, byte(i >> 8), byte(i)} }

// runFDB runs steps on d in order.
func runFDB(t *testing.T, d *vswitch.FDB, steps []fdbStep) {
	t.Helper()
	for i, st := range steps {
		switch st.do {
		case "learn":
			if err := d.Learn(st.mac, st.port, sec(st.at)); !errors.Is(err, st.err) {
				t.Errorf("step %d: Learn(%v, %d, %ds) = %v, want %v", i, st.mac, st.port, st.at, err, st.err)
			}
		case "lookup":
			port, ok := d.Lookup(st.mac, sec(st.at))
			if ok != st.ok || (ok && port != st.want) {
				t.Errorf("step %d: Lookup(%v, %ds) = %d, %v, want %d, %v", i, st.mac, st.at, port, ok, st.want, st.ok)
			}
		case "expire":
			if n := d.Expire(sec(st.at)); n != st.n {
				t.Errorf("step %d: Expire(%ds) = %d, want %d", i, st.at, n, st.n)
			}
		case "flush":
			if n := d.Flush(st.port); n != st.n {
				t.Errorf("step %d: Flush(%d) = %d, want %d", i, st.port, n, st.n)
			}
		case "len":
			if n := d.Len(); n != st.n {
				t.Errorf("step %d: Len() = %d, want %d", i, n, st.n)
			}
		case "portlen":
			if n := d.PortLen(st.port); n != st.n {
				t.Errorf("step %d: PortLen(%d) = %d, want %d", i, st.port, n, st.n)
			}
		default:
			t.Fatalf("step %d: unknown step %q", i, st.do)
		}
	}
}

func TestFDB(t *testing.T) {
	a, b, c, d := porttest.MAC(0xa), porttest.MAC(0xb), porttest.MAC(0xc), porttest.MAC(0xd)
	const ttl = 10 // seconds
	tests := []struct {
		name              string
		maxAll, maxOnPort int
		steps             []fdbStep
	}{
		{"empty", 10, 10, []fdbStep{
			miss(a, 0), length(0), portLen(1, 0), expire(100, 0), flush(1, 0),
		}},
		{"learn and look up", 10, 10, []fdbStep{
			learn(a, 1, 0, nil), learn(b, 2, 0, nil),
			hit(a, 0, 1), hit(b, 0, 2), miss(c, 0),
			length(2), portLen(1, 1), portLen(2, 1), portLen(3, 0),
		}},
		{"learning twice is one entry", 10, 10, []fdbStep{
			learn(a, 1, 0, nil), learn(a, 1, 1, nil), learn(a, 1, 1, nil),
			length(1), portLen(1, 1),
		}},
		{"lookup ignores expired entries", 10, 10, []fdbStep{
			learn(a, 1, 0, nil),
			hit(a, ttl, 1), miss(a, ttl+1), miss(a, 1000),
			length(1), // not removed yet
		}},
		{"traffic refreshes", 10, 10, []fdbStep{
			learn(a, 1, 0, nil), learn(a, 1, 8, nil),
			hit(a, 8+ttl, 1), miss(a, 8+ttl+1),
			expire(8+ttl, 0), expire(8+ttl+1, 1),
		}},
		{"expire removes only expired entries", 10, 10, []fdbStep{
			learn(a, 1, 0, nil), learn(b, 1, 5, nil), learn(c, 2, 0, nil),
			expire(ttl, 0), length(3),
			expire(ttl+1, 2), length(1), portLen(1, 1), portLen(2, 0),
			hit(b, ttl+1, 1), miss(a, ttl+1), miss(c, ttl+1),
			expire(5+ttl+1, 1), length(0), portLen(1, 0),
		}},
		{"expired entry relearned", 10, 10, []fdbStep{
			learn(a, 1, 0, nil), miss(a, 20), learn(a, 2, 20, nil),
			hit(a, 20, 2), portLen(1, 0), portLen(2, 1), length(1),
		}},
		{"table full refuses new macs", 2, 10, []fdbStep{
			learn(a, 1, 0, nil), learn(b, 2, 0, nil),
			learn(c, 3, 0, vswitch.ErrFDBFull), miss(c, 0),
			length(2), portLen(3, 0),
		}},
		{"table full still refreshes and moves known macs", 2, 10, []fdbStep{
			learn(a, 1, 0, nil), learn(b, 1, 0, nil),
			learn(a, 1, 9, nil), hit(a, 9+ttl, 1), // refreshed past its first life
			learn(b, 2, 9, nil), hit(b, 9, 2),
			portLen(1, 1), portLen(2, 1), length(2),
		}},
		{"expire frees table slots", 2, 10, []fdbStep{
			learn(a, 1, 0, nil), learn(b, 2, 0, nil),
			// Expired but not yet removed: still counts.
			learn(c, 3, 20, vswitch.ErrFDBFull),
			expire(20, 2),
			learn(c, 3, 20, nil), learn(d, 3, 20, nil), hit(c, 20, 3),
		}},
		{"port full refuses new macs", 10, 2, []fdbStep{
			learn(a, 1, 0, nil), learn(b, 1, 0, nil),
			learn(c, 1, 0, vswitch.ErrPortFDBFull), miss(c, 0),
			learn(c, 2, 0, nil), hit(c, 0, 2),
			learn(a, 1, 5, nil), // a known MAC refreshes on a full port
			portLen(1, 2), portLen(2, 1), length(3),
		}},
		{"table limit is checked first", 2, 1, []fdbStep{
			learn(a, 1, 0, nil), learn(b, 2, 0, nil),
			learn(c, 1, 0, vswitch.ErrFDBFull),
		}},
		{"expire frees port slots", 10, 1, []fdbStep{
			learn(a, 1, 0, nil),
			learn(b, 1, 20, vswitch.ErrPortFDBFull),
			expire(20, 1), portLen(1, 0),
			learn(b, 1, 20, nil), hit(b, 20, 1), portLen(1, 1),
		}},
		{"mac moves to another port", 10, 10, []fdbStep{
			learn(a, 1, 0, nil), learn(b, 1, 0, nil),
			learn(a, 2, 1, nil), hit(a, 1, 2),
			portLen(1, 1), portLen(2, 1), length(2),
			learn(a, 1, 2, nil), hit(a, 2, 1),
			portLen(1, 2), portLen(2, 0), length(2),
		}},
		{"move to a full port drops the stale entry", 10, 1, []fdbStep{
			learn(a, 1, 0, nil), learn(b, 2, 0, nil),
			learn(a, 2, 1, vswitch.ErrPortFDBFull),
			miss(a, 1), // not on port 1 any more, not learned on port 2
			// The dead entry is kept, counted on no port, until an Expire.
			portLen(1, 0), portLen(2, 1), length(2),
			learn(a, 1, 2, nil), hit(a, 2, 1), // port 1 has room again
			portLen(1, 1), length(2),
		}},
		{"a dead entry goes at the next Expire", 10, 1, []fdbStep{
			learn(a, 1, 0, nil), learn(b, 2, 0, nil),
			learn(a, 2, 1, vswitch.ErrPortFDBFull),
			expire(1, 1), length(1), portLen(1, 0), portLen(2, 1), hit(b, 1, 2),
		}},
		{"flush removes one port", 10, 2, []fdbStep{
			learn(a, 1, 0, nil), learn(b, 1, 0, nil), learn(c, 2, 0, nil),
			flush(1, 2), miss(a, 0), miss(b, 0), hit(c, 0, 2),
			portLen(1, 0), length(1),
			flush(1, 0),
			// The port's limit starts again from zero.
			learn(a, 1, 0, nil), learn(b, 1, 0, nil), learn(d, 1, 0, vswitch.ErrPortFDBFull),
		}},
		{"flush frees table slots", 2, 10, []fdbStep{
			learn(a, 1, 0, nil), learn(b, 1, 0, nil),
			flush(1, 2), learn(c, 2, 0, nil), learn(d, 2, 0, nil),
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			runFDB(t, vswitch.NewFDB(tt.maxAll, tt.maxOnPort, ttl*time.Second), tt.steps)
		})
	}
}

func TestFDBEntries(t *testing.T) {
	d := vswitch.NewFDB(100, 100, 10*time.Second)
	learnings := []struct {
		mac  vswitch.MAC
		port vswitch.PortID
		at   int64
	}{
		{porttest.MAC(9), 2, 0},
		{porttest.MAC(3), 1, 1},
		{porttest.MAC(7), 2, 2},
		{vswitch.MAC{0x0a, 0, 0, 0, 0, 1}, 1, 3},
		{porttest.MAC(1), 3, 4},
		{porttest.MAC(5), 1, -20}, // long expired
	}
	for _, l := range learnings {
		if err := d.Learn(l.mac, l.port, sec(l.at)); err != nil {
			t.Fatalf("Learn(%v, %d, %ds) = %v", l.mac, l.port, l.at, err)
		}
	}
	got := d.Entries(sec(5))
	want := []vswitch.FDBEntry{
		{MAC: porttest.MAC(3), Port: 1, Age: 4 * time.Second},
		{MAC: vswitch.MAC{0x0a, 0, 0, 0, 0, 1}, Port: 1, Age: 2 * time.Second},
		{MAC: porttest.MAC(7), Port: 2, Age: 3 * time.Second},
		{MAC: porttest.MAC(9), Port: 2, Age: 5 * time.Second},
		{MAC: porttest.MAC(1), Port: 3, Age: 1 * time.Second},
	}
	if !slices.Equal(got, want) {
		t.Errorf("Entries(5s) = %v, want %v", got, want)
	}
	// A clock that went backwards never gives a negative age.
	for _, e := range d.Entries(sec(0)) {
		if e.Age < 0 {
			t.Errorf("Entries(0s): %v has age %v, want >= 0", e.MAC, e.Age)
		}
	}
	if got := d.Entries(sec(100)); len(got) != 0 {
		t.Errorf("Entries(100s) = %v, want none", got)
	}
}

// TestFDBConcurrent runs learners, movers, lookups and expiry at once, for
// the race detector, and then checks the counts still add up.
func TestFDBConcurrent(t *testing.T) {
	const (
		macs    = 512
		ports   = 4
		workers = 4
		rounds  = 2000
	)
	d := vswitch.NewFDB(macs/2, macs/4, 10*time.Second)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range rounds {
				mac := fdbMAC((i*7 + w*131) % macs)
				now := sec(int64(i / 100))
				_ = d.Learn(mac, vswitch.PortID(1+(i+w)%ports), now)
				d.Lookup(fdbMAC(i%macs), now)
				if i%97 == 0 {
					d.Expire(now)
				}
				if i%501 == 0 {
					d.Flush(vswitch.PortID(1 + w%ports))
				}
				if i%301 == 0 {
					d.Entries(now)
				}
			}
		})
	}
	wg.Wait()
	sum := 0
	for p := range ports {
		n := d.PortLen(vswitch.PortID(1 + p))
		if n > macs/4 {
			t.Errorf("PortLen(%d) = %d, want <= %d", 1+p, n, macs/4)
		}
		sum += n
	}
	if n := d.Len(); n != sum || n > macs/2 {
		t.Errorf("Len() = %d, want the sum of PortLen %d and <= %d", n, sum, macs/2)
	}
}

// TestFDBRecentBeforePublish learns more MACs than one publish batch holds,
// so some are found in the not-yet-published map, some in the table, and
// all of them in the table after Publish.
func TestFDBRecentBeforePublish(t *testing.T) {
	const n = 1000
	d := vswitch.NewFDB(2*n, 2*n, 10*time.Second)
	for i := range n {
		if err := d.Learn(fdbMAC(i), vswitch.PortID(1+i%3), sec(1)); err != nil {
			t.Fatalf("Learn(%d) = %v", i, err)
		}
		// Each MAC is found at once, wherever it is kept.
		if port, ok := d.Lookup(fdbMAC(i), sec(1)); !ok || port != vswitch.PortID(1+i%3) {
			t.Fatalf("Lookup(%d) right after Learn = %d, %v; want %d, true", i, port, ok, 1+i%3)
		}
	}
	check := func(when string) {
		t.Helper()
		if got := d.Len(); got != n {
			t.Errorf("%s: Len() = %d, want %d", when, got, n)
		}
		for i := range n {
			if port, ok := d.Lookup(fdbMAC(i), sec(2)); !ok || port != vswitch.PortID(1+i%3) {
				t.Fatalf("%s: Lookup(%d) = %d, %v; want %d, true", when, i, port, ok, 1+i%3)
			}
		}
		if got := d.PortLen(1); got != (n+2)/3 {
			t.Errorf("%s: PortLen(1) = %d, want %d", when, got, (n+2)/3)
		}
	}
	check("before Publish")
	d.Publish()
	check("after Publish")
	// A move of a published MAC is seen at once, without a publish.
	if err := d.Learn(fdbMAC(0), 3, sec(3)); err != nil {
		t.Fatal(err)
	}
	if port, _ := d.Lookup(fdbMAC(0), sec(3)); port != 3 {
		t.Errorf("Lookup after a move = %d, want 3", port)
	}
	if got := d.Expire(sec(20)); got != n {
		t.Errorf("Expire after the aging time = %d, want %d", got, n)
	}
	if got := d.Len(); got != 0 {
		t.Errorf("Len() after Expire = %d, want 0", got)
	}
}
