package test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"tapswitch/daemon"
	"tapswitch/daemon/api"
	"tapswitch/internal/netnsutil"
	"tapswitch/internal/pinger"
	"tapswitch/internal/testutil"
)

// The gateway's end-to-end tests. Each daemon runs in a namespace that
// plays the node; pods reach the outside through the gateway's egress,
// which re-originates their flows from the node's sockets, and the outside
// is a world namespace the test builds (newWorld). Each test has its own
// pod CIDRs, so logs and captures from different tests never look alike.

// TestGatewayPing pings the gateway's IPv4 and IPv6 addresses from a pod
// and, through the host port, from the node.
func TestGatewayPing(t *testing.T) {
	testutil.RequireRoot(t)
	d := startDaemon(t, "", "--pod-cidr", "10.251.40.0/24", "--pod-cidr6", "fd00:4a4:40::/64")
	p := addPod(t, d, "gw-ping")
	gw4, gw6 := netip.MustParseAddr("10.251.40.1"), netip.MustParseAddr("fd00:4a4:40::1")
	if !slices.Equal(p.Gateways, []netip.Addr{gw4, gw6}) {
		t.Fatalf("pod gateways = %v, want [%s %s]", p.Gateways, gw4, gw6)
	}
	if len(p.DNS) != 0 {
		t.Errorf("pod dns = %v with --dns none, want none", p.DNS)
	}
	mustPing(t, p, gw4)
	mustPing(t, p, gw6)
	// The node reaches the gateway too, through the host port.
	for _, gw := range []netip.Addr{gw4, gw6} {
		res, err := pinger.Ping(d.node, gw, 3, 2*time.Second)
		if err != nil || res.Received == 0 {
			t.Errorf("ping from the node to the gateway %s: %+v, %v; want replies", gw, res, err)
		}
	}
}

