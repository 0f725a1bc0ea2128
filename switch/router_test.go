package vswitch_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	vswitch "tapswitch/switch"
	"tapswitch/switch/porttest"
)

// The router's test network: port 0 is pod A, port 1 the gateway, port 2
// the host port (the node), port 3 pod B. Each port's MAC is hostMAC(i),
// learned by the harness's barrier frames.
const (
	rtPodA = iota
	rtGateway
	rtHost
	rtPodB
)

var (
	rtGW4    = netip.MustParsePrefix("10.244.0.1/24")
	rtGW6    = netip.MustParsePrefix("fd00:244::1/64")
	rtA4     = netip.MustParseAddr("10.244.0.2")
	rtB4     = netip.MustParseAddr("10.244.0.3")
	rtHost4  = netip.MustParseAddr("10.244.0.254")
	rtA6     = netip.MustParseAddr("fd00:244::2")
	rtB6     = netip.MustParseAddr("fd00:244::3")
	rtWorld4 = netip.MustParseAddr("198.18.0.2")
	rtWorld6 = netip.MustParseAddr("2001:db8::2")
	def4     = netip.MustParsePrefix("0.0.0.0/0")
	def6     = netip.MustParsePrefix("::/0")
)

// routerSwitch returns the test network with the router set and default
// routes to the host port. opts may set the clock.
func routerSwitch(t *testing.T, opts vswitch.Options, cfg vswitch.RouterConfig) *testSwitch {
	t.Helper()
	ts := newTestSwitch(t, opts, newPorts(4)...)
	ts.settle()
	binds := []vswitch.Binding{
		{IP: rtA4, MAC: hostMAC(rtPodA), Port: ts.ids[rtPodA]},
		{IP: rtA6, MAC: hostMAC(rtPodA), Port: ts.ids[rtPodA]},
		{IP: rtB4, MAC: hostMAC(rtPodB), Port: ts.ids[rtPodB]},
		{IP: rtB6, MAC: hostMAC(rtPodB), Port: ts.ids[rtPodB]},
		{IP: rtGW4.Addr(), MAC: hostMAC(rtGateway), Port: ts.ids[rtGateway]},
		{IP: rtHost4, MAC: hostMAC(rtHost), Port: ts.ids[rtHost]},
	}
	for _, b := range binds {
		if err := ts.sw.Bind(b); err != nil {
			t.Fatal(err)
		}
	}
	cfg.MAC, cfg.Port = hostMAC(rtGateway), ts.ids[rtGateway]
	cfg.Addrs = []netip.Prefix{rtGW4, rtGW6}
	cfg.HostPort, cfg.HostMAC = ts.ids[rtHost], hostMAC(rtHost)
	if err := ts.sw.SetRouter(cfg); err != nil {
		t.Fatalf("SetRouter: %v", err)
	}
	for _, p := range []netip.Prefix{def4, def6} {
		if err := ts.sw.SetRoute(vswitch.Route{Prefix: p, Port: ts.ids[rtHost], NextHop: hostMAC(rtHost)}); err != nil {
			t.Fatalf("SetRoute(%v): %v", p, err)
		}
	}
	return ts
}

// l4UDP is a UDP header and payload (checksum 0: none, for IPv4).
func l4UDP(sport, dport uint16, payload []byte) []byte {
	b := binary.BigEndian.AppendUint16(nil, sport)
	b = binary.BigEndian.AppendUint16(b, dport)
	b = binary.BigEndian.AppendUint16(b, uint16(8+len(payload)))
	return append(append(b, 0, 0), payload...)
}

// l4TCP is a 20-byte TCP header with flags.
func l4TCP(sport, dport uint16, flags byte) []byte {
	b := binary.BigEndian.AppendUint16(nil, sport)
	b = binary.BigEndian.AppendUint16(b, dport)
	b = append(b, 0, 0, 0, 1, 0, 0, 0, 0, 5<<4, flags, 0xff, 0xff, 0, 0, 0, 0)
	return b
}

