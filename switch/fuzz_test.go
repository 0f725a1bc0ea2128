package vswitch_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"maps"
	"net/netip"
	"testing"

	vswitch "tapswitch/switch"
	"tapswitch/switch/porttest"
)

// The fuzzed switch: three ports of different capabilities, each with a
// host (hostMAC(i)) learned on it, and two bound addresses.
var fuzzCaps = [3]vswitch.Caps{
	{MaxFrame: 1514},
	{GSO: true, MaxFrame: 9014},
	{MaxFrame: 1514},
}

var fuzzBindings = map[netip.Addr]int{ // address: port index; its MAC is hostMAC(port)
	netip.MustParseAddr("10.0.0.2"): 1,
	netip.MustParseAddr("10.0.0.3"): 2,
}

// FuzzForward feeds one arbitrary frame, with arbitrary offload metadata,
// into the switch from a port the fuzzer picks, and checks where it went
// against a model of the switch's rules: nothing panics, rx counters
// account for every frame, the ingress port never gets the frame back
// (only, for an ARP request the switch answers, the exact reply), every
// written frame has a header and a unicast source, and each destination
// either got the frame or counted why not.
func FuzzForward(f *testing.F) {
	ip := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	seeds := []struct {
		in    uint8
		frame []byte
		gso   vswitch.GSOType
		csum  bool
		start uint16
		off   uint16
	}{
		{in: 0, frame: porttest.ARPRequest(porttest.MAC(0x11), ip("10.0.0.1"), ip("10.0.0.2"))},
		{in: 1, frame: porttest.ARPRequest(hostMAC(1), ip("10.0.0.2"), ip("10.0.0.2"))}, // gratuitous
		{in: 1, frame: porttest.ARPRequest(porttest.MAC(0x11), ip("10.0.0.9"), ip("10.0.0.2"))},
		{in: 2, frame: porttest.ARP(2, porttest.MAC(0x11), ip("10.0.0.1"), hostMAC(1), ip("10.0.0.2"), hostMAC(1))},
		{in: 0, frame: frameTo(vswitch.Broadcast, porttest.MAC(0x11), "broadcast")},
		{in: 1, frame: frameTo(hostMAC(2), porttest.MAC(0x11), "known unicast")},
		{in: 2, frame: frameTo(hostMAC(2), porttest.MAC(0x11), "hairpin")},
		{in: 0, frame: frameTo(porttest.MAC(0x99), porttest.MAC(0x11), "unknown unicast")},
		{in: 0, frame: make([]byte, 10)}, // runt
		{in: 0, frame: frameTo(vswitch.Broadcast, vswitch.MAC{0x01, 0, 0x5e, 0, 0, 1}, "multicast src")},
		{in: 0, frame: frameTo(vswitch.Broadcast, vswitch.MAC{}, "zero src")},
		{in: 1, frame: frameOfLen(vswitch.Broadcast, porttest.MAC(0x11), 2000)}, // too big for 0 and 2
		{in: 0, frame: frameOfLen(vswitch.Broadcast, porttest.MAC(0x11), 1515)}, // too big for 0
		{in: 1, frame: frameOfLen(vswitch.Broadcast, porttest.MAC(0x11), 300), csum: true, start: 34, off: 6},
		{in: 1, frame: frameOfLen(vswitch.Broadcast, porttest.MAC(0x11), 300), csum: true, start: 299, off: 0},
		{in: 1, frame: frameOfLen(hostMAC(0), porttest.MAC(0x11), 20000), gso: vswitch.GSOTCPv4, csum: true, start: 34, off: 16},
	}
	for _, s := range seeds {
		f.Add(s.in, s.frame, uint8(s.gso), s.csum, s.start, s.off)
	}
	pool := vswitch.NewPool(vswitch.LargeBufSize)
	f.Fuzz(func(t *testing.T, inPort uint8, frame []byte, gso uint8, needsCsum bool, csumStart, csumOffset uint16) {
		frame = frame[:min(len(frame), pool.FrameCap())]
		in := int(inPort) % len(fuzzCaps)
		o := vswitch.Offload{
			GSOType:    vswitch.GSOType(gso % 4),
			NeedsCsum:  needsCsum,
			CsumStart:  csumStart,
			CsumOffset: csumOffset,
		}
		checkForward(t, pool, in, frame, o)
	})
}

