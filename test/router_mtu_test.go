package test

import (
	"math/rand/v2"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"tapswitch/internal/testutil"
	"tapswitch/netstack"
	vswitch "tapswitch/switch"
	"tapswitch/tap"
)

// TestRouterPathMTU checks the switch's own router errors against real
// kernels: a pod's TAP (MTU 1500) and a far host's TAP (MTU 1300) on an
// in-process switch whose router routes between their subnets, with the
// gVisor gateway answering ARP and ND for its addresses. The far host
// advertises an MSS as large as the pod's, so the pod sends 1500-byte
// segments (as TSO super-frames) with DF, which the router refuses with
// fragmentation needed / packet too big, MTU 1300; the pod's kernel must
// lower its path MTU and finish a 4 MiB transfer.
func TestRouterPathMTU(t *testing.T) {
	testutil.RequireRoot(t)
	podNS, farNS := testutil.NewNetNS(t), testutil.NewNetNS(t)
	var (
		gw4, far4 = netip.MustParsePrefix("10.250.7.1/24"), netip.MustParsePrefix("198.18.9.1/24")
		// The far host's IPv6 gateway address is a /128 of the gateway's,
		// its subnet a route: the gateway's router advertisements, which
		// name its subnets on-link, must not send the pod to the far host
		// directly, past the router.
		gw6, far6 = netip.MustParsePrefix("fd00:250:7::1/64"), netip.MustParsePrefix("fd00:198:9::1/128")
		pod       = []netip.Prefix{netip.MustParsePrefix("10.250.7.2/24"), netip.MustParsePrefix("fd00:250:7::2/64")}
		farHost   = []netip.Prefix{netip.MustParsePrefix("198.18.9.2/24"), netip.MustParsePrefix("fd00:198:9::2/64")}
		farMAC    = vswitch.MAC{0x02, 0xee, 0, 0, 0, 3}
		gwMAC     = vswitch.MAC{0x02, 0xee, 0, 0, 0, 1}
	)
	// Closed before the namespaces go (cleanups run last first).
	sw := vswitch.New(vswitch.Options{})
	t.Cleanup(func() { sw.Close() })
	gw, err := netstack.New(netstack.Options{MAC: gwMAC, Routed: true, Addrs: []netip.Prefix{gw4, far4, gw6, far6}})
	if err != nil {
		t.Fatal(err)
	}
	gwID, err := sw.AddPort(gw)
	if err != nil {
		gw.Close()
		t.Fatal(err)
	}
	attach := func(ns string, mac vswitch.MAC, mtu int, addrs []netip.Prefix, gws ...netip.Addr) vswitch.PortID {
		t.Helper()
		p, err := tap.Create(tap.Config{NetNS: ns, MAC: mac, MTU: mtu, Addrs: addrs, Gateways: gws, Offloads: true})
		if err != nil {
			t.Fatal(err)
		}
		id, err := sw.AddPort(p)
		if err != nil {
			p.Close()
			t.Fatal(err)
		}
		for _, a := range addrs {
			if err := sw.Bind(vswitch.Binding{IP: a.Addr(), MAC: mac, Port: id}); err != nil {
				t.Fatal(err)
			}
		}
		return id
	}
	attach(podNS, vswitch.MAC{0x02, 0xee, 0, 0, 0, 2}, 1500, pod, gw4.Addr(), gw6.Addr())
	// The far host takes no router advertisement: they would put the
	// pod's subnet on its link, where no MSS is advertised below.
	far := filepath.Base(farNS)
	if out, err := exec.Command("ip", "netns", "exec", far, "sysctl", "-qw", "net.ipv6.conf.default.accept_ra=0").CombinedOutput(); err != nil {
		t.Fatalf("accept_ra off in %s: %v: %s", far, err, out)
	}
	farID := attach(farNS, farMAC, 1300, farHost, far4.Addr(), far6.Addr())
	for _, a := range []netip.Prefix{gw4, far4, gw6, far6} {
		if err := sw.Bind(vswitch.Binding{IP: a.Addr(), MAC: gwMAC, Port: gwID}); err != nil {
			t.Fatal(err)
		}
	}
	err = sw.SetRouter(vswitch.RouterConfig{
		MAC: gwMAC, Port: gwID, Addrs: []netip.Prefix{gw4, far4, gw6, far6},
		Routes: []vswitch.Route{{Prefix: farHost[1].Masked(), Port: farID, NextHop: farMAC}},
	})
	if err != nil {
		t.Fatal(err)
	}
	// The far host tells the pod an MSS for a 1500-byte link, as a host
	// behind a smaller link of the path does.
	ipCmd(t, "-n", far, "route", "add", pod[0].Masked().String(), "via", far4.Addr().String(), "advmss", "1460")
	ipCmd(t, "-n", far, "-6", "route", "add", pod[1].Masked().String(), "via", far6.Addr().String(), "advmss", "1440")
	ln := nsListen(t, farNS, "tcp", ":0")
	serveSum(t, ln)
	msg := make([]byte, 4<<20)
	rand.NewChaCha8([32]byte{7}).Read(msg)

	for i, dstAddr := range []netip.Addr{farHost[0].Addr(), farHost[1].Addr()} {
		dst := netip.AddrPortFrom(dstAddr, portOf(ln.Addr()))
		t.Run(dstAddr.String(), func(t *testing.T) {
			before := sw.RouterStats().ICMPSent["frag_needed"]
			c := mustDial(t, nsDialer(podNS), dst)
			defer c.Close()
			c.SetDeadline(time.Now().Add(time.Minute))
			sendSummed(t, c, msg)
			if m := socketMTU(t, c.(*net.TCPConn), i == 1); m != 1300 {
				t.Errorf("after the transfer the pod's path MTU to %s is %d, want 1300 from the router's error", dstAddr, m)
			}
			if n := sw.RouterStats().ICMPSent["frag_needed"]; n == before {
				t.Errorf("the router sent no fragmentation needed / packet too big (%d before and after)", n)
			}
		})
	}
}