// ipFrame is an Ethernet frame with an IPv4 or IPv6 packet (by the
// family of src) of protocol proto carrying l4.
func ipFrame(dst, srcMAC vswitch.MAC, src, to netip.Addr, ttl, proto uint8, df bool, l4 []byte) []byte {
	var ip []byte
	typ := uint16(vswitch.EtherTypeIP4)
	if src.Is6() {
		typ = vswitch.EtherTypeIP6
		ip = append(ip, 0x60, 0, 0, 0)
		ip = binary.BigEndian.AppendUint16(ip, uint16(len(l4)))
		ip = append(ip, proto, ttl)
		s, d := src.As16(), to.As16()
		ip = append(append(ip, s[:]...), d[:]...)
	} else {
		ip = append(ip, 0x45, 0)
		ip = binary.BigEndian.AppendUint16(ip, uint16(20+len(l4)))
		var frag uint16
		if df {
			frag = 0x4000
		}
		ip = binary.BigEndian.AppendUint16(ip, 0x1234)
		ip = binary.BigEndian.AppendUint16(ip, frag)
		ip = append(ip, ttl, proto, 0, 0)
		s, d := src.As4(), to.As4()
		ip = append(append(ip, s[:]...), d[:]...)
		binary.BigEndian.PutUint16(ip[10:], vswitch.IPv4(ip).HeaderChecksum())
	}
	return porttest.Ether(dst, srcMAC, typ, append(ip, l4...))
}

// routed is what the router should make of frame b: MACs rewritten and
// the TTL or hop limit one less, the IPv4 checksum updated.
func routed(b []byte, src, dst vswitch.MAC) []byte {
	out := slices.Clone(b)
	e := vswitch.Ether(out)
	e.SetSrc(src)
	e.SetDst(dst)
	if e.Type() == vswitch.EtherTypeIP6 {
		e.Payload()[7]--
	} else {
		ip := vswitch.IPv4(e.Payload())
		ip[8]--
		ip.SetChecksum(ip.HeaderChecksum())
	}
	return out
}

func addrs4or6(v6 bool, a4, a6 netip.Addr) netip.Addr {
	if v6 {
		return a6
	}
	return a4
}

func TestRouteForwards(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		t.Run(fmt.Sprintf("v6=%v", v6), func(t *testing.T) {
			ts := routerSwitch(t, vswitch.Options{}, vswitch.RouterConfig{})
			a, b, world := addrs4or6(v6, rtA4, rtA6), addrs4or6(v6, rtB4, rtB6), addrs4or6(v6, rtWorld4, rtWorld6)
			toWorld := ipFrame(hostMAC(rtGateway), hostMAC(rtPodA), a, world, 64, vswitch.ProtoUDP, true, l4UDP(1000, 53, []byte("out")))
			toPod := ipFrame(hostMAC(rtGateway), hostMAC(rtPodA), a, b, 64, vswitch.ProtoUDP, true, l4UDP(1000, 53, []byte("pod")))
			toGW := ipFrame(hostMAC(rtGateway), hostMAC(rtPodA), a, addrs4or6(v6, rtGW4.Addr(), rtGW6.Addr()), 64, vswitch.ProtoUDP, true, l4UDP(1000, 53, []byte("gw")))
			ts.inject(rtPodA, toWorld, toPod, toGW)
			ts.settle()
			if got, want := ts.data(rtHost), [][]byte{routed(toWorld, hostMAC(rtGateway), hostMAC(rtHost))}; !equalFrames(got, want) {
				t.Errorf("host port got %s, want %s", describe(got), describe(want))
			}
			if got, want := ts.data(rtPodB), [][]byte{routed(toPod, hostMAC(rtGateway), hostMAC(rtPodB))}; !equalFrames(got, want) {
				t.Errorf("pod B got %s, want %s", describe(got), describe(want))
			}
			// The gateway's own address is not routed: the frame goes to
			// the gateway port as it came.
			if got, want := ts.data(rtGateway), [][]byte{toGW}; !equalFrames(got, want) {
				t.Errorf("gateway got %s, want %s", describe(got), describe(want))
			}
			if got := ts.data(rtPodA); len(got) != 0 {
				t.Errorf("pod A got %s, want nothing", describe(got))
			}
			if st := ts.stats(rtHost); st.Routed != 1 {
				t.Errorf("host port Routed = %d, want 1", st.Routed)
			}
		})
	}
}

// icmpOf parses an ICMP or ICMPv6 error frame: its IP source, type, code
// and the 32 bits after the checksum (the MTU field of the MTU errors).
func icmpOf(t *testing.T, b []byte) (src netip.Addr, typ, code uint8, rest uint32) {
	t.Helper()
	e := vswitch.Ether(b)
	var l4 []byte
	switch e.Type() {
	case vswitch.EtherTypeIP4:
		ip := vswitch.IPv4(e.Payload())
		if ip.Protocol() != vswitch.ProtoICMP {
			t.Fatalf("protocol %d, want ICMP", ip.Protocol())
		}
		src, l4 = ip.Src(), ip.Payload()
	case vswitch.EtherTypeIP6:
		ip := vswitch.IPv6(e.Payload())
		if ip.NextHeader() != vswitch.ProtoICMPv6 {
			t.Fatalf("next header %d, want ICMPv6", ip.NextHeader())
		}
		src, l4 = ip.Src(), ip.Payload()
	default:
		t.Fatalf("ethertype %04x, want IP", e.Type())
	}
	return src, l4[0], l4[1], binary.BigEndian.Uint32(l4[4:8])
}

