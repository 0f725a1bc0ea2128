package overlay

import (
	"bytes"
	"maps"
	"net"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	vswitch "tapswitch/switch"
)

// readBatch calls p.ReadBatch with room for size frames, failing t if it
// errs or blocks for seconds, and returns copies of the frames read.
func readBatch(t *testing.T, p *VXLAN, size int) [][]byte {
	t.Helper()
	batch := make([]*vswitch.Frame, size)
	type result struct {
		n   int
		err error
	}
	done := make(chan result, 1)
	go func() {
		n, err := p.ReadBatch(0, batch)
		done <- result{n, err}
	}()
	var res result
	select {
	case res = <-done:
	case <-time.After(5 * time.Second):
		p.Close() // unblocks the reader
		<-done
		t.Fatal("ReadBatch blocked")
	}
	if res.err != nil {
		t.Fatalf("ReadBatch = %d, %v", res.n, res.err)
	}
	var out [][]byte
	for _, f := range batch[:res.n] {
		out = append(out, bytes.Clone(f.Bytes()))
		f.Release()
	}
	return out
}

// TestGRO sends VXLAN packets as one UDP GSO datagram over loopback, which
// the kernel hands to the port's UDP_GRO socket as one GRO batch, and checks
// that the port splits it into a frame per packet, in order, across
// ReadBatch calls too small for the batch, and still reads an ordinary
// datagram.
func TestGRO(t *testing.T) {
	ns := newLoNS(t)
	a, b := openPair(t, ns, "127.0.0.1", "127.0.0.2")
	to := net.UDPAddrFromAddrPort(b.p.Local())
	gso := udpSocket(t, ns, a.addr.String()) // A's address: a known VTEP
	const seg = 1000                         // bytes of each VXLAN packet
	rc, err := gso.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	rc.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_SEGMENT, seg) })
	if err != nil {
		t.Skipf("no UDP_SEGMENT: %v", err)
	}

	// packets returns count VXLAN packets of seg bytes, the last of
	// last bytes, marked with their index, and the inner frames the
	// port should make of them.
	packets := func(count, last int, vni func(i int) uint32) (buf []byte, want [][]byte) {
		for i := range count {
			n := seg
			if i == count-1 {
				n = last
			}
			pkt := vxlanPacket(flagI, vni(i), b.vtep, vswitch.EtherTypeIP4, n-hdrLen-vswitch.EtherHdrLen)
			pkt[hdrLen+vswitch.EtherHdrLen] = byte(0x10 + i)
			buf = append(buf, pkt...)
			if vni(i) == 1 {
				w := bytes.Clone(pkt[hdrLen:])
				vswitch.Ether(w).SetDst(b.routerMAC)
				want = append(want, w)
			}
		}
		return buf, want
	}
	check := func(got, want [][]byte) {
		t.Helper()
		if len(got) != len(want) {
			t.Fatalf("read %d frames, want %d", len(got), len(want))
		}
		for i := range want {
			if !bytes.Equal(got[i], want[i]) {
				t.Errorf("frame %d = % x..., want % x...", i, got[i][:min(len(got[i]), 20)], want[i][:20])
			}
		}
	}

	// Eight packets in one datagram, read three frames at a time.
	buf, want := packets(8, 600, func(int) uint32 { return 1 })
	if _, err := gso.WriteToUDP(buf, to); err != nil {
		t.Fatal(err)
	}
	got := readBatch(t, b.p, 3)
	if len(got) != 3 || b.p.r.next >= b.p.r.got {
		t.Fatalf("first ReadBatch(3) = %d frames, pending messages %d..%d: want 3 frames and the GRO batch pending",
			len(got), b.p.r.next, b.p.r.got)
	}
	got = append(got, readBatch(t, b.p, 3)...)
	got = append(got, readBatch(t, b.p, 3)...)
	check(got, want)

	// A bad packet in a batch is dropped alone.
	buf, want = packets(5, seg, func(i int) uint32 {
		if i == 3 {
			return 2
		}
		return 1
	})
	if _, err := gso.WriteToUDP(buf, to); err != nil {
		t.Fatal(err)
	}
	check(readBatch(t, b.p, 16), want)
	if got, want := b.p.Drops(), map[string]uint64{"rx_wrong_vni": 1}; !maps.Equal(got, want) {
		t.Errorf("Drops() = %v, want %v", got, want)
	}

	// An ordinary datagram, with no control message.
	plain := udpSocket(t, ns, a.addr.String())
	buf, want = packets(1, 200, func(int) uint32 { return 1 })
	if _, err := plain.WriteToUDP(buf, to); err != nil {
		t.Fatal(err)
	}
	check(readBatch(t, b.p, 8), want)
	if st := b.p.VTEPStats(); st[0].RxFrames != 8+4+1 {
		t.Errorf("VTEPStats() = %+v, want %d frames received", st, 8+4+1)
	}
}

func TestGROSize(t *testing.T) {
	var ctrl [groCtrlWords]uint64
	b := unsafe.Slice((*byte)(unsafe.Pointer(&ctrl[0])), len(ctrl)*8)
	// Another control message first, then UDP_GRO.
	first := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	first.Level, first.Type = unix.SOL_SOCKET, unix.SCM_TIMESTAMP
	first.SetLen(unix.CmsgLen(4))
	next := unix.CmsgSpace(4)
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[next]))
	h.Level, h.Type = unix.SOL_UDP, unix.UDP_GRO
	h.SetLen(unix.CmsgLen(4))
	*(*int32)(unsafe.Pointer(&b[next+unix.CmsgLen(0)])) = 1400
	for _, tt := range []struct {
		n, want int
	}{
		{0, 0},
		{next, 0},
		{next + unix.CmsgLen(3), 0}, // cut short
		{next + unix.CmsgSpace(4), 1400},
		{len(b), 1400},
	} {
		if got := groSize(ctrl[:], tt.n); got != tt.want {
			t.Errorf("groSize(%d bytes) = %d, want %d", tt.n, got, tt.want)
		}
	}
}
