package netstack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/refs"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"tapswitch/internal/testutil"
	vswitch "tapswitch/switch"
)

// gwNet is a switch with the gateway and pods that are gVisor stacks of
// their own: real TCP and UDP clients and servers without root. A test's
// "outside world" is loopback, reached through gwNet's Dial, which maps
// the made-up egress destinations to loopback listeners.
type gwNet struct {
	sw *vswitch.Switch
	gw *Port
}

// Addresses of gwNet: the gateway, and pod n at .n / ::n.
var (
	netGW4 = netip.MustParsePrefix("10.244.0.1/24")
	netGW6 = netip.MustParsePrefix("fd00:244::1/64")
)

// newGWNet builds the switch and a gateway with opts (MAC and Addrs are
// filled in when zero). The ports in first join the switch before the
// gateway, so they receive every frame it sends, even the router
// advertisement it sends as it starts. Its cleanup closes everything and
// checks for leaked references and goroutines.
func newGWNet(t *testing.T, opts Options, first ...vswitch.Port) *gwNet {
	t.Helper()
	testutil.CheckGoroutines(t)
	if opts.MAC.Zero() {
		opts.MAC = gwMAC
	}
	if opts.Addrs == nil {
		opts.Addrs = []netip.Prefix{netGW4, netGW6}
	}
	gw, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	sw := vswitch.New(vswitch.Options{})
	t.Cleanup(func() {
		if err := sw.Close(); err != nil {
			t.Errorf("switch Close: %v", err)
		}
		refs.DoRepeatedLeakCheck()
	})
	for _, p := range first {
		if _, err := sw.AddPort(p); err != nil {
			t.Fatalf("AddPort(%s): %v", p.Name(), err)
		}
	}
	if _, err := sw.AddPort(gw); err != nil {
		t.Fatalf("AddPort(gateway): %v", err)
	}
	return &gwNet{sw: sw, gw: gw}
}

// addPod attaches pod id (10.244.0.id/24 and fd00:244::id/64), a Port
// of this package used as a plain host whose default routes go through the
// gateway. The switch closes it.
func (n *gwNet) addPod(t *testing.T, id byte) *Port {
	t.Helper()
	p, err := New(Options{
		Name: fmt.Sprintf("pod%d", id),
		MAC:  vswitch.MAC{0x02, 0, 0, 0, 0x10, id},
		// A pod never dials out from the host: its stack only talks
		// through the switch.
		Dial: redirectDial(nil),
		Addrs: []netip.Prefix{
			netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, 0, id}), 24),
			netip.PrefixFrom(netip.AddrFrom16([16]byte{0: 0xfd, 2: 0x02, 3: 0x44, 15: id}), 64),
		},
	})
	if err != nil {
		t.Fatalf("New(pod %d): %v", id, err)
	}
	p.stack.SetRouteTable([]tcpip.Route{
		{Destination: subnet(netGW4), NIC: nicID},
		{Destination: subnet(netGW6), NIC: nicID},
		{Destination: header.IPv4EmptySubnet, Gateway: tcpipAddress(netGW4.Addr()), NIC: nicID},
		{Destination: header.IPv6EmptySubnet, Gateway: tcpipAddress(netGW6.Addr()), NIC: nicID},
	})
	plainHost(t, p)
	if _, err := n.sw.AddPort(p); err != nil {
		p.Close()
		t.Fatalf("AddPort(pod %d): %v", id, err)
	}
	return p
}

// plainHost makes a Port used as a pod a plain host: not promiscuous, no
// spoofing. A Port spoofs for the gateway's sake, and a spoofing gVisor
// NIC answers ARP requests for any address (nic.CheckLocalAddress), so
// with two such stacks on the switch besides the gateway, one might
// claim the gateway's address for the other's traffic.
func plainHost(t *testing.T, p *Port) {
	t.Helper()
	if err := p.stack.SetSpoofing(nicID, false); err != nil {
		t.Fatalf("SetSpoofing: %v", err)
	}
	if err := p.stack.SetPromiscuousMode(nicID, false); err != nil {
		t.Fatalf("SetPromiscuousMode: %v", err)
	}
}

func subnet(p netip.Prefix) tcpip.Subnet {
	return tcpip.AddressWithPrefix{Address: tcpipAddress(p.Addr()), PrefixLen: p.Bits()}.Subnet()
}

// podDialTCP connects from pod p's stack to dst, failing the test on error.
func podDialTCP(t *testing.T, p *Port, dst netip.AddrPort) *gonet.TCPConn {
	t.Helper()
	c, err := tryPodDialTCP(p, dst, 5*time.Second)
	if err != nil {
		t.Fatalf("pod dial tcp %s: %v", dst, err)
	}
	return c
}

// tryPodDialTCP connects from pod p's stack to dst within timeout.
func tryPodDialTCP(p *Port, dst netip.AddrPort, timeout time.Duration) (*gonet.TCPConn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	full, proto := fullAddress(dst.Addr(), dst.Port()), netProto(dst.Addr())
	return gonet.DialContextTCP(ctx, p.stack, full, proto)
}

// podDialUDP returns a UDP socket of pod p connected to dst.
func podDialUDP(t *testing.T, p *Port, dst netip.AddrPort) *gonet.UDPConn {
	t.Helper()
	full, proto := fullAddress(dst.Addr(), dst.Port()), netProto(dst.Addr())
	c, err := gonet.DialUDP(p.stack, nil, &full, proto)
	if err != nil {
		t.Fatalf("pod dial udp %s: %v", dst, err)
	}
	return c
}

// redirectDial returns a Dial for Options that sends connections for the
// made-up outside addresses in to to their loopback stand-ins, and refuses
// any other address without touching the network.
func redirectDial(to map[netip.AddrPort]netip.AddrPort) func(context.Context, string, string) (net.Conn, error) {
	return func(ctx context.Context, network, address string) (net.Conn, error) {
		ap, err := netip.ParseAddrPort(address)
		if err != nil {
			return nil, err
		}
		real, ok := to[ap]
		if !ok {
			return nil, &net.OpError{Op: "dial", Net: network, Err: errUnreachable}
		}
		var d net.Dialer
		return d.DialContext(ctx, network[:3], real.String())
	}
}

// errUnreachable is what redirectDial returns for an address it does not map.
var errUnreachable = errors.New("test network: no route to host")