func TestRouteICMPErrors(t *testing.T) {
	big := make([]byte, 1400)
	tests := []struct {
		name     string
		v6       bool
		to       netip.Addr
		ttl      uint8
		payload  []byte
		mtu      int  // of the default route
		noRoute  bool // no default route
		typ      uint8
		code     uint8
		rest     uint32
		errorKey string
	}{
		{"ttl 1", false, rtWorld4, 1, nil, 0, false, 11, 0, 0, "time_exceeded"},
		{"hop limit 1", true, rtWorld6, 1, nil, 0, false, 3, 0, 0, "time_exceeded"},
		{"no route", false, rtWorld4, 64, nil, 0, true, 3, 0, 0, "net_unreachable"},
		{"no route v6", true, rtWorld6, 64, nil, 0, true, 1, 0, 0, "net_unreachable"},
		{"unknown pod", false, netip.MustParseAddr("10.244.0.9"), 64, nil, 0, false, 3, 1, 0, "host_unreachable"},
		{"unknown pod v6", true, netip.MustParseAddr("fd00:244::9"), 64, nil, 0, false, 1, 3, 0, "host_unreachable"},
		{"frag needed", false, rtWorld4, 64, big, 1300, false, 3, 4, 1300, "frag_needed"},
		{"packet too big", true, rtWorld6, 64, big, 1280, false, 2, 0, 1280, "frag_needed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := routerSwitch(t, vswitch.Options{}, vswitch.RouterConfig{})
			def := def4
			if tt.v6 {
				def = def6
			}
			if tt.noRoute {
				if ok, err := ts.sw.DeleteRoute(def); !ok || err != nil {
					t.Fatalf("DeleteRoute(%v) = %v, %v", def, ok, err)
				}
			}
			if tt.mtu != 0 {
				if err := ts.sw.SetRoute(vswitch.Route{Prefix: def, Port: ts.ids[rtHost], NextHop: hostMAC(rtHost), MTU: tt.mtu}); err != nil {
					t.Fatal(err)
				}
			}
			src := addrs4or6(tt.v6, rtA4, rtA6)
			f := ipFrame(hostMAC(rtGateway), hostMAC(rtPodA), src, tt.to, tt.ttl, vswitch.ProtoUDP, true, l4UDP(1000, 33434, tt.payload))
			ts.inject(rtPodA, f)
			ts.settle()
			got := ts.data(rtPodA)
			if len(got) != 1 {
				t.Fatalf("pod A got %s, want one ICMP error", describe(got))
			}
			e := vswitch.Ether(got[0])
			if e.Dst() != hostMAC(rtPodA) || e.Src() != hostMAC(rtGateway) {
				t.Errorf("error frame %v > %v, want %v > %v", e.Src(), e.Dst(), hostMAC(rtGateway), hostMAC(rtPodA))
			}
			from, typ, code, rest := icmpOf(t, got[0])
			if want := addrs4or6(tt.v6, rtGW4.Addr(), rtGW6.Addr()); from != want {
				t.Errorf("error from %v, want the gateway %v", from, want)
			}
			if typ != tt.typ || code != tt.code {
				t.Errorf("type/code %d/%d, want %d/%d", typ, code, tt.typ, tt.code)
			}
			if tt.rest != 0 && rest&0xffff != tt.rest {
				t.Errorf("mtu field %d, want %d", rest&0xffff, tt.rest)
			}
			for _, i := range []int{rtHost, rtPodB, rtGateway} {
				if d := ts.data(i); len(d) != 0 {
					t.Errorf("port %d got %s, want nothing", i, describe(d))
				}
			}
			if n := ts.sw.RouterStats().ICMPSent[tt.errorKey]; n != 1 {
				t.Errorf("RouterStats().ICMPSent[%s] = %d, want 1", tt.errorKey, n)
			}
		})
	}
}