func checkForward(t *testing.T, pool *vswitch.Pool, in int, frame []byte, o vswitch.Offload) {
	sw := vswitch.New(vswitch.Options{})
	defer func() {
		if err := sw.Close(); err != nil {
			t.Errorf("Close() = %v", err)
		}
	}()
	var ports [3]*porttest.Port
	var ids [3]vswitch.PortID
	for i, c := range fuzzCaps {
		ports[i] = porttest.NewWithCaps(fmt.Sprintf("p%d", i), c)
		id, err := sw.AddPort(ports[i])
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = id
	}
	for addr, i := range fuzzBindings {
		if err := sw.Bind(vswitch.Binding{IP: addr, MAC: hostMAC(i), Port: ids[i]}); err != nil {
			t.Fatal(err)
		}
	}
	send := func(i int, b []byte, o vswitch.Offload) {
		f := pool.Get()
		f.SetLen(copy(f.ReadBuf(0), b))
		f.Offload = o
		sw.Forward(ids[i], []*vswitch.Frame{f})
	}

	// Everything is forwarded from this goroutine, in order, and egress
	// queues are FIFO: each port writes the two priming broadcasts, then
	// what became of the fuzzed frame, then its markers: port in the one
	// from port m, port m the one from port in, the third port both.
	var primes [3][]byte
	for i := range ports {
		primes[i] = frameTo(vswitch.Broadcast, hostMAC(i), "prime")
		send(i, primes[i], vswitch.Offload{})
	}
	send(in, frame, o)
	m := (in + 1) % 3
	markM, markIn := marker(hostMAC(m)), marker(hostMAC(in))
	send(m, markM, vswitch.Offload{}) // to in and the third port
	send(in, markIn, vswitch.Offload{})
	third := 3 - in - m
	var got [3][][]byte
	for i, p := range ports {
		marks := [][]byte{markM}
		switch i {
		case m:
			marks = [][]byte{markIn}
		case third:
			marks = [][]byte{markM, markIn}
		}
		waitFrame(t, p, marks[len(marks)-1])
		w := p.Written()
		if len(w) < 2+len(marks) || !equalFrames(w[len(w)-len(marks):], marks) {
			t.Fatalf("port %d wrote %s, want two primes, results, %d markers", i, describe(w), len(marks))
		}
		got[i] = w[2 : len(w)-len(marks)]

		for k, b := range w {
			if len(b) < vswitch.EtherHdrLen {
				t.Fatalf("port %d frame %d has %d bytes, want >= %d", i, k, len(b), vswitch.EtherHdrLen)
			}
			if src := vswitch.Ether(b).Src(); src.Multicast() || src.Zero() {
				t.Errorf("port %d frame %d has source %v", i, k, src)
			}
		}
		for k, offl := range p.WrittenOffloads() {
			if !fuzzCaps[i].GSO && (offl.GSOType != vswitch.GSONone || offl.NeedsCsum) {
				t.Errorf("port %d (no GSO) frame %d has offload %+v", i, k, offl)
			}
			if offl.GSOType == vswitch.GSONone && len(w[k]) > fuzzCaps[i].MaxFrame {
				t.Errorf("port %d frame %d has %d bytes, over its max %d", i, k, len(w[k]), fuzzCaps[i].MaxFrame)
			}
		}
	}

	want := predict(in, frame, o)
	stats := sw.Stats()

	// The ingress port: the reply, if the switch answers, and nothing else.
	var wantIn [][]byte
	if want.reply != nil {
		wantIn = [][]byte{want.reply}
	}
	if !equalFrames(got[in], wantIn) {
		t.Errorf("ingress port %d got %s, want %s", in, describe(got[in]), describe(wantIn))
	}
	if want.reply != nil && stats[in].ARPReplies != 1 {
		t.Errorf("port %d ARPReplies = %d, want 1", in, stats[in].ARPReplies)
	}
	wantDrops := map[string]uint64{}
	if want.drop != "" {
		wantDrops[want.drop] = 1
	}
	if !maps.Equal(stats[in].Drops, wantDrops) {
		t.Errorf("ingress port %d Drops = %v, want %v", in, stats[in].Drops, wantDrops)
	}

	// The others: each destination got the frame or counted a drop.
	for i := range ports {
		if i == in {
			continue
		}
		wantDrops := map[string]uint64{}
		var wantFrames int
		if want.dests[i] {
			if r := egressDrop(i, frame, o); r == "segment" {
				// A super-frame to a port without GSO: the segments
				// Segment makes (its own tests check them), each
				// written or dropped for its size.
				segs, drops := expectSegments(i, frame, o)
				if !equalFrames(got[i], segs) {
					t.Errorf("port %d got %s, want the %d segments %s", i, describe(got[i]), len(segs), describe(segs))
				}
				if !maps.Equal(stats[i].Drops, drops) {
					t.Errorf("port %d Drops = %v, want %v", i, stats[i].Drops, drops)
				}
				if stats[i].Segmented != 1 {
					t.Errorf("port %d Segmented = %d, want 1", i, stats[i].Segmented)
				}
				continue
			} else if r != "" {
				wantDrops[r] = 1
			} else {
				wantFrames = 1
			}
		}
		if len(got[i]) != wantFrames {
			t.Errorf("port %d got %s, want %d copies of the frame", i, describe(got[i]), wantFrames)
		} else if wantFrames == 1 {
			offl := ports[i].WrittenOffloads()[2]
			checkCopy(t, i, got[i][0], offl, frame, o)
		}
		if !maps.Equal(stats[i].Drops, wantDrops) {
			t.Errorf("port %d Drops = %v, want %v", i, stats[i].Drops, wantDrops)
		}
	}

	// rx: port in sent its prime, the frame and a marker; port m its
	// prime and a marker; the third port its prime.
	wantRx := map[int][2]uint64{
		in:    {3, uint64(len(primes[in]) + len(frame) + len(markIn))},
		m:     {2, uint64(len(primes[m]) + len(markM))},
		third: {1, uint64(len(primes[third]))},
	}
	for i, w := range wantRx {
		if got := [2]uint64{stats[i].RxFrames, stats[i].RxBytes}; got != w {
			t.Errorf("port %d rx frames, bytes = %v, want %v", i, got, w)
		}
	}
}

