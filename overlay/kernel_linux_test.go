package overlay

import (
	"encoding/binary"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"tapswitch/internal/pinger"
	"tapswitch/internal/testutil"
	vswitch "tapswitch/switch"
)

// TestKernelFlannelNode checks wire compatibility with a Linux VXLAN
// device set up as flannel's vxlan backend sets up a node: netns K is a
// flannel node with pod subnet 10.244.1.0/24, netns T runs our port for
// the pod subnet 10.244.2.0/24, and a veth pair is the underlay. A ping
// from K to a pod address of T arrives at our ReadBatch as an IP frame
// for the router; the echo reply we write back makes the ping succeed.
func TestKernelFlannelNode(t *testing.T) {
	for _, tt := range []struct{ name, k, t string }{
		{"ipv4 underlay", "192.168.77.1", "192.168.77.2"},
		{"ipv6 underlay", "fd00:77::1", "fd00:77::2"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			testKernelFlannelNode(t, netip.MustParseAddr(tt.k), netip.MustParseAddr(tt.t))
		})
	}
}

func testKernelFlannelNode(t *testing.T, underK, underT netip.Addr) {
	testutil.RequireRoot(t)
	nsK, nsT := testutil.NewNetNS(t), testutil.NewNetNS(t)
	kMAC := vswitch.MAC{0x02, 0x4b, 0, 0, 0, 1}
	ourMAC := vswitch.MAC{0x02, 0x54, 0, 0, 0, 2}
	routerMAC := vswitch.MAC{0x02, 0x54, 0, 0, 0, 0xfe}
	var (
		kGW   = netip.MustParseAddr("10.244.1.0") // flannel.1's address: its subnet's .0/32
		ourGW = netip.MustParseAddr("10.244.2.0")
		pod   = netip.MustParseAddr("10.244.2.5")
	)

	// The underlay.
	bits, nodad := 24, []string{}
	if underK.Is6() {
		bits, nodad = 64, []string{"nodad"}
	}
	ipIn(t, nsK, "link", "add", "vk", "type", "veth", "peer", "name", "vt", "netns", filepath.Base(nsT))
	for _, e := range []struct {
		ns, dev string
		addr    netip.Addr
	}{{nsK, "vk", underK}, {nsT, "vt", underT}} {
		ipIn(t, e.ns, "link", "set", "lo", "up")
		ipIn(t, e.ns, append([]string{"addr", "add", netip.PrefixFrom(e.addr, bits).String(), "dev", e.dev}, nodad...)...)
		ipIn(t, e.ns, "link", "set", e.dev, "up")
	}

	// Node K, as flannel's vxlan backend configures it for a peer whose
	// subnet is 10.244.2.0/24, VTEP MAC ourMAC, public IP underT.
	ipIn(t, nsK, "link", "add", "flannel.1", "address", kMAC.String(), "type", "vxlan", "id", "1",
		"local", underK.String(), "dev", "vk", "dstport", "8472", "nolearning")
	ipIn(t, nsK, "addr", "add", kGW.String()+"/32", "dev", "flannel.1")
	ipIn(t, nsK, "link", "set", "flannel.1", "up")
	ipIn(t, nsK, "neigh", "add", ourGW.String(), "lladdr", ourMAC.String(), "dev", "flannel.1", "nud", "permanent")
	runCmd(t, "bridge", "-n", filepath.Base(nsK), "fdb", "append", ourMAC.String(), "dev", "flannel.1", "dst", underT.String())
	ipIn(t, nsK, "route", "add", "10.244.2.0/24", "via", ourGW.String(), "dev", "flannel.1", "onlink")

	// Node T: our port.
	p := openPort(t, nsT, VXLANOptions{Local: netip.AddrPortFrom(underT, 0), VTEPMAC: ourMAC, RouterMAC: routerMAC})
	if err := p.SetVTEPs([]VTEP{{Name: "k", Address: underK, MAC: kMAC}}); err != nil {
		t.Fatal(err)
	}
	rx := startReceiver(t, p)

	type pingResult struct {
		res pinger.Result
		err error
	}
	done := make(chan pingResult, 1)
	go func() {
		res, err := pinger.Ping(nsK, pod, 1, 5*time.Second)
		done <- pingResult{res, err}
	}()

	// The echo request, routed by the kernel into the tunnel.
	req := rx.next(t)
	e := vswitch.Ether(req)
	if e.Dst() != routerMAC || e.Src() != kMAC || e.Type() != vswitch.EtherTypeIP4 {
		t.Fatalf("frame from the kernel: dst %v src %v type %#x, want %v, %v, IPv4", e.Dst(), e.Src(), e.Type(), routerMAC, kMAC)
	}
	ip4 := vswitch.IPv4(e.Payload())
	if ip4.Src() != kGW || ip4.Dst() != pod || ip4.Protocol() != 1 || ip4.Payload()[0] != 8 {
		t.Fatalf("packet from the kernel: %v > %v proto %d type %d, want %v > %v ICMP echo request",
			ip4.Src(), ip4.Dst(), ip4.Protocol(), ip4.Payload()[0], kGW, pod)
	}

	// Our reply: addresses swapped (the IPv4 header checksum does not
	// change), type echo reply, to the kernel's VTEP MAC.
	f := testPool.Get()
	reply := f.ReadBuf(0)[:len(req)]
	copy(reply, req)
	f.SetLen(len(reply))
	vswitch.Ether(reply).SetDst(kMAC)
	ip := vswitch.IPv4(vswitch.Ether(reply).Payload())
	src, dst := ip.Src().As4(), ip.Dst().As4()
	copy(ip[12:16], dst[:])
	copy(ip[16:20], src[:])
	icmp := ip.Payload()[:int(ip.TotalLen())-ip.HeaderLen()]
	icmp[0] = 0
	binary.BigEndian.PutUint16(icmp[2:], 0)
	binary.BigEndian.PutUint16(icmp[2:], ^vswitch.Checksum(icmp, 0))
	if n, err := p.WriteBatch([]*vswitch.Frame{f}); n != 1 || err != nil {
		t.Fatalf("WriteBatch(echo reply) = %d, %v", n, err)
	}

	r := <-done
	if r.err != nil || r.res.Received != 1 {
		t.Fatalf("ping %v from the flannel node = %+v, %v; want the reply received", pod, r.res, r.err)
	}
	if d := p.Drops(); len(d) != 0 {
		t.Errorf("Drops() = %v, want none", d)
	}
	st := p.VTEPStats()
	if len(st) != 1 || st[0].RxFrames != 1 || st[0].TxFrames != 1 {
		t.Errorf("VTEPStats() = %+v, want 1 frame each way", st)
	}
}