func TestRouteFragments(t *testing.T) {
	ts := routerSwitch(t, vswitch.Options{}, vswitch.RouterConfig{})
	if err := ts.sw.SetRoute(vswitch.Route{Prefix: def4, Port: ts.ids[rtHost], NextHop: hostMAC(rtHost), MTU: 576}); err != nil {
		t.Fatal(err)
	}
	payload := make([]byte, 1400)
	for i := range payload {
		payload[i] = byte(i)
	}
	l4 := l4UDP(1000, 9, payload)
	ts.inject(rtPodA, ipFrame(hostMAC(rtGateway), hostMAC(rtPodA), rtA4, rtWorld4, 64, vswitch.ProtoUDP, false, l4))
	ts.settle()
	got := ts.data(rtHost)
	if len(got) != 3 {
		t.Fatalf("host port got %s, want 3 fragments", describe(got))
	}
	var whole []byte
	for i, b := range got {
		ip := vswitch.IPv4(vswitch.Ether(b).Payload())
		if int(ip.TotalLen()) > 576 || ip.TTL() != 63 || ip.HeaderChecksum() != ip.Checksum() {
			t.Errorf("fragment %d: length %d ttl %d checksum %04x (want %04x)", i, ip.TotalLen(), ip.TTL(), ip.Checksum(), ip.HeaderChecksum())
		}
		if ip.FragOffset() != len(whole) || ip.MF() != (i < len(got)-1) {
			t.Errorf("fragment %d: offset %d MF %v, want %d %v", i, ip.FragOffset(), ip.MF(), len(whole), i < len(got)-1)
		}
		whole = append(whole, ip.Payload()[:int(ip.TotalLen())-ip.HeaderLen()]...)
	}
	if !bytes.Equal(whole, l4) {
		t.Errorf("fragments reassemble to %d bytes that differ from the %d sent", len(whole), len(l4))
	}
	if n := ts.sw.RouterStats().Fragments; n != 3 {
		t.Errorf("RouterStats().Fragments = %d, want 3", n)
	}
}

// TestRouteGSO routes TCP super-frames to a local pod whose port takes no
// GSO: the switch segments them after the TTL changed, so every segment
// carries the routed header with a right checksum.
func TestRouteGSO(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		t.Run(fmt.Sprintf("v6=%v", v6), func(t *testing.T) {
			ts := routerSwitch(t, vswitch.Options{}, vswitch.RouterConfig{})
			// gsoPacket flows from 10.244.0.2 to .3 (fd00:10:244::2 to ::3).
			b := addrs4or6(v6, gsoDst4, gsoDst6)
			if err := ts.sw.Bind(vswitch.Binding{IP: b, MAC: hostMAC(rtPodB), Port: ts.ids[rtPodB]}); err != nil {
				t.Fatal(err)
			}
			if v6 {
				// fd00:10:244::/64 is not the gateway's subnet: route it.
				if err := ts.sw.SetRoute(vswitch.Route{Prefix: netip.MustParsePrefix("fd00:10:244::/64"), Port: ts.ids[rtPodB], NextHop: hostMAC(rtPodB)}); err != nil {
					t.Fatal(err)
				}
			}
			p := gsoPacket{v6: v6, flags: flagACK, payload: randomBytes(7, 4000), mss: 1400}
			f := p.frame(true)
			e := vswitch.Ether(f)
			e.SetDst(hostMAC(rtGateway))
			e.SetSrc(hostMAC(rtPodA))
			fr := vswitch.NewPool(vswitch.LargeBufSize).Get()
			fr.SetLen(copy(fr.ReadBuf(0), f))
			fr.Offload = p.offload()
			// HdrLen is a hint (skb_headlen), which may count payload:
			// the router reads the headers' length from the packet, or
			// this 1400-byte MSS would look too big for the link.
			fr.Offload.HdrLen += 200
			ts.sw.Forward(ts.ids[rtPodA], []*vswitch.Frame{fr})
			ts.settle()
			got := ts.data(rtPodB)
			want := p.segments()
			if len(got) != len(want) {
				t.Fatalf("pod B got %s, want %d segments", describe(got), len(want))
			}
			for i := range want {
				w := routed(want[i], hostMAC(rtGateway), hostMAC(rtPodB))
				if !bytes.Equal(got[i], w) {
					t.Errorf("segment %d differs at %s", i, firstDiff(got[i], w))
				}
			}
		})
	}
}

