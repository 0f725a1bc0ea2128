package netstack

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	vswitch "tapswitch/switch"
	"tapswitch/switch/porttest"
)

var (
	allNodes      = netip.MustParseAddr("ff02::1")
	allNodesMAC   = vswitch.MAC{0x33, 0x33, 0, 0, 0, 1}
	allRouters    = netip.MustParseAddr("ff02::2")
	allRoutersMAC = vswitch.MAC{0x33, 0x33, 0, 0, 0, 2}
)

// eui64LinkLocal is the link-local address of mac formed by modified
// EUI-64 (RFC 4291 appendix A, RFC 2464 section 5).
func eui64LinkLocal(mac vswitch.MAC) netip.Addr {
	return netip.AddrFrom16([16]byte{
		0: 0xfe, 1: 0x80,
		8: mac[0] ^ 0x02, 9: mac[1], 10: mac[2], 11: 0xff, 12: 0xfe, 13: mac[3], 14: mac[4], 15: mac[5],
	})
}

// isICMP6 reports whether e is an IPv6 packet without extension headers
// carrying an ICMPv6 message of type typ.
func isICMP6(e vswitch.Ether, typ byte) bool {
	p := e.Payload()
	return e.Type() == vswitch.EtherTypeIP6 && len(p) >= 48 && p[6] == 58 && p[40] == typ
}

func isRA(e vswitch.Ether) bool { return isICMP6(e, byte(header.ICMPv6RouterAdvert)) }

// ip6Dst is the destination address of IPv6 packet ip.
func ip6Dst(ip []byte) netip.Addr { return netip.AddrFrom16([16]byte(ip[24:40])) }

// routerSolicit returns a Router Solicitation (RFC 4861 section 4.1), with
// a source link-layer address option when slla is not zero.
func routerSolicit(slla vswitch.MAC) []byte {
	rs := make([]byte, 8)
	rs[0] = byte(header.ICMPv6RouterSolicit)
	if !slla.Zero() {
		rs = append(rs, 1, 1)
		rs = append(rs, slla[:]...)
	}
	return rs
}

// ndpOptions splits the options of an NDP message body by type, failing
// the test on a malformed one.
func ndpOptions(t *testing.T, opts []byte) map[byte][][]byte {
	t.Helper()
	m := make(map[byte][][]byte)
	for len(opts) > 0 {
		if len(opts) < 2 || opts[1] == 0 || int(opts[1])*8 > len(opts) {
			t.Fatalf("malformed ndp options % x", opts)
		}
		l := int(opts[1]) * 8
		m[opts[0]] = append(m[opts[0]], opts[:l])
		opts = opts[l:]
	}
	return m
}

