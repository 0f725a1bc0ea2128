package overlay

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"tapswitch/internal/netnsutil"
	"tapswitch/internal/testutil"
	vswitch "tapswitch/switch"
)

// newNS returns a new network namespace with its loopback up and addrs
// added to it (IPv6 ones without duplicate address detection).
func newLoNS(t testing.TB, addrs ...string) string {
	t.Helper()
	testutil.RequireRoot(t)
	ns := testutil.NewNetNS(t)
	ipIn(t, ns, "link", "set", "lo", "up")
	for _, a := range addrs {
		args := []string{"addr", "add", a, "dev", "lo"}
		if strings.Contains(a, ":") {
			args = append(args, "nodad")
		}
		ipIn(t, ns, args...)
	}
	return ns
}

// ip runs ip(8) with args inside ns.
func ipIn(t testing.TB, ns string, args ...string) {
	t.Helper()
	runCmd(t, "ip", append([]string{"-n", filepath.Base(ns)}, args...)...)
}

func runCmd(t testing.TB, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
}

// openPort opens a port in ns and closes it when the test ends.
func openPort(t testing.TB, ns string, o VXLANOptions) *VXLAN {
	t.Helper()
	var p *VXLAN
	err := netnsutil.Do(ns, func() (err error) {
		p, err = NewVXLAN(o)
		return err
	})
	if err != nil {
		t.Fatalf("NewVXLAN(%v) in %s: %v", o.Local, ns, err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// vxEnd is one side of a test: a port and what it was made with.
type vxEnd struct {
	p         *VXLAN
	addr      netip.Addr
	vtep      vswitch.MAC
	routerMAC vswitch.MAC
}

// openPair opens ports A and B in ns, at addrA and addrB on port 8472, each
// the other's VTEP.
func openPair(t testing.TB, ns, addrA, addrB string) (a, b vxEnd) {
	t.Helper()
	mk := func(name, addr string, n byte) vxEnd {
		e := vxEnd{addr: netip.MustParseAddr(addr), vtep: vswitch.MAC{0x02, 0xaa, 0, 0, 0, n}, routerMAC: vswitch.MAC{0x02, 0xbb, 0, 0, 0, n}}
		e.p = openPort(t, ns, VXLANOptions{Name: name, Local: netip.AddrPortFrom(e.addr, 0), VTEPMAC: e.vtep, RouterMAC: e.routerMAC})
		return e
	}
	a, b = mk("a", addrA, 1), mk("b", addrB, 2)
	if err := a.p.SetVTEPs([]VTEP{{Name: "b", Address: b.addr, MAC: b.vtep}}); err != nil {
		t.Fatal(err)
	}
	if err := b.p.SetVTEPs([]VTEP{{Name: "a", Address: a.addr, MAC: a.vtep}}); err != nil {
		t.Fatal(err)
	}
	return a, b
}

// frameReceiver reads a port's frames on a goroutine of its own until the port
// closes, and hands over copies of them.
type frameReceiver struct {
	frames chan []byte
	done   chan struct{}
}

func startReceiver(t testing.TB, p *VXLAN) *frameReceiver {
	r := &frameReceiver{frames: make(chan []byte, 4096), done: make(chan struct{})}
	go func() {
		defer close(r.done)
		batch := make([]*vswitch.Frame, 32)
		for {
			n, err := p.ReadBatch(0, batch)
			if errors.Is(err, vswitch.ErrClosed) {
				return
			}
			if err != nil {
				t.Errorf("ReadBatch: %v", err)
				return
			}
			for _, f := range batch[:n] {
				r.frames <- bytes.Clone(f.Bytes())
				f.Release()
			}
		}
	}()
	t.Cleanup(func() {
		p.Close()
		<-r.done
	})
	return r
}

// next returns the next frame read, or fails t after a few seconds.
func (r *frameReceiver) next(t testing.TB) []byte {
	t.Helper()
	select {
	case b := <-r.frames:
		return b
	case <-time.After(5 * time.Second):
		t.Fatal("no frame received")
		return nil
	}
}

var testPool = vswitch.NewPool(vswitch.SmallBufSize)

// frame returns a pooled IPv4 frame to dst of n bytes whose payload
// encodes i. Its source MAC is junk, for the port to replace.
func innerFrame(dst vswitch.MAC, i, n int) *vswitch.Frame {
	f := testPool.Get()
	b := f.ReadBuf(0)[:n]
	e := vswitch.Ether(b)
	e.SetDst(dst)
	e.SetSrc(vswitch.MAC{0x02, 0xee, 0xee, 0xee, 0xee, 0xee})
	e.SetType(vswitch.EtherTypeIP4)
	for j := vswitch.EtherHdrLen; j < n; j++ {
		b[j] = byte(i + j)
	}
	f.SetLen(n)
	return f
}

func TestRoundTrip(t *testing.T) {
	for _, tt := range []struct{ name, a, b string }{
		{"ipv4", "127.0.0.1", "127.0.0.2"},
		{"ipv6", "fd00::1", "fd00::2"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			testutil.CheckGoroutines(t)
			ns := newLoNS(t, "fd00::1/128", "fd00::2/128")
			a, b := openPair(t, ns, tt.a, tt.b)
			ra, rb := startReceiver(t, a.p), startReceiver(t, b.p)

			// More than one sendmmsg's worth, sizes up to the MTU.
			const count = 100
			var batch []*vswitch.Frame
			var want [][]byte
			var bytesSent uint64
			for i := range count {
				n := 60 + i*(a.p.Caps().MaxFrame-60)/(count-1)
				f := innerFrame(b.vtep, i, n)
				w := bytes.Clone(f.Bytes())
				e := vswitch.Ether(w)
				e.SetDst(b.routerMAC)
				e.SetSrc(a.vtep)
				batch, want, bytesSent = append(batch, f), append(want, w), bytesSent+uint64(n)
			}
			if n, err := a.p.WriteBatch(batch); n != count || err != nil {
				t.Fatalf("A.WriteBatch(%d frames) = %d, %v, want %d, nil", count, n, err, count)
			}
			for i := range count {
				if got := rb.next(t); !bytes.Equal(got, want[i]) {
					t.Fatalf("frame %d at B = % x..., want % x...", i, got[:min(len(got), 20)], want[i][:20])
				}
			}

			// And back.
			if n, err := b.p.WriteBatch([]*vswitch.Frame{innerFrame(a.vtep, 7, 100)}); n != 1 || err != nil {
				t.Fatalf("B.WriteBatch = %d, %v, want 1, nil", n, err)
			}
			if got := ra.next(t); vswitch.Ether(got).Dst() != a.routerMAC || vswitch.Ether(got).Src() != b.vtep {
				t.Errorf("frame at A: dst %v src %v, want %v, %v", vswitch.Ether(got).Dst(), vswitch.Ether(got).Src(), a.routerMAC, b.vtep)
			}

			stA, stB := a.p.VTEPStats(), b.p.VTEPStats()
			if len(stA) != 1 || stA[0].TxFrames != count || stA[0].TxBytes != bytesSent || stA[0].RxFrames != 1 || stA[0].RxBytes != 100 {
				t.Errorf("A.VTEPStats() = %+v, want tx %d frames %d bytes, rx 1 frame 100 bytes", stA, count, bytesSent)
			}
			if len(stB) != 1 || stB[0].RxFrames != count || stB[0].RxBytes != bytesSent || stB[0].TxFrames != 1 ||
				time.Since(stB[0].LastSeen) > time.Minute {
				t.Errorf("B.VTEPStats() = %+v, want rx %d frames %d bytes, tx 1, seen just now", stB, count, bytesSent)
			}
			for _, p := range []*VXLAN{a.p, b.p} {
				if d := p.Drops(); len(d) != 0 {
					t.Errorf("%s.Drops() = %v, want none", p.Name(), d)
				}
			}
		})
	}
}

func TestWriteDrops(t *testing.T) {
	ns := newLoNS(t)
	a, b := openPair(t, ns, "127.0.0.1", "127.0.0.2")
	rb := startReceiver(t, b.p)
	gso := innerFrame(b.vtep, 0, 100)
	gso.Offload.GSOType = vswitch.GSOTCPv4
	csum := innerFrame(b.vtep, 0, 100)
	csum.Offload.NeedsCsum = true
	runt := innerFrame(b.vtep, 0, 60)
	runt.SetLen(13)
	batch := []*vswitch.Frame{
		innerFrame(vswitch.MAC{0x02, 0x99, 0, 0, 0, 9}, 0, 100), // unknown VTEP
		innerFrame(vswitch.Broadcast, 0, 100),
		innerFrame(b.vtep, 0, a.p.Caps().MaxFrame+1),
		gso, csum, runt,
		innerFrame(b.vtep, 1, 100), // good, last
	}
	if n, err := a.p.WriteBatch(batch); n != len(batch) || err != nil {
		t.Fatalf("WriteBatch = %d, %v, want %d, nil", n, err, len(batch))
	}
	if got := rb.next(t); got[vswitch.EtherHdrLen] != byte(1+vswitch.EtherHdrLen) {
		t.Errorf("B received % x..., want the good frame", got[:20])
	}
	want := map[string]uint64{"tx_unknown_vtep": 2, "tx_bad_frame": 4}
	if got := a.p.Drops(); !maps.Equal(got, want) {
		t.Errorf("Drops() = %v, want %v", got, want)
	}
	if st := a.p.VTEPStats(); st[0].TxFrames != 1 {
		t.Errorf("VTEPStats() = %+v, want 1 frame sent", st)
	}
}

// udpSocket returns a plain UDP socket bound to addr:0 in ns.
func udpSocket(t testing.TB, ns, addr string) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	err := netnsutil.Do(ns, func() (err error) {
		c, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(addr), 0)))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestReadDrops(t *testing.T) {
	ns := newLoNS(t)
	a, b := openPair(t, ns, "127.0.0.1", "127.0.0.2")
	rb := startReceiver(t, b.p)
	known := udpSocket(t, ns, a.addr.String()) // A's address, another port: accepted
	stranger := udpSocket(t, ns, "127.0.0.3")  // a host that is no VTEP
	to := net.UDPAddrFromAddrPort(b.p.Local())

	good := func(marker byte) []byte {
		pkt := vxlanPacket(flagI, 1, b.vtep, vswitch.EtherTypeIP4, 40)
		pkt[hdrLen+vswitch.EtherHdrLen] = marker
		return pkt
	}
	reserved := good(0)
	reserved[0] = 0xff
	sends := []struct {
		c    *net.UDPConn
		pkt  []byte
		want string
	}{
		{known, vxlanPacket(flagI, 2, b.vtep, vswitch.EtherTypeIP4, 40), "rx_wrong_vni"},
		{known, vxlanPacket(0, 1, b.vtep, vswitch.EtherTypeIP4, 40), "rx_bad_flags"},
		{known, good(0)[:hdrLen+vswitch.EtherHdrLen-1], "rx_short"},
		{known, nil, "rx_short"},
		{known, vxlanPacket(flagI, 1, a.vtep, vswitch.EtherTypeIP4, 40), "rx_not_ours"},
		{known, vxlanPacket(flagI, 1, vswitch.Broadcast, vswitch.EtherTypeIP4, 40), "rx_not_ours"},
		{known, vxlanPacket(flagI, 1, b.vtep, vswitch.EtherTypeARP, 28), "rx_not_ip"},
		{known, vxlanPacket(flagI, 1, b.vtep, vswitch.EtherTypeIP4, 1451), "rx_too_big"},
		{known, vxlanPacket(flagI, 1, b.vtep, vswitch.EtherTypeIP4, vswitch.SmallBufSize), "rx_too_big"}, // truncated
		{stranger, good(0), "rx_unknown_source"},
		{known, reserved, ""}, // reserved bits are ignored
	}
	want := map[string]uint64{}
	for _, s := range sends {
		if _, err := s.c.WriteToUDP(s.pkt, to); err != nil {
			t.Fatal(err)
		}
		if s.want != "" {
			want[s.want]++
		}
	}
	// The barrier: once it arrives, B has seen everything before it.
	if _, err := known.WriteToUDP(good(0x42), to); err != nil {
		t.Fatal(err)
	}
	if got := rb.next(t); got[vswitch.EtherHdrLen] != 0 {
		t.Errorf("first frame read = % x..., want the one with reserved bits set", got[:20])
	}
	got := rb.next(t)
	if got[vswitch.EtherHdrLen] != 0x42 {
		t.Errorf("second frame read = % x..., want the barrier", got[:20])
	}
	if e := vswitch.Ether(got); e.Dst() != b.routerMAC {
		t.Errorf("barrier's destination = %v, want the router's %v", e.Dst(), b.routerMAC)
	}
	if got := b.p.Drops(); !maps.Equal(got, want) {
		t.Errorf("Drops() = %v, want %v", got, want)
	}
	if st := b.p.VTEPStats(); st[0].RxFrames != 2 {
		t.Errorf("VTEPStats() = %+v, want 2 frames received", st)
	}
}

// TestSetVTEPsWhileTraffic changes both ports' VTEPs while A writes to B;
// with -race it checks the frame path reads the snapshots safely. Every
// frame is either sent or counted as dropped, and the counters follow the
// VTEPs' names through the changes.
func TestSetVTEPsWhileTraffic(t *testing.T) {
	ns := newLoNS(t)
	a, b := openPair(t, ns, "127.0.0.1", "127.0.0.2")
	rb := startReceiver(t, b.p)
	vtepB := VTEP{Name: "b", Address: b.addr, MAC: b.vtep}
	movedB := VTEP{Name: "b", Address: b.addr, MAC: vswitch.MAC{0x02, 0xaa, 0, 0, 0, 0x22}}
	vtepA := VTEP{Name: "a", Address: a.addr, MAC: a.vtep}
	movedA := VTEP{Name: "a", Address: netip.MustParseAddr("127.0.0.9"), MAC: a.vtep}

	const batches, size = 300, 16
	var wg sync.WaitGroup
	var writing atomic.Bool
	writing.Store(true)
	wg.Go(func() {
		defer writing.Store(false)
		for i := range batches {
			batch := make([]*vswitch.Frame, size)
			for j := range batch {
				batch[j] = innerFrame(b.vtep, i, 100)
			}
			if n, err := a.p.WriteBatch(batch); n != size || err != nil {
				t.Errorf("WriteBatch = %d, %v", n, err)
				return
			}
		}
	})
	wg.Go(func() {
		// Until the writer is done, and at least a few hundred times.
		for i := 0; i < batches || writing.Load(); i++ {
			a.p.SetVTEPs([]VTEP{[]VTEP{vtepB, movedB}[i%2]})
			b.p.SetVTEPs([]VTEP{[]VTEP{vtepA, movedA, vtepA}[i%3]})
			a.p.VTEPStats()
			b.p.Drops()
		}
	})
	wg.Wait()
	if err := b.p.SetVTEPs([]VTEP{vtepA}); err != nil {
		t.Fatal(err)
	}
	if err := a.p.SetVTEPs([]VTEP{vtepB}); err != nil {
		t.Fatal(err)
	}
	// The barrier: the kernel drops datagrams when B's receive buffer is
	// full, so send it until one arrives.
	barrier := func() bool {
		a.p.WriteBatch([]*vswitch.Frame{innerFrame(b.vtep, 0xff, 99)})
		for {
			select {
			case got := <-rb.frames:
				if len(got) == 99 {
					return true
				}
			case <-time.After(50 * time.Millisecond):
				return false
			}
		}
	}
	testutil.WaitFor(t, "a frame through after the changes", barrier)

	stA, dropsA := a.p.VTEPStats(), a.p.Drops()
	if sum := stA[0].TxFrames + dropsA["tx_unknown_vtep"] + dropsA["tx_queue_full"]; sum != batches*size+1 || len(dropsA) > 2 {
		t.Errorf("A sent %d, drops %v; want %d frames in all", stA[0].TxFrames, dropsA, batches*size+1)
	}
	stB, dropsB := b.p.VTEPStats(), b.p.Drops()
	if stB[0].RxFrames+dropsB["rx_unknown_source"] > stA[0].TxFrames || len(dropsB) > 1 {
		t.Errorf("B received %d, drops %v; A sent %d", stB[0].RxFrames, dropsB, stA[0].TxFrames)
	}
	t.Logf("A: %+v %v; B: %+v %v", stA, dropsA, stB, dropsB)

}

func TestCloseUnblocksRead(t *testing.T) {
	testutil.CheckGoroutines(t)
	ns := newLoNS(t)
	p := openPort(t, ns, VXLANOptions{Local: netip.MustParseAddrPort("127.0.0.1:8472"), VTEPMAC: testVTEP, RouterMAC: testRouter})
	errc := make(chan error, 1)
	go func() {
		_, err := p.ReadBatch(0, make([]*vswitch.Frame, 8))
		errc <- err
	}()
	select {
	case err := <-errc:
		t.Fatalf("ReadBatch returned %v before Close", err)
	case <-time.After(20 * time.Millisecond): // let it block; passes either way
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, vswitch.ErrClosed) {
			t.Errorf("ReadBatch after Close = %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ReadBatch still blocked after Close")
	}
	if _, err := p.ReadBatch(0, make([]*vswitch.Frame, 1)); !errors.Is(err, vswitch.ErrClosed) {
		t.Errorf("ReadBatch on a closed port = %v, want ErrClosed", err)
	}
	if n, err := p.WriteBatch([]*vswitch.Frame{innerFrame(testRouter, 0, 60)}); n != 0 || !errors.Is(err, vswitch.ErrClosed) {
		t.Errorf("WriteBatch on a closed port = %d, %v, want 0, ErrClosed", n, err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close = %v, want nil", err)
	}
}

func TestBindConflict(t *testing.T) {
	ns := newLoNS(t)
	o := VXLANOptions{Local: netip.MustParseAddrPort("127.0.0.1:8472"), VTEPMAC: testVTEP, RouterMAC: testRouter}
	openPort(t, ns, o)
	err := netnsutil.Do(ns, func() error {
		p, err := NewVXLAN(o)
		if err == nil {
			p.Close()
		}
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Errorf("second NewVXLAN(%v) = %v, want address already in use", o.Local, err)
	}
}

func TestNoAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates, and sync.Pool drops items under it")
	}
	ns := newLoNS(t)
	a, b := openPair(t, ns, "127.0.0.1", "127.0.0.2")
	out := make([]*vswitch.Frame, 1)
	in := make([]*vswitch.Frame, 8)
	exchange := func() {
		out[0] = innerFrame(b.vtep, 0, 1000)
		if n, err := a.p.WriteBatch(out); n != 1 || err != nil {
			panic(fmt.Sprint("WriteBatch: ", n, err))
		}
		n, err := b.p.ReadBatch(0, in)
		if n != 1 || err != nil {
			panic(fmt.Sprint("ReadBatch: ", n, err))
		}
		in[0].Release()
	}
	exchange()
	if allocs := testing.AllocsPerRun(200, exchange); allocs != 0 {
		t.Errorf("AllocsPerRun(WriteBatch and ReadBatch) = %v, want 0", allocs)
	}
}