// TestRouteHostFlows: a flow the node forwarded from pod A to pod B (a
// Service address translated by the node) returns through the node;
// other traffic between the pods goes straight.
func TestRouteHostFlows(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		t.Run(fmt.Sprintf("v6=%v", v6), func(t *testing.T) {
			ts := routerSwitch(t, vswitch.Options{}, vswitch.RouterConfig{})
			a, b := addrs4or6(v6, rtA4, rtA6), addrs4or6(v6, rtB4, rtB6)
			syn := ipFrame(hostMAC(rtPodB), hostMAC(rtHost), a, b, 63, vswitch.ProtoTCP, true, l4TCP(40000, 80, 0x02))
			ts.inject(rtHost, syn)
			ts.settle()
			if got := ts.data(rtPodB); !equalFrames(got, [][]byte{syn}) {
				t.Fatalf("pod B got %s, want the SYN", describe(got))
			}
			reply := ipFrame(hostMAC(rtPodA), hostMAC(rtPodB), b, a, 64, vswitch.ProtoTCP, true, l4TCP(80, 40000, 0x12))
			other := ipFrame(hostMAC(rtPodA), hostMAC(rtPodB), b, a, 64, vswitch.ProtoTCP, true, l4TCP(80, 40001, 0x12))
			ts.inject(rtPodB, reply, other)
			ts.settle()
			viaHost := slices.Clone(reply)
			vswitch.Ether(viaHost).SetDst(hostMAC(rtHost))
			if got := ts.data(rtHost); !equalFrames(got, [][]byte{viaHost}) {
				t.Errorf("host port got %s, want the reply of the recorded flow", describe(got))
			}
			if got := ts.data(rtPodA); !equalFrames(got, [][]byte{other}) {
				t.Errorf("pod A got %s, want only the other flow's frame", describe(got))
			}
			if n := ts.sw.RouterStats().HostFlows; n != 1 {
				t.Errorf("RouterStats().HostFlows = %d, want 1", n)
			}
		})
	}
}

// TestRouteHostFlowsIgnoresNode: the node's own traffic to a pod (from
// the host port's address) records nothing: its replies go to the node
// anyway.
func TestRouteHostFlowsIgnoresNode(t *testing.T) {
	ts := routerSwitch(t, vswitch.Options{}, vswitch.RouterConfig{})
	ts.inject(rtHost, ipFrame(hostMAC(rtPodB), hostMAC(rtHost), rtHost4, rtB4, 64, vswitch.ProtoTCP, true, l4TCP(40000, 80, 0x02)))
	ts.settle()
	if n := ts.sw.RouterStats().HostFlows; n != 0 {
		t.Errorf("RouterStats().HostFlows = %d, want 0", n)
	}
}

// TestRouteHairpin: the node sending to the gateway what its own route
// would send back to it is dropped, not looped.
func TestRouteHairpin(t *testing.T) {
	ts := routerSwitch(t, vswitch.Options{}, vswitch.RouterConfig{})
	ts.inject(rtHost, ipFrame(hostMAC(rtGateway), hostMAC(rtHost), rtHost4, rtWorld4, 64, vswitch.ProtoUDP, true, l4UDP(1, 2, nil)))
	ts.settle()
	for i := range 4 {
		if d := ts.data(i); len(d) != 0 {
			t.Errorf("port %d got %s, want nothing", i, describe(d))
		}
	}
	if n := ts.stats(rtHost).Drops["hairpin"]; n != 1 {
		t.Errorf("host port hairpin drops = %d, want 1", n)
	}
}