// checkRA checks the IPv6 header and the ICMPv6 message of an advertisement
// from the gateway of newTestNet, sent to dst.
func checkRA(t *testing.T, e vswitch.Ether, dst netip.Addr) {
	t.Helper()
	ip := e.Payload()
	if src := netip.AddrFrom16([16]byte(ip[8:24])); src != eui64LinkLocal(gwMAC) {
		t.Errorf("advertisement source = %s, want the gateway's link-local %s", src, eui64LinkLocal(gwMAC))
	}
	if got := ip6Dst(ip); got != dst {
		t.Errorf("advertisement destination = %s, want %s", got, dst)
	}
	if ip[7] != 255 {
		t.Errorf("advertisement hop limit = %d, want 255", ip[7])
	}
	plen := int(binary.BigEndian.Uint16(ip[4:]))
	if 40+plen > len(ip) {
		t.Fatalf("advertisement payload length %d beyond the frame (%d bytes of IPv6)", plen, len(ip))
	}
	ra := ip[40 : 40+plen]
	if c := ^vswitch.Checksum(ra, pseudoSum6(ip)); c != 0 {
		t.Errorf("advertisement checksum does not verify (%#04x)", c)
	}
	if len(ra) < 16 {
		t.Fatalf("advertisement too short: % x", ra)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"code", ra[1], byte(0)},
		{"cur hop limit", ra[4], byte(64)},
		{"flags", ra[5], byte(0)},
		{"router lifetime", binary.BigEndian.Uint16(ra[6:]), uint16(1800)},
		{"reachable time", binary.BigEndian.Uint32(ra[8:]), uint32(0)},
		{"retrans timer", binary.BigEndian.Uint32(ra[12:]), uint32(0)},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("advertisement %s = %v, want %v", c.name, c.got, c.want)
		}
	}

	opts := ndpOptions(t, ra[16:])
	if o := opts[1]; len(o) != 1 || len(o[0]) != 8 || vswitch.MAC(o[0][2:8]) != gwMAC {
		t.Errorf("source link-layer address options = % x, want one with %s", o, gwMAC)
	}
	if o := opts[5]; len(o) != 1 || len(o[0]) != 8 || binary.BigEndian.Uint32(o[0][4:]) != 1500 {
		t.Errorf("mtu options = % x, want one with 1500", o)
	}
	o := opts[3]
	if len(o) != 1 || len(o[0]) != 32 {
		t.Fatalf("prefix information options = % x, want one of 32 bytes", o)
	}
	pi := o[0]
	if got, want := netip.PrefixFrom(netip.AddrFrom16([16]byte(pi[16:32])), int(pi[2])), netip.MustParsePrefix("fd00:244::/64"); got != want {
		t.Errorf("prefix = %s, want %s", got, want)
	}
	if pi[3]&0x80 == 0 {
		t.Errorf("prefix flags %#x: on-link (L) not set", pi[3])
	}
	if pi[3]&0x40 != 0 {
		t.Errorf("prefix flags %#x: autonomous (A) set, want addresses from IPAM only", pi[3])
	}
	valid, preferred := binary.BigEndian.Uint32(pi[4:]), binary.BigEndian.Uint32(pi[8:])
	if valid == 0 || preferred > valid {
		t.Errorf("prefix lifetimes valid %d, preferred %d: want valid > 0 and preferred <= valid", valid, preferred)
	}
}

// TestRouterAdvertisement checks the unsolicited advertisement the
// gateway sends when it starts.
func TestRouterAdvertisement(t *testing.T) {
	n := newTestNet(t, Options{})
	e := n.await(t, "router advertisement", isRA)
	if e.Dst() != allNodesMAC || e.Src() != gwMAC {
		t.Errorf("advertisement ether %s -> %s, want %s -> %s", e.Src(), e.Dst(), gwMAC, allNodesMAC)
	}
	checkRA(t, e, allNodes)
}

// TestRouterSolicitation checks that a pod's solicitation from its
// link-local address gets a unicast advertisement long before the next
// unsolicited one, and that a solicitation with a hop limit other than 255
// is ignored (RFC 4861 section 6.1.1).
func TestRouterSolicitation(t *testing.T) {
	n := newTestNet(t, Options{})
	n.await(t, "unsolicited advertisement", isRA)
	gwLL, podLL := eui64LinkLocal(gwMAC), eui64LinkLocal(podMAC)
	forged := netip.MustParseAddr("fe80::bad")

	n.pod.Inject(porttest.Ether(allRoutersMAC, podMAC, vswitch.EtherTypeIP6, ipv6Packet(forged, allRouters, 64, routerSolicit(podMAC))))
	n.pod.Inject(porttest.Ether(allRoutersMAC, podMAC, vswitch.EtherTypeIP6, ipv6Packet(podLL, allRouters, 255, routerSolicit(podMAC))))

	// The answer goes to the pod's link-local address, which the gateway
	// may first resolve with a neighbour solicitation: answer it like a
	// host (RFC 4861 section 7.2.4).
	answered := false
	e := n.await(t, "solicited advertisement", func(e vswitch.Ether) bool {
		if !answered && isICMP6(e, 135) && len(e.Payload()) >= 64 && netip.AddrFrom16([16]byte(e.Payload()[48:64])) == podLL {
			answered = true
			na := make([]byte, 32)
			na[0] = 136
			na[4] = 0x60 // solicited, override
			ll := podLL.As16()
			copy(na[8:], ll[:])
			na[24], na[25] = 2, 1
			copy(na[26:], podMAC[:])
			n.pod.Inject(porttest.Ether(gwMAC, podMAC, vswitch.EtherTypeIP6, ipv6Packet(podLL, gwLL, 255, na)))
		}
		return isRA(e) && ip6Dst(e.Payload()) == podLL
	})
	if e.Dst() != podMAC || e.Src() != gwMAC {
		t.Errorf("advertisement ether %s -> %s, want %s -> %s", e.Src(), e.Dst(), gwMAC, podMAC)
	}
	checkRA(t, e, podLL)

	// The forged solicitation came first; its answer would be due within
	// raMaxDelay of it.
	time.Sleep(raMaxDelay + 100*time.Millisecond)
	for _, b := range n.pod.Written() {
		e := vswitch.Ether(b)
		if isRA(e) && ip6Dst(e.Payload()) == forged {
			t.Errorf("advertisement answered a solicitation with hop limit 64")
		}
		if isICMP6(e, 135) && len(e.Payload()) >= 64 && netip.AddrFrom16([16]byte(e.Payload()[48:64])) == forged {
			t.Errorf("gateway resolves %s, the source of a solicitation with hop limit 64", forged)
		}
	}
}