// checkCopy checks a copy of frame written to port i: the same bytes, or
// for a port without GSO the same bytes with the checksum completed.
func checkCopy(t *testing.T, i int, got []byte, gotO vswitch.Offload, frame []byte, o vswitch.Offload) {
	t.Helper()
	wantO := o
	if !fuzzCaps[i].GSO && o.NeedsCsum {
		field := int(o.CsumStart) + int(o.CsumOffset)
		if len(got) != len(frame) || !bytes.Equal(got[:field], frame[:field]) || !bytes.Equal(got[field+2:], frame[field+2:]) {
			t.Errorf("port %d got % x, want the frame with only its checksum field changed", i, got)
		}
		// The field held the pseudo-header sum; with it added back, the
		// completed segment sums to ffff. (At an odd offset the field
		// straddles two words and the identity does not hold; no real
		// sender puts it there.)
		if pseudo := binary.BigEndian.Uint16(frame[field:]); o.CsumOffset%2 == 0 {
			if sum := refChecksum(got[o.CsumStart:], uint32(pseudo)); sum != 0xffff {
				t.Errorf("port %d: completed segment and %#04x sum to %#04x, want 0xffff", i, pseudo, sum)
			}
		}
		wantO.NeedsCsum, wantO.CsumStart, wantO.CsumOffset = false, 0, 0
	} else if !bytes.Equal(got, frame) {
		t.Errorf("port %d got % x, want the frame unchanged", i, got)
	}
	if gotO != wantO {
		t.Errorf("port %d offload = %+v, want %+v", i, gotO, wantO)
	}
}

// prediction is where the model says the fuzzed frame goes.
type prediction struct {
	drop  string  // dropped at ingress for this reason
	reply []byte  // answered with this ARP reply
	dests [3]bool // sent to these ports
}

