package netstack

import (
	"bytes"
	"testing"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/refs"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	vswitch "tapswitch/switch"
)

// outboundPacket returns a packet as the stack hands one to the endpoint:
// headers pushed into reserved room that is larger than they are (so the
// packet starts at an offset into its first view), then a payload of two
// views. want is its bytes. The caller DecRefs the packet.
func outboundPacket(t testing.TB) (pkt *stack.PacketBuffer, want []byte) {
	t.Helper()
	const reserve, link, network, transport = 80, 14, 20, 20
	p1, p2 := bytes.Repeat([]byte{0xa1}, 700), bytes.Repeat([]byte{0xb2}, 600)
	payload := buffer.MakeWithData(p1)
	if err := payload.Append(buffer.NewViewWithData(p2)); err != nil {
		t.Fatalf("Append: %v", err)
	}
	pkt = stack.NewPacketBuffer(stack.PacketBufferOptions{ReserveHeaderBytes: reserve, Payload: payload})
	for i, h := range [][]byte{pkt.TransportHeader().Push(transport), pkt.NetworkHeader().Push(network), pkt.LinkHeader().Push(link)} {
		for j := range h {
			h[j] = byte(i<<6 | j)
		}
	}
	want = append(want, pkt.LinkHeader().Slice()...)
	want = append(want, pkt.NetworkHeader().Slice()...)
	want = append(want, pkt.TransportHeader().Slice()...)
	want = append(want, p1...)
	want = append(want, p2...)
	if vl, off := pkt.AsViewList(); vl.Len() < 3 || off == 0 {
		t.Fatalf("test packet has %d views at offset %d, want several and an offset", vl.Len(), off)
	}
	return pkt, want
}

// TestWritePacketsCopiesPacket checks that a packet spread over several
// views, starting past the head of its first one, becomes one frame of
// exactly its bytes.
func TestWritePacketsCopiesPacket(t *testing.T) {
	e := newEndpoint(gwMAC, 1514, 4, vswitch.NewPools())
	pkt, want := outboundPacket(t)
	var pkts stack.PacketBufferList
	pkts.PushBack(pkt)
	if n, err := e.WritePackets(pkts); n != 1 || err != nil {
		t.Fatalf("WritePackets = %d, %v; want 1, nil", n, err)
	}
	pkt.DecRef()
	refs.DoRepeatedLeakCheck()
	f := <-e.out
	defer f.Release()
	if !bytes.Equal(f.Bytes(), want) {
		t.Errorf("frame of %d bytes = % x\nwant %d bytes % x", f.Len(), f.Bytes(), len(want), want)
	}
}

// TestWritePacketsAllocs checks that sending a packet allocates nothing
// once the frame pool is warm: the stack's output path stays free of
// garbage.
func TestWritePacketsAllocs(t *testing.T) {
	e := newEndpoint(gwMAC, 1514, 4, vswitch.NewPools())
	pkt, _ := outboundPacket(t)
	defer pkt.DecRef()
	var pkts stack.PacketBufferList
	pkts.PushBack(pkt)
	allocs := testing.AllocsPerRun(100, func() {
		e.WritePackets(pkts)
		(<-e.out).Release()
	})
	if allocs != 0 {
		t.Errorf("AllocsPerRun(WritePackets) = %v, want 0", allocs)
	}
}

// BenchmarkWritePackets measures the copy of one packet into a frame.
func BenchmarkWritePackets(b *testing.B) {
	e := newEndpoint(gwMAC, 1514, 4, vswitch.NewPools())
	pkt, want := outboundPacket(b)
	defer pkt.DecRef()
	var pkts stack.PacketBufferList
	pkts.PushBack(pkt)
	b.ReportAllocs()
	b.SetBytes(int64(len(want)))
	for b.Loop() {
		e.WritePackets(pkts)
		(<-e.out).Release()
	}
}