// TestRouterSolicitationUnspecified checks that a solicitation from the
// unspecified address is answered by multicast, but no sooner than
// MIN_DELAY_BETWEEN_RAS after the previous multicast advertisement
// (RFC 4861 section 6.2.6), and long before the next unsolicited one.
func TestRouterSolicitationUnspecified(t *testing.T) {
	start := time.Now()
	n := newTestNet(t, Options{})
	n.await(t, "unsolicited advertisement", isRA)
	n.pod.Inject(porttest.Ether(allRoutersMAC, podMAC, vswitch.EtherTypeIP6, ipv6Packet(netip.IPv6Unspecified(), allRouters, 255, routerSolicit(vswitch.MAC{}))))

	deadline := time.Now().Add(10 * time.Second)
	for {
		var ras []vswitch.Ether
		for _, b := range n.pod.Written() {
			if e := vswitch.Ether(b); isRA(e) {
				ras = append(ras, e)
			}
		}
		if len(ras) >= 2 {
			if since := time.Since(start); since < raMinDelayBetween {
				t.Errorf("second multicast advertisement %v after the gateway started, want at least %v", since, raMinDelayBetween)
			}
			if ras[1].Dst() != allNodesMAC {
				t.Errorf("answer to an unspecified source went to %s, want %s", ras[1].Dst(), allNodesMAC)
			}
			checkRA(t, ras[1], allNodes)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no answer to a solicitation from :: within 10s; the pod got %d advertisements", len(ras))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestNoRouterAdvertisementWithoutIPv6 checks that a gateway with only an
// IPv4 address neither advertises nor answers solicitations.
func TestNoRouterAdvertisementWithoutIPv6(t *testing.T) {
	n := newTestNet(t, Options{Addrs: []netip.Prefix{netGW4}})
	podLL := eui64LinkLocal(podMAC)
	n.pod.Inject(porttest.Ether(allRoutersMAC, podMAC, vswitch.EtherTypeIP6, ipv6Packet(podLL, allRouters, 255, routerSolicit(podMAC))))
	// The ARP reply shows the gateway is on the switch and has taken the
	// solicitation before it; then give a solicited answer its full delay.
	n.pod.Inject(porttest.ARPRequest(podMAC, pod4, netGW4.Addr()))
	n.await(t, "ARP reply", func(e vswitch.Ether) bool { return e.Type() == vswitch.EtherTypeARP })
	time.Sleep(raMaxDelay + 500*time.Millisecond)
	for _, b := range n.pod.Written() {
		if e := vswitch.Ether(b); e.Type() == vswitch.EtherTypeIP6 {
			t.Errorf("IPv4-only gateway sent an IPv6 frame: % x", b)
		}
	}
}

func TestIPv6Prefixes(t *testing.T) {
	got := ipv6Prefixes([]netip.Prefix{
		netip.MustParsePrefix("10.244.0.1/24"),
		netip.MustParsePrefix("fd00:244::1/64"),
		netip.MustParsePrefix("fd00:244::2/64"),
		netip.MustParsePrefix("2001:db8:1:2::1/56"),
	})
	want := []netip.Prefix{netip.MustParsePrefix("fd00:244::/64"), netip.MustParsePrefix("2001:db8:1::/56")}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("ipv6Prefixes = %v, want %v", got, want)
	}
}

// TestRouterAdvertSeveralPrefixes checks the message layout with two
// prefixes: one prefix information option each, in order.
func TestRouterAdvertSeveralPrefixes(t *testing.T) {
	prefixes := []netip.Prefix{netip.MustParsePrefix("fd00:244::/64"), netip.MustParsePrefix("2001:db8:1::/56")}
	ra := routerAdvert(gwMAC, 9000, prefixes)
	if len(ra) != 16+8+8+2*32 {
		t.Fatalf("advertisement is %d bytes, want %d", len(ra), 16+8+8+2*32)
	}
	opts := ndpOptions(t, ra[16:])
	if mtu := binary.BigEndian.Uint32(opts[5][0][4:]); mtu != 9000 {
		t.Errorf("mtu option = %d, want 9000", mtu)
	}
	for i, pi := range opts[3] {
		if got := netip.PrefixFrom(netip.AddrFrom16([16]byte(pi[16:32])), int(pi[2])); got != prefixes[i] {
			t.Errorf("prefix option %d = %s, want %s", i, got, prefixes[i])
		}
		if pi[3] != 0x80 {
			t.Errorf("prefix option %d flags = %#x, want L only", i, pi[3])
		}
	}
}

func TestValidSolicitation(t *testing.T) {
	slla := []byte{1, 1, 2, 0, 0, 0, 0, 0x10}
	rs := func(opts ...byte) []byte { return append([]byte{133, 0, 0, 0, 0, 0, 0, 0}, opts...) }
	tests := []struct {
		name        string
		msg         []byte
		hopLimit    uint8
		unspecified bool
		want        bool
	}{
		{"plain", rs(), 255, false, true},
		{"with slla", rs(slla...), 255, false, true},
		{"unspecified without slla", rs(), 255, true, true},
		{"unspecified with slla", rs(slla...), 255, true, false},
		{"hop limit 64", rs(slla...), 64, false, false},
		{"code 1", []byte{133, 1, 0, 0, 0, 0, 0, 0}, 255, false, false},
		{"short", []byte{133, 0, 0, 0}, 255, false, false},
		{"zero-length option", rs(1, 0, 0, 0, 0, 0, 0, 0), 255, false, false},
		{"option past the end", rs(1, 2, 0, 0, 0, 0, 0, 0), 255, false, false},
		{"option cut short", rs(1), 255, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := validSolicitation(tt.msg, tt.hopLimit, tt.unspecified); got != tt.want {
				t.Errorf("validSolicitation(% x, %d, %v) = %v, want %v", tt.msg, tt.hopLimit, tt.unspecified, got, tt.want)
			}
		})
	}
}

// TestRASchedule checks the intervals at the ends of their random ranges.
func TestRASchedule(t *testing.T) {
	lowest := func(time.Duration) time.Duration { return 0 }
	highest := func(n time.Duration) time.Duration { return n - 1 }
	intervals := []struct {
		sent    int
		randN   func(time.Duration) time.Duration
		want    time.Duration
		comment string
	}{
		{1, lowest, raMaxInitialInterval, "initial, capped"},
		{2, highest, raMaxInitialInterval, "initial, capped"},
		{3, lowest, raMinInterval, "MinRtrAdvInterval"},
		{3, highest, raMaxInterval, "MaxRtrAdvInterval"},
	}
	for _, tt := range intervals {
		if got := unsolicitedInterval(tt.sent, tt.randN); got != tt.want {
			t.Errorf("unsolicitedInterval(%d) = %v, want %v (%s)", tt.sent, got, tt.want, tt.comment)
		}
	}

	t0 := time.Unix(1000, 0)
	delay := 200 * time.Millisecond
	answers := []struct {
		name      string
		now, last time.Time
		want      time.Time
	}{
		{"none sent yet", t0, time.Time{}, t0.Add(delay)},
		{"last long ago", t0, t0.Add(-time.Minute), t0.Add(delay)},
		{"last 1s ago", t0, t0.Add(-time.Second), t0.Add(-time.Second + raMinDelayBetween + delay)},
	}
	for _, tt := range answers {
		if got := multicastAnswerAt(tt.now, tt.last, delay); !got.Equal(tt.want) {
			t.Errorf("multicastAnswerAt(%s) = %v, want %v", tt.name, got, tt.want)
		}
	}
}