// TestGatewayRouterAdvertisement checks that the pod's kernel learns the
// gateway as its IPv6 router from router advertisements (RFC 4861 section
// 6.3.4): a default route of protocol "ra" via the gateway's link-local
// address, whose neighbour entry has the router flag and the gateway's
// MAC. The kernel sends router solicitations when the TAP comes up and
// takes advertisements when accept_ra is on and forwarding off, the
// defaults of a fresh namespace, set here explicitly before the TAP exists
// so that it inherits them.
func TestGatewayRouterAdvertisement(t *testing.T) {
	testutil.RequireRoot(t)
	d := startDaemon(t, "", "--pod-cidr", "10.251.47.0/24", "--pod-cidr6", "fd00:4a4:47::/64")
	ns := testutil.NewNetNS(t)
	for _, kv := range []string{"net.ipv6.conf.default.forwarding=0", "net.ipv6.conf.default.accept_ra=1", "net.ipv6.conf.default.accept_ra_defrtr=1"} {
		if out, err := exec.Command("ip", "netns", "exec", filepath.Base(ns), "sysctl", "-qw", kv).CombinedOutput(); err != nil {
			t.Fatalf("sysctl %s in %s: %v: %s", kv, ns, err, out)
		}
	}
	got, err := d.client.AddPod(context.Background(), api.PodRequest{ID: "gw-ra", NetNS: ns})
	if err != nil {
		t.Fatal(err)
	}
	p := pod{Pod: got, ns: ns}
	gw6 := netip.MustParseAddr("fd00:4a4:47::1")
	mustPing(t, p, gw6) // which leaves the gateway's MAC in the pod's neighbour table

	h := nsNetlink(t, p.ns)
	link, err := h.LinkByName(p.IfName)
	if err != nil {
		t.Fatal(err)
	}
	gwMAC := neighbourMAC(t, h, link, gw6)

	var router netip.Addr
	deadline := time.Now().Add(15 * time.Second)
	for !router.IsValid() {
		routes, err := h.RouteListFiltered(netlink.FAMILY_V6,
			&netlink.Route{LinkIndex: link.Attrs().Index, Protocol: unix.RTPROT_RA},
			netlink.RT_FILTER_OIF|netlink.RT_FILTER_PROTOCOL)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range routes {
			if ones, _ := dstMask(r); ones == 0 && r.Gw != nil {
				router, _ = netip.AddrFromSlice(r.Gw)
			}
		}
		if !router.IsValid() && time.Now().After(deadline) {
			out, _ := exec.Command("ip", "-n", filepath.Base(ns), "-6", "route").CombinedOutput()
			t.Fatalf("no default route learned from a router advertisement within 15s; ip -6 route:\n%s", out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("the pod learned the default router %s from an advertisement", router)
	if !router.IsLinkLocalUnicast() {
		t.Errorf("default router from RA = %s, want the gateway's link-local address (RFC 4861 section 6.1.2)", router)
	}
	neighs, err := h.NeighList(link.Attrs().Index, netlink.FAMILY_V6)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, n := range neighs {
		if a, _ := netip.AddrFromSlice(n.IP); a != router {
			continue
		}
		found = true
		if n.Flags&netlink.NTF_ROUTER == 0 {
			t.Errorf("neighbour %s has flags %#x, want the router flag", router, n.Flags)
		}
		if n.HardwareAddr.String() != gwMAC.String() {
			t.Errorf("router %s is at %s, want the gateway's MAC %s", router, n.HardwareAddr, gwMAC)
		}
	}
	if !found {
		t.Errorf("no neighbour entry for the router %s: %v", router, neighs)
	}
	// The same advertisements reached the node through tsw0, which must
	// not take them: a default route through the gateway would loop the
	// node's own traffic through egress.
	if out, err := exec.Command("ip", "-n", filepath.Base(d.node), "-6", "route", "show", "proto", "ra").CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) != 0 {
		t.Errorf("the node learned routes from the gateway's advertisements (%v):\n%s", err, out)
	}
	// The addresses come from the daemon: the advertised prefix must not
	// let the pod's kernel configure one of its own (SLAAC, RFC 4862
	// section 5.5.3).
	addrs, err := h.AddrList(link, netlink.FAMILY_V6)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		ip, _ := netip.AddrFromSlice(a.IP)
		if !ip.IsLinkLocalUnicast() && ip != p.IPs[1].Addr() {
			t.Errorf("the pod has the address %s besides its own %s (SLAAC from the advertisement?)", ip, p.IPs[1])
		}
	}
}

// nsNetlink returns a netlink handle inside the namespace at ns, closed
// when the test ends.
func nsNetlink(t *testing.T, ns string) *netlink.Handle {
	t.Helper()
	nsh, err := netnsutil.Open(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

// neighbourMAC returns the link-layer address of a's neighbour entry.
func neighbourMAC(t *testing.T, h *netlink.Handle, link netlink.Link, a netip.Addr) net.HardwareAddr {
	t.Helper()
	fam := netlink.FAMILY_V4
	if a.Is6() {
		fam = netlink.FAMILY_V6
	}
	neighs, err := h.NeighList(link.Attrs().Index, fam)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range neighs {
		if b, _ := netip.AddrFromSlice(n.IP); b == a && len(n.HardwareAddr) == 6 {
			return n.HardwareAddr
		}
	}
	t.Fatalf("no neighbour entry for %s: %v", a, neighs)
	return nil
}

// dstMask returns the prefix length of a route's destination (0 for a
// default route, which netlink reports with no destination at all).
func dstMask(r netlink.Route) (int, int) {
	if r.Dst == nil {
		return 0, 0
	}
	return r.Dst.Mask.Size()
}

// dnsTestName and the other made-up names of the fake upstream's zone.
const (
	dnsTestName = "gw-dns.tapswitch.test."
	dnsBigName  = "big.tapswitch.test."
	dnsNXName   = "nothing-here.tapswitch.test."
)

// TestGatewayDNS resolves names from a pod through the gateway, over UDP
// and TCP to each of its addresses, against a fake upstream on the node's
// loopback. The big TXT record does not fit a UDP answer: the resolver gets
// a truncated answer and asks again over TCP, and the gateway must get the
// whole answer from the upstream for it (over TCP, or over UDP with a big
// enough EDNS0 payload size; the fake truncates to what the query allows).
func TestGatewayDNS(t *testing.T) {
	testutil.RequireRoot(t)
	node := testutil.NewNetNS(t)
	ipCmd(t, "-n", filepath.Base(node), "link", "set", "lo", "up")
	want4, want6 := netip.MustParseAddr("198.18.7.7"), netip.MustParseAddr("2001:db8::7:7")
	var big []string
	for i := range 12 {
		big = append(big, strings.Repeat(string(rune('a'+i)), 250))
	}
	up := startFakeDNS(t, node, map[string]map[uint16][][]byte{
		dnsTestName: {dnsTypeA: {want4.AsSlice()}, dnsTypeAAAA: {want6.AsSlice()}},
		dnsBigName:  {dnsTypeTXT: {txtRData(big...)}},
	})
	d := startDaemonIn(t, node, "", "--pod-cidr", "10.251.41.0/24", "--pod-cidr6", "fd00:4a4:41::/64", "--dns", up.addr.String())
	p := addPod(t, d, "gw-dns")
	if !slices.Equal(p.DNS, p.Gateways) || len(p.DNS) != 2 {
		t.Fatalf("pod dns = %v, want the gateways %v", p.DNS, p.Gateways)
	}

	for _, server := range p.DNS {
		for _, transport := range []string{"udp", "tcp"} {
			t.Run(fmt.Sprintf("%s %s", transport, server), func(t *testing.T) {
				r := podResolver(p, netip.AddrPortFrom(server, 53), transport)
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				got, err := r.LookupNetIP(ctx, "ip", dnsTestName)
				if err != nil {
					t.Fatalf("LookupNetIP(%s) = %v", dnsTestName, err)
				}
				slices.SortFunc(got, netip.Addr.Compare)
				if !slices.Equal(got, []netip.Addr{want4, want6}) {
					t.Errorf("LookupNetIP(%s) = %v, want [%s %s]", dnsTestName, got, want4, want6)
				}
				_, err = r.LookupNetIP(ctx, "ip4", dnsNXName)
				var dnsErr *net.DNSError
				if !errors.As(err, &dnsErr) || !dnsErr.IsNotFound {
					t.Errorf("LookupNetIP(%s) = %v, want not found (NXDOMAIN)", dnsNXName, err)
				}
			})
		}
	}
	t.Run("truncated answer retried over tcp", func(t *testing.T) {
		r := podResolver(p, netip.AddrPortFrom(p.DNS[0], 53), "")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		txt, err := r.LookupTXT(ctx, dnsBigName)
		if err != nil {
			t.Fatalf("LookupTXT(%s) = %v", dnsBigName, err)
		}
		if got, want := strings.Join(txt, ""), strings.Join(big, ""); got != want {
			t.Errorf("LookupTXT(%s) = %d bytes, want %d bytes %q...", dnsBigName, len(got), len(want), want[:8])
		}
	})
	t.Logf("the upstream answered %d queries over UDP, %d over TCP", up.udp.Load(), up.tcp.Load())
}

// podResolver returns a pure-Go resolver that sends every query from the
// pod's namespace to server: over transport ("udp" or "tcp"), or, when
// transport is empty, over whatever the resolver asks for (UDP, then TCP
// for a truncated answer). The resolver frames messages for a stream
// when the connection is not a net.PacketConn.
func podResolver(p pod, server netip.AddrPort, transport string) *net.Resolver {
	dial := nsDialer(p.ns)
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			if transport != "" {
				network = transport
			}
			return dial(ctx, network, server.String())
		},
	}
}

// TestNodeToPodTCP connects from the node to a server in the pod, and from
// the pod to a server on the node, through the host port tsw0 and without
// NAT: the pod's server sees the node's tsw0 address (the last usable one
// of each pod CIDR) as the client, and the node's server sees the pod's.
func TestNodeToPodTCP(t *testing.T) {
	testutil.RequireRoot(t)
	d := startDaemon(t, "", "--pod-cidr", "10.251.46.0/24", "--pod-cidr6", "fd00:4a4:46::/64")
	p := addPod(t, d, "node-pod")
	host4 := netip.MustParsePrefix("10.251.46.254/24")
	host6 := netip.MustParsePrefix("fd00:4a4:46:0:ffff:ffff:ffff:ffff/64")
	checkHostPortAddrs(t, d, host4, host6)

	var podPeers, nodePeers peerLog
	inPod := nsListen(t, p.ns, "tcp", ":0")
	serveTCPEcho(t, inPod, &podPeers)
	onNode := nsListen(t, d.node, "tcp", ":0")
	serveTCPEcho(t, onNode, &nodePeers)
	msg := make([]byte, 4<<20)
	rand.NewChaCha8([32]byte{46}).Read(msg)

	for i, host := range []netip.Prefix{host4, host6} {
		podAddr := p.IPs[i].Addr()
		t.Run("node to pod "+podAddr.String(), func(t *testing.T) {
			before := len(podPeers.all())
			c := mustDial(t, d.nodeDial, netip.AddrPortFrom(podAddr, portOf(inPod.Addr())))
			echoStream(t, c, msg)
			seen := podPeers.all()[before:]
			if len(seen) != 1 || seen[0].Addr() != host.Addr() {
				t.Errorf("the pod's server saw %v, want the node's tsw0 address %s", seen, host.Addr())
			}
		})
		t.Run("pod to node "+host.Addr().String(), func(t *testing.T) {
			before := len(nodePeers.all())
			c := mustDial(t, nsDialer(p.ns), netip.AddrPortFrom(host.Addr(), portOf(onNode.Addr())))
			echoStream(t, c, msg)
			seen := nodePeers.all()[before:]
			if len(seen) != 1 || seen[0].Addr() != podAddr {
				t.Errorf("the node's server saw %v, want the pod's address %s", seen, podAddr)
			}
		})
	}
}

// echoStream writes msg to an echo server on c while reading it back, and
// checks the bytes.
func echoStream(t *testing.T, c net.Conn, msg []byte) {
	t.Helper()
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(msg)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		werr <- err
	}()
	got, err := io.ReadAll(c)
	if err := <-werr; err != nil {
		t.Fatalf("write: %v", err)
	}
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo: %d bytes, %v; want the %d sent (first difference at %d)", len(got), err, len(msg), firstDiff(got, msg))
	}
}