func TestRouteLongestPrefix(t *testing.T) {
	ts := routerSwitch(t, vswitch.Options{}, vswitch.RouterConfig{})
	nh := func(n byte) vswitch.MAC { return porttest.MAC(0x60 + n) }
	routes := []vswitch.Route{
		{Prefix: netip.MustParsePrefix("198.18.0.0/15"), Port: ts.ids[rtPodB], NextHop: nh(1)},
		{Prefix: netip.MustParsePrefix("198.18.7.0/24"), Port: ts.ids[rtPodB], NextHop: nh(2)},
		{Prefix: netip.MustParsePrefix("198.18.7.7/32"), Port: ts.ids[rtPodB], NextHop: nh(3)},
	}
	for _, r := range routes {
		if err := ts.sw.SetRoute(r); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		to   string
		port int
		mac  vswitch.MAC
	}{
		{"198.19.0.1", rtPodB, nh(1)},
		{"198.18.7.1", rtPodB, nh(2)},
		{"198.18.7.7", rtPodB, nh(3)},
		{"203.0.113.1", rtHost, hostMAC(rtHost)},
	}
	for _, tt := range tests {
		ts.inject(rtPodA, ipFrame(hostMAC(rtGateway), hostMAC(rtPodA), rtA4, netip.MustParseAddr(tt.to), 64, vswitch.ProtoUDP, true, l4UDP(1, 2, []byte(tt.to))))
	}
	ts.settle()
	for _, tt := range tests {
		found := false
		for _, b := range ts.data(tt.port) {
			if vswitch.IPv4(vswitch.Ether(b).Payload()).Dst() == netip.MustParseAddr(tt.to) {
				found = true
				if d := vswitch.Ether(b).Dst(); d != tt.mac {
					t.Errorf("to %s: next hop %v, want %v", tt.to, d, tt.mac)
				}
			}
		}
		if !found {
			t.Errorf("to %s: not on port %d", tt.to, tt.port)
		}
	}
	if got := len(ts.sw.Routes()); got != 5 {
		t.Errorf("len(Routes()) = %d, want 5", got)
	}
	if ok, err := ts.sw.DeleteRoute(netip.MustParsePrefix("198.18.7.0/24")); !ok || err != nil {
		t.Errorf("DeleteRoute = %v, %v, want true, nil", ok, err)
	}
	if ok, _ := ts.sw.DeleteRoute(netip.MustParsePrefix("198.18.7.0/24")); ok {
		t.Error("second DeleteRoute = true, want false")
	}
}

func TestSetRouteErrors(t *testing.T) {
	ts := routerSwitch(t, vswitch.Options{}, vswitch.RouterConfig{})
	good := vswitch.Route{Prefix: def4, Port: ts.ids[rtHost], NextHop: hostMAC(rtHost)}
	tests := []struct {
		name string
		edit func(*vswitch.Route)
	}{
		{"invalid prefix", func(r *vswitch.Route) { r.Prefix = netip.Prefix{} }},
		{"mapped prefix", func(r *vswitch.Route) { r.Prefix = netip.MustParsePrefix("::ffff:10.0.0.0/104") }},
		{"multicast next hop", func(r *vswitch.Route) { r.NextHop = vswitch.Broadcast }},
		{"zero next hop", func(r *vswitch.Route) { r.NextHop = vswitch.MAC{} }},
		{"unknown port", func(r *vswitch.Route) { r.Port = 999 }},
		{"mtu over the port's", func(r *vswitch.Route) { r.MTU = 9000 }},
		{"mtu under 68", func(r *vswitch.Route) { r.MTU = 67 }},
		{"ipv6 mtu under 1280", func(r *vswitch.Route) { r.Prefix, r.MTU = def6, 1279 }},
	}
	for _, tt := range tests {
		r := good
		tt.edit(&r)
		if err := ts.sw.SetRoute(r); err == nil {
			t.Errorf("%s: SetRoute(%+v) = nil, want an error", tt.name, r)
		}
	}
	sw := vswitch.New(vswitch.Options{})
	defer sw.Close()
	if err := sw.SetRoute(good); err == nil {
		t.Error("SetRoute before SetRouter = nil, want an error")
	}
	if err := sw.SetRouter(vswitch.RouterConfig{MAC: hostMAC(1), Port: 1, Addrs: []netip.Prefix{rtGW4}}); err == nil {
		t.Error("SetRouter with an unknown port = nil, want an error")
	}
}

func TestRouteICMPRateLimit(t *testing.T) {
	now := time.Unix(1e9, 0)
	ts := routerSwitch(t, vswitch.Options{Now: func() time.Time { return now }}, vswitch.RouterConfig{ICMPRate: 1, ICMPBurst: 2})
	f := ipFrame(hostMAC(rtGateway), hostMAC(rtPodA), rtA4, rtWorld4, 1, vswitch.ProtoUDP, true, l4UDP(1000, 33434, nil))
	ts.inject(rtPodA, f, f, f, f, f)
	ts.settle()
	if got := ts.data(rtPodA); len(got) != 2 {
		t.Errorf("pod A got %d errors, want 2 (the burst)", len(got))
	}
	st := ts.sw.RouterStats()
	if st.ICMPSent["time_exceeded"] != 2 || st.ICMPRateLimited != 3 {
		t.Errorf("RouterStats() = %+v, want 2 sent and 3 limited", st)
	}
}

