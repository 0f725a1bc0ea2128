package netstack

import (
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	vswitch "tapswitch/switch"
)

// endpoint is the link endpoint under the stack's NIC. It carries whole
// Ethernet frames and adds no header of its own: gVisor's ethernet.Endpoint
// wraps it, pushes the Ethernet header on the way out and strips it on the
// way in (see New).
//
// Outbound packets become frames on out, a bounded queue that ReadBatch
// drains. Sending never waits: a full queue, an oversized packet or a
// closed endpoint drops the packet and counts it.
type endpoint struct {
	frameMTU uint32 // largest ordinary frame, Ethernet header included
	pools    *vswitch.Pools
	out      chan *vswitch.Frame
	closed   atomic.Bool // set by Port.Close; later sends are dropped

	dropQueueFull atomic.Uint64
	dropTooBig    atomic.Uint64
	dropClosed    atomic.Uint64

	// mac never changes (SetLinkAddress is ignored), so gVisor's call of
	// LinkAddress for each unicast frame it receives reads it without
	// a lock.
	mac tcpip.LinkAddress
	// dispatcher is the ethernet endpoint above, set by Attach when New
	// creates the NIC and cleared when Close removes it. deliver loads it
	// once per frame; an atomic pointer keeps that free of locks.
	dispatcher atomic.Pointer[stack.NetworkDispatcher]
}

var (
	_ stack.LinkEndpoint = (*endpoint)(nil)
	_ stack.GSOEndpoint  = (*endpoint)(nil)
)

// gsoMaxSize bounds the TCP super-segments the stack builds. gVisor's
// sender keeps a segment's payload under gsoMaxSize less 61 bytes
// (tcp/snd.go), so the largest frame, with at most 40 bytes of IP header,
// 60 of TCP and 14 of Ethernet, is gsoMaxSize+53 bytes: it must fit a
// large pool frame, and the IPv4 total length must stay under 64 KiB.
const gsoMaxSize = vswitch.LargeBufSize - vswitch.Headroom - 64

func newEndpoint(mac vswitch.MAC, frameMTU, queueLen int, pools *vswitch.Pools) *endpoint {
	return &endpoint{
		frameMTU: uint32(frameMTU),
		pools:    pools,
		out:      make(chan *vswitch.Frame, queueLen),
		mac:      tcpip.LinkAddress(mac[:]),
	}
}

// deliver copies one Ethernet frame into a new PacketBuffer and hands it to
// the stack. It reports false if no NIC is attached.
func (e *endpoint) deliver(frame []byte) bool {
	d := e.dispatcher.Load()
	if d == nil {
		return false
	}
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{
		Payload: buffer.MakeWithData(frame),
	})
	// The stack does not verify checksums (CapabilityRXChecksumOffload):
	// frames come from the pods' kernels through their TAPs, which, like
	// a veth, may leave a TCP or UDP checksum partial (Offload.NeedsCsum),
	// and nothing on that path can corrupt a frame.
	// The protocol number is 0: the ethernet endpoint above reads it from
	// the header it strips.
	(*d).DeliverNetworkPacket(0, pkt)
	pkt.DecRef()
	return true
}

// WritePackets copies each packet, Ethernet header included, into a pooled
// frame and queues it for ReadBatch without waiting. The caller keeps its
// references to the packets. It reports every packet as written: a dropped
// packet is a loss on the wire, counted here, not an error for the stack.
//
// TCP packets carry GSO options (the endpoint offers host GSO): their
// checksum is partial and a packet longer than one MSS is a super-frame.
// Both travel as the frame's Offload, which the pods' TAPs take as they
// are and the switch segments for ports without GSO.
func (e *endpoint) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	n := 0
	for _, pkt := range pkts.AsSlice() {
		n++
		if e.closed.Load() {
			e.dropClosed.Add(1)
			continue
		}
		size := pkt.Size()
		gso := pkt.GSOOptions
		super := gso.Type != stack.GSONone && pkt.Data().Size() > int(gso.MSS)
		if !super && size > int(e.frameMTU) {
			e.dropTooBig.Add(1)
			continue
		}
		f := e.pools.Get(size)
		if f == nil {
			e.dropTooBig.Add(1)
			continue
		}
		f.SetLen(copyPacket(f.ReadBuf(0), pkt))
		if gso.Type != stack.GSONone {
			setOffload(&f.Offload, pkt, super)
		}
		select {
		case e.out <- f:
		default:
			f.Release()
			e.dropQueueFull.Add(1)
		}
	}
	return n, nil
}