// checkHostPortAddrs fails t unless the node's tsw0 has exactly want.
func checkHostPortAddrs(t *testing.T, d *daemonProc, want ...netip.Prefix) {
	t.Helper()
	h := nsNetlink(t, d.node)
	link, err := h.LinkByName(daemon.DefaultHostPort)
	if err != nil {
		t.Fatalf("host port %s on the node: %v", daemon.DefaultHostPort, err)
	}
	addrs, err := h.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	var got []netip.Prefix
	for _, a := range addrs {
		ip, _ := netip.AddrFromSlice(a.IP)
		ones, _ := a.Mask.Size()
		if pfx := netip.PrefixFrom(ip.Unmap(), ones); !pfx.Addr().IsLinkLocalUnicast() {
			got = append(got, pfx)
		}
	}
	slices.SortFunc(got, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	if !slices.Equal(got, want) {
		t.Errorf("%s addresses = %v, want %v", daemon.DefaultHostPort, got, want)
	}
}

// TestHostPortFollowsRestart restarts the daemon with another pod CIDR and
// MTU: the host port left by the first run must not keep its old address
// (the node would lose its route to the pods) or stop the daemon; it is
// re-created to match, and the node reaches the new pods.
func TestHostPortFollowsRestart(t *testing.T) {
	testutil.RequireRoot(t)
	d := startDaemon(t, "", "--pod-cidr", "10.251.48.0/24")
	checkHostPortAddrs(t, d, netip.MustParsePrefix("10.251.48.254/24"))
	d.stop(t)

	d2 := startDaemonIn(t, d.node, "", "--pod-cidr", "10.251.49.0/24", "--pod-cidr6", "fd00:4a4:49::/64", "--mtu", "9000")
	checkHostPortAddrs(t, d2, netip.MustParsePrefix("10.251.49.254/24"), netip.MustParsePrefix("fd00:4a4:49:0:ffff:ffff:ffff:ffff/64"))
	out, err := exec.Command("ip", "-n", filepath.Base(d.node), "-o", "link", "show", daemon.DefaultHostPort).CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("mtu 9000")) {
		t.Errorf("host port after the restart with --mtu 9000 (%v): %s", err, out)
	}
	p := addPod(t, d2, "hp-a")
	ln := nsListen(t, p.ns, "tcp4", netip.AddrPortFrom(p.addr(), 0).String())
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Close()
		}
	}()
	c, err := d2.nodeDial(context.Background(), "tcp4", ln.Addr().String())
	if err != nil {
		t.Fatalf("node → pod after the restart: %v", err)
	}
	c.Close()
}