// predict applies the switch's rules, as the package documents them, to a
// frame from port in. The FDB holds hostMAC(i) on port i.
func predict(in int, b []byte, o vswitch.Offload) prediction {
	if len(b) < vswitch.EtherHdrLen {
		return prediction{drop: "runt"}
	}
	if o.GSOType == vswitch.GSONone && len(b) > fuzzCaps[in].MaxFrame {
		return prediction{drop: "too_big"}
	}
	dst, src := vswitch.MAC(b[0:6]), vswitch.MAC(b[6:12])
	if src[0]&1 != 0 || src == (vswitch.MAC{}) {
		return prediction{drop: "bad_src"}
	}
	fdb := map[vswitch.MAC]int{hostMAC(0): 0, hostMAC(1): 1, hostMAC(2): 2}
	fdb[src] = in
	if r := arpAnswer(in, b); r != nil {
		return prediction{reply: r}
	}
	var p prediction
	if out, ok := fdb[dst]; ok && dst[0]&1 == 0 {
		if out == in {
			return prediction{drop: "hairpin"}
		}
		p.dests[out] = true
		return p
	}
	for i := range p.dests {
		p.dests[i] = i != in
	}
	return p
}

// arpAnswer returns the reply to b if b is an Ethernet/IPv4 ARP request,
// not gratuitous, for an address bound on a port other than in.
func arpAnswer(in int, b []byte) []byte {
	a := b[vswitch.EtherHdrLen:]
	if binary.BigEndian.Uint16(b[12:]) != 0x0806 || len(a) < 28 ||
		binary.BigEndian.Uint16(a[0:]) != 1 || binary.BigEndian.Uint16(a[2:]) != 0x0800 ||
		a[4] != 6 || a[5] != 4 || binary.BigEndian.Uint16(a[6:]) != 1 {
		return nil
	}
	spa, tpa := netip.AddrFrom4([4]byte(a[14:18])), netip.AddrFrom4([4]byte(a[24:28]))
	owner, ok := fuzzBindings[tpa]
	if spa == tpa || !ok || owner == in {
		return nil
	}
	mac := hostMAC(owner)
	r := make([]byte, 0, 42)
	r = append(r, a[8:14]...) // to the asker
	r = append(r, mac[:]...)
	r = append(r, 0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 2)
	r = append(r, mac[:]...)
	r = append(r, a[24:28]...)
	r = append(r, a[8:18]...) // the asker's MAC and address
	return r
}

// segmentCopy segments a copy of the super-frame b.
func segmentCopy(b []byte, o vswitch.Offload) ([][]byte, error) {
	pools := vswitch.NewPools()
	f := pools.Get(len(b))
	f.SetLen(copy(f.ReadBuf(0), b))
	f.Offload = o
	defer f.Release()
	segs, err := vswitch.Segment(nil, f, pools)
	if err != nil {
		return nil, err
	}
	out := make([][]byte, len(segs))
	for k, seg := range segs {
		out[k] = bytes.Clone(seg.Bytes())
		seg.Release()
	}
	return out, nil
}

// expectSegments returns the segments of b that port i writes and the drops
// it counts for the others.
func expectSegments(i int, b []byte, o vswitch.Offload) ([][]byte, map[string]uint64) {
	segs, _ := segmentCopy(b, o)
	var keep [][]byte
	drops := map[string]uint64{}
	for _, seg := range segs {
		if len(seg) > fuzzCaps[i].MaxFrame {
			drops["too_big"]++
		} else {
			keep = append(keep, seg)
		}
	}
	return keep, drops
}

// egressDrop is why port i drops the frame, "segment" if it gets the
// segments of a super-frame, or "" if it writes the frame.
func egressDrop(i int, b []byte, o vswitch.Offload) string {
	c := fuzzCaps[i]
	if !c.GSO {
		if o.GSOType != vswitch.GSONone {
			if _, err := segmentCopy(b, o); err != nil {
				return "bad_offload"
			}
			return "segment"
		}
		field := int(o.CsumStart) + int(o.CsumOffset)
		if o.NeedsCsum && (o.CsumStart < vswitch.EtherHdrLen || int(o.CsumStart) >= len(b) || field+2 > len(b)) {
			return "bad_offload"
		}
	}
	if o.GSOType == vswitch.GSONone && len(b) > c.MaxFrame {
		return "too_big"
	}
	return ""
}