// copyPacket copies pkt, headers included, into buf and returns its
// length. It walks the packet's views in place: pkt.AsSlices would
// allocate a slice of them, and a clone of each, per packet. The packet
// starts skip bytes into its first views, past header room it did not use.
func copyPacket(buf []byte, pkt *stack.PacketBuffer) int {
	views, skip := pkt.AsViewList()
	n := 0
	for v := views.Front(); v != nil; v = v.Next() {
		b := v.AsSlice()
		if skip >= len(b) {
			skip -= len(b)
			continue
		}
		n += copy(buf[n:], b[skip:])
		skip = 0
	}
	return n
}

// setOffload describes a TCP packet the stack built for host GSO, as the
// kernel's virtio-net header would (include/uapi/linux/virtio_net.h).
func setOffload(o *vswitch.Offload, pkt *stack.PacketBuffer, super bool) {
	gso := pkt.GSOOptions
	l4 := uint16(header.EthernetMinimumSize) + gso.L3HdrLen
	if gso.NeedsCsum {
		o.NeedsCsum, o.CsumStart, o.CsumOffset = true, l4, gso.CsumOffset
	}
	if !super {
		return
	}
	o.GSOType = vswitch.GSOTCPv4
	if gso.Type == stack.GSOTCPv6 {
		o.GSOType = vswitch.GSOTCPv6
	}
	o.GSOSize = gso.MSS
	o.HdrLen = uint16(pkt.HeaderSize())
}

// GSOMaxSize and SupportedGSO offer host GSO to the stack's TCP: it hands
// over super-segments with partial checksums instead of cutting and
// summing each MSS itself.
func (e *endpoint) GSOMaxSize() uint32               { return gsoMaxSize }
func (e *endpoint) SupportedGSO() stack.SupportedGSO { return stack.HostGSOSupported }

// MTU is the largest frame; the ethernet endpoint subtracts its header.
func (e *endpoint) MTU() uint32 { return e.frameMTU }

// SetMTU is ignored: the MTU is fixed by Options and the switch's Caps.
func (e *endpoint) SetMTU(uint32) {}

func (e *endpoint) MaxHeaderLength() uint16 { return 0 }

// LinkAddress is Options.MAC.
func (e *endpoint) LinkAddress() tcpip.LinkAddress { return e.mac }

// SetLinkAddress is ignored: the MAC is fixed by Options, and the switch's
// ARP binding for the gateway and the router advertisements (ra.go) carry
// that one.
func (e *endpoint) SetLinkAddress(tcpip.LinkAddress) {}

// Capabilities: received checksums are trusted (see deliver). Sent ones
// are the stack's to compute, except TCP's, which GSO leaves partial. The
// ethernet endpoint adds CapabilityResolutionRequired for ARP and NDP.
func (e *endpoint) Capabilities() stack.LinkEndpointCapabilities {
	return stack.CapabilityRXChecksumOffload
}

// Attach sets the dispatcher that deliver hands frames to; nil detaches.
func (e *endpoint) Attach(d stack.NetworkDispatcher) {
	if d == nil {
		e.dispatcher.Store(nil)
		return
	}
	e.dispatcher.Store(&d)
}

func (e *endpoint) IsAttached() bool { return e.dispatcher.Load() != nil }

// Wait returns at once: the endpoint has no goroutines.
func (e *endpoint) Wait() {}

// ARPHardwareType is none; the ethernet endpoint reports Ethernet.
func (e *endpoint) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareNone }

func (e *endpoint) AddHeader(*stack.PacketBuffer)        {}
func (e *endpoint) ParseHeader(*stack.PacketBuffer) bool { return true }

// Close is called by the stack when it removes the NIC. The queue belongs
// to the Port, which drains it in its own Close.
func (e *endpoint) Close() {}

func (e *endpoint) SetOnCloseAction(func()) {}