// memRouter is memSwitch's three ports as pod (0), gateway (1) and host
// port (2), with the router set and a default route to the host port.
func memRouter(tb testing.TB) (*vswitch.Switch, []*memPort, []vswitch.PortID) {
	tb.Helper()
	sw, ports, ids := memSwitch(tb, 3)
	if err := sw.SetRouter(vswitch.RouterConfig{MAC: hostMAC(1), Port: ids[1], Addrs: []netip.Prefix{rtGW4}, HostPort: ids[2], HostMAC: hostMAC(2)}); err != nil {
		tb.Fatal(err)
	}
	if err := sw.SetRoute(vswitch.Route{Prefix: def4, Port: ids[2], NextHop: hostMAC(2)}); err != nil {
		tb.Fatal(err)
	}
	return sw, ports, ids
}

// TestRouteAllocs proves that a routed frame allocates nothing.
func TestRouteAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under the race detector")
	}
	sw, ports, ids := memRouter(t)
	frame := ipFrame(hostMAC(1), hostMAC(0), rtA4, rtWorld4, 64, vswitch.ProtoUDP, true, l4UDP(1000, 53, make([]byte, 1400)))
	pool := vswitch.NewPool(vswitch.SmallBufSize)
	batch := make([]*vswitch.Frame, 1)
	want := ports[2].frames.Load()
	allocs := testing.AllocsPerRun(1000, func() {
		forwardOne(sw, ids[0], pool, batch, frame)
		want++
		for spins := 0; ports[2].frames.Load() < want; spins++ {
			if spins > 10_000_000 {
				t.Fatal("routed frame not written")
			}
			runtime.Gosched()
		}
	})
	if allocs != 0 {
		t.Errorf("AllocsPerRun(routed Forward) = %v, want 0", allocs)
	}
	if st, _ := sw.PortStats(ids[2]); st.Routed == 0 || st.TotalDrops() != 0 {
		t.Errorf("host port stats %+v, want routed frames and no drops", st)
	}
}

// BenchmarkRoute is one routed frame through Switch.Forward: the header
// checks, the route lookup, the rewrite and the hand-over.
func BenchmarkRoute(b *testing.B) {
	const pace = 512 // half the default egress queue
	for _, size := range []int{64, 1500} {
		b.Run(fmt.Sprintf("%dB", size), func(b *testing.B) {
			sw, ports, ids := memRouter(b)
			frame := ipFrame(hostMAC(1), hostMAC(0), rtA4, rtWorld4, 64, vswitch.ProtoUDP, true, l4UDP(1000, 53, make([]byte, size-28)))
			pool := vswitch.NewPool(vswitch.SmallBufSize)
			batch := make([]*vswitch.Frame, 1)
			start := ports[2].frames.Load()
			b.SetBytes(int64(len(frame)))
			b.ReportAllocs()
			n := 0
			for b.Loop() {
				forwardOne(sw, ids[0], pool, batch, frame)
				if n++; n%pace == 0 {
					ports[2].waitFrames(start + uint64(n))
				}
			}
			reportDrops(b, sw, n)
		})
	}
}

// TestRouteBadChecksum: an IPv4 header with a wrong checksum is not
// routed; it goes to the gateway, whose stack drops it.
func TestRouteBadChecksum(t *testing.T) {
	ts := routerSwitch(t, vswitch.Options{}, vswitch.RouterConfig{})
	f := ipFrame(hostMAC(rtGateway), hostMAC(rtPodA), rtA4, rtWorld4, 64, vswitch.ProtoUDP, true, l4UDP(1, 2, nil))
	f[vswitch.EtherHdrLen+10] ^= 0xff
	ts.inject(rtPodA, f)
	ts.settle()
	if got := ts.data(rtHost); len(got) != 0 {
		t.Errorf("host port got %s, want nothing", describe(got))
	}
	if got := ts.data(rtGateway); !equalFrames(got, [][]byte{f}) {
		t.Errorf("gateway got %s, want the frame as it came", describe(got))
	}
}

// TestAddHostFlow: a flow given by AddHostFlow (a restarted daemon's,
// from the node's connection tracking) returns through the host port.
func TestAddHostFlow(t *testing.T) {
	ts := routerSwitch(t, vswitch.Options{}, vswitch.RouterConfig{})
	ts.sw.AddHostFlow(rtB4, rtA4, vswitch.ProtoTCP, 80, 40000)
	reply := ipFrame(hostMAC(rtPodA), hostMAC(rtPodB), rtB4, rtA4, 64, vswitch.ProtoTCP, true, l4TCP(80, 40000, 0x10))
	ts.inject(rtPodB, reply)
	ts.settle()
	viaHost := slices.Clone(reply)
	vswitch.Ether(viaHost).SetDst(hostMAC(rtHost))
	if got := ts.data(rtHost); !equalFrames(got, [][]byte{viaHost}) {
		t.Errorf("host port got %s, want the flow's frame", describe(got))
	}
	if got := ts.data(rtPodA); len(got) != 0 {
		t.Errorf("pod A got %s, want nothing", describe(got))
	}
}

// TestHostFlowsExpire: a flow without traffic leaves the table after its
// idle time (a day for TCP; two minutes once a FIN passed; 30 seconds
// for UDP).
func TestHostFlowsExpire(t *testing.T) {
	var mu sync.Mutex
	now := time.Unix(1e9, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	// A short aging time makes the switch sweep every second.
	ts := routerSwitch(t, vswitch.Options{Now: clock, AgingTime: 10 * time.Second}, vswitch.RouterConfig{})
	flow := func(sport uint16, proto uint8, flags byte) []byte {
		l4 := l4UDP(sport, 80, nil)
		if proto == vswitch.ProtoTCP {
			l4 = l4TCP(sport, 80, flags)
		}
		return ipFrame(hostMAC(rtPodB), hostMAC(rtHost), rtA4, rtB4, 63, proto, true, l4)
	}
	// Each frame records a flow at the clock's time; the sweep follows
	// the clock a second later at most.
	ts.inject(rtHost, flow(1, vswitch.ProtoTCP, 0x10), flow(2, vswitch.ProtoTCP, 0x11), flow(3, vswitch.ProtoUDP, 0))
	ts.settle()
	wantFlows := func(n int) {
		t.Helper()
		waitFor(t, func() string {
			if got := ts.sw.RouterStats().HostFlows; got != n {
				return fmt.Sprintf("RouterStats().HostFlows = %d, want %d", got, n)
			}
			return ""
		})
	}
	wantFlows(4)              // the UDP flow's address pair too
	advance(35 * time.Second) // past UDP's idle time
	wantFlows(2)
	advance(2 * time.Minute) // past the closed TCP flow's
	wantFlows(1)
	advance(24 * time.Hour)
	wantFlows(0)
}

// TestHostFlowsFragments: both fragments of a UDP reply of a recorded
// flow return through the node, the later one, without ports, by the
// flow's address pair.
func TestHostFlowsFragments(t *testing.T) {
	ts := routerSwitch(t, vswitch.Options{}, vswitch.RouterConfig{})
	ts.inject(rtHost, ipFrame(hostMAC(rtPodB), hostMAC(rtHost), rtA4, rtB4, 63, vswitch.ProtoUDP, false, l4UDP(40000, 53, []byte("q"))))
	ts.settle()
	first := ipFrame(hostMAC(rtPodA), hostMAC(rtPodB), rtB4, rtA4, 64, vswitch.ProtoUDP, false, l4UDP(53, 40000, make([]byte, 64)))
	later := ipFrame(hostMAC(rtPodA), hostMAC(rtPodB), rtB4, rtA4, 64, vswitch.ProtoUDP, false, make([]byte, 40))
	for _, f := range [][]byte{first, later} {
		ip := vswitch.IPv4(vswitch.Ether(f).Payload())
		if bytes.Equal(f, first) {
			binary.BigEndian.PutUint16(ip[6:8], 0x2000) // MF, offset 0
		} else {
			binary.BigEndian.PutUint16(ip[6:8], 9) // offset 72 bytes
		}
		ip.SetChecksum(ip.HeaderChecksum())
	}
	ts.inject(rtPodB, first, later)
	ts.settle()
	if got := ts.data(rtHost); len(got) != 2 {
		t.Errorf("host port got %s, want both fragments", describe(got))
	}
	if got := ts.data(rtPodA); len(got) != 0 {
		t.Errorf("pod A got %s, want nothing", describe(got))
	}
}

// TestHostFlowsEvict: a full table makes room for a new flow by dropping
// an idle one.
func TestHostFlowsEvict(t *testing.T) {
	if testing.Short() {
		t.Skip("fills the table: 65,536 flows")
	}
	ts := routerSwitch(t, vswitch.Options{}, vswitch.RouterConfig{})
	for i := range 65536 + 8 {
		ts.sw.AddHostFlow(rtB4, rtA4, vswitch.ProtoTCP, uint16(i), uint16(i>>16)+1)
	}
	st := ts.sw.RouterStats()
	if st.HostFlows != 65536 || st.HostFlowsEvicted != 8 {
		t.Errorf("RouterStats() HostFlows %d evicted %d, want 65536 and 8", st.HostFlows, st.HostFlowsEvicted)
	}
}
