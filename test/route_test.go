package test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"tapswitch/daemon"
	"tapswitch/internal/netnsutil"
	"tapswitch/internal/testutil"
	"tapswitch/tap"
)

// Route mode, the default (--egress route): the switch routes the pods'
// packets at L3, TTL decremented and source kept, to the node's kernel
// through tsw0. The daemon turns forwarding on and keeps an nftables table
// of its own in the node's namespace, inet tapswitch: masquerade from the
// pod CIDRs to outside --cluster-cidr, and the port forwards as DNAT rules.
// Beyond the pod network everything is the node's: its routes, its
// conntrack, kube-proxy's rules. Each test has its own pod CIDRs,
// 10.251.N.0/24 and fd00:4a4:N::/64 with N from 70.

// routeTable is the daemon's nftables table, "table inet tapswitch".
const routeTable = "tapswitch"

// routeDaemon starts a daemon in route mode (no --egress: the default) with
// the pod CIDRs 10.251.N.0/24 and fd00:4a4:N::/64, and a world next to its
// node (the outside, or another host). When the test fails, the node's
// ruleset, routes, forwarding switches and conntrack counters, and the
// daemon's stats, are logged before the world and the daemon go.
func routeDaemon(t *testing.T, n int, extra ...string) (*daemonProc, *world) {
	t.Helper()
	d := startDaemon(t, "", routeFlags(n, extra...)...)
	w := newWorld(t, d.node)
	t.Cleanup(func() {
		if t.Failed() {
			logNode(t, d)
		}
	})
	return d, w
}

// routeFlags are routeDaemon's flags, for a restart with the same ones.
func routeFlags(n int, extra ...string) []string {
	return append([]string{"--pod-cidr", fmt.Sprintf("10.251.%d.0/24", n), "--pod-cidr6", fmt.Sprintf("fd00:4a4:%d::/64", n)}, extra...)
}

// logNode logs what a failing route test needs to tell the daemon's fault
// from the test's.
func logNode(t *testing.T, d *daemonProc) {
	node := filepath.Base(d.node)
	for _, cmd := range [][]string{
		{"ip", "netns", "exec", node, "nft", "list", "ruleset"},
		{"ip", "-n", node, "addr"},
		{"ip", "-n", node, "route"},
		{"ip", "-n", node, "-6", "route"},
		{"ip", "netns", "exec", node, "sysctl", "net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding",
			"net.ipv4.conf." + daemon.DefaultHostPort + ".route_localnet", "net.ipv4.conf." + daemon.DefaultHostPort + ".send_redirects"},
		{filepath.Join(binDir, "tapswitchctl"), "stats", "--socket", d.socket},
	} {
		out, err := exec.Command(cmd[0], cmd[1:]...).CombinedOutput()
		t.Logf("%s (%v):\n%s", strings.Join(cmd, " "), err, out)
	}
	var stat []byte
	netnsutil.Do(d.node, func() (err error) {
		stat, err = os.ReadFile("/proc/thread-self/net/stat/nf_conntrack")
		return err
	})
	t.Logf("the node's conntrack counters (hex, one row a CPU):\n%s", stat)
}

// routePod attaches a pod with an IPv4 and an IPv6 address.
func routePod(t *testing.T, d *daemonProc, id string) pod {
	t.Helper()
	p := addPod(t, d, id)
	if len(p.IPs) != 2 || len(p.Gateways) != 2 {
		t.Fatalf("pod %s has addresses %v and gateways %v, want one of each family", p.ID, p.IPs, p.Gateways)
	}
	return p
}

// nodeTable lists the daemon's table in the node's namespace; ok is false
// when there is none.
func nodeTable(t *testing.T, node string) (table string, ok bool) {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", filepath.Base(node), "nft", "list", "table", "inet", routeTable).CombinedOutput()
	return string(out), err == nil
}

// nft runs nft(8) with args in the node's namespace and fails t if it
// fails.
func nft(t *testing.T, node string, args ...string) string {
	t.Helper()
	return ipNetnsOutput(t, node, append([]string{"nft"}, args...)...)
}

// nsDialerFrom is nsDialer with the connection's local address set.
func nsDialerFrom(ns string, local netip.Addr) func(ctx context.Context, network, address string) (net.Conn, error) {
	return func(ctx context.Context, network, address string) (net.Conn, error) {
		var c net.Conn
		err := netnsutil.Do(ns, func() (err error) {
			c, err = (&net.Dialer{LocalAddr: &net.TCPAddr{IP: local.AsSlice()}}).DialContext(ctx, network, address)
			return err
		})
		return c, err
	}
}

// serveLongEcho echoes like serveTCPEcho, but each connection may live
// for two minutes, for streams that outlast a daemon restart or carry tens
// of MiB through the race-instrumented daemon.
func serveLongEcho(t *testing.T, ln net.Listener, log *peerLog) {
	serveConns(t, ln, func(c net.Conn) error {
		c.SetDeadline(time.Now().Add(2 * time.Minute))
		if log != nil {
			log.add(peerAddr(c.RemoteAddr()))
		}
		_, err := io.Copy(c, c)
		return err
	})
}

// serveSum answers each connection, once the peer has closed its side,
// with the number of bytes it sent and their SHA-256.
func serveSum(t *testing.T, ln net.Listener) {
	serveConns(t, ln, func(c net.Conn) error {
		c.SetDeadline(time.Now().Add(2 * time.Minute))
		h := sha256.New()
		n, err := io.Copy(h, c)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(c, "%d %x", n, h.Sum(nil))
		return err
	})
}

// seenSince returns the peers log saw after the first before ones.
func seenSince(log *peerLog, before int) []netip.AddrPort {
	return log.all()[before:]
}

// TestRouteClusterIP runs kube-proxy's rules for a ClusterIP Service with
// two backend pods and connects to it from a third pod of the same node,
// until both backends have answered. The node's kernel DNATs the client's
// connections, and each backend sees the client pod's own address: no
// masquerade, so the backend's answer to the client, a pod on its own L2
// segment, must still go back through the node's conntrack to be
// un-DNAT'd, or the client would get it from the wrong address.
func TestRouteClusterIP(t *testing.T) {
	testutil.RequireRoot(t)
	d, _ := routeDaemon(t, 70)
	client := routePod(t, d, "svc-client")
	backends := []pod{routePod(t, d, "svc-a"), routePod(t, d, "svc-b")}
	for _, b := range backends {
		id := b.ID
		serveConns(t, nsListen(t, b.ns, "tcp", ":8080"), func(c net.Conn) error {
			_, err := fmt.Fprintf(c, "%s %s", id, peerAddr(c.RemoteAddr()).Addr().Unmap())
			return err
		})
	}

	for i, clusterIP := range []netip.AddrPort{netip.MustParseAddrPort("10.96.0.10:80"), netip.MustParseAddrPort("[fd00:96::10]:80")} {
		t.Run(clusterIP.String(), func(t *testing.T) {
			var eps []netip.AddrPort
			for _, b := range backends {
				eps = append(eps, netip.AddrPortFrom(b.IPs[i].Addr(), 8080))
			}
			applyKubeProxy(t, d.node, kubeService{name: "default/web:http", clusterIP: clusterIP, endpoints: eps})
			want := client.IPs[i].Addr()
			answered := map[string]bool{}
			// Each connection picks a backend at random with
			// probability 1/2: 40 all to one would take 2^-39.
			for attempt := 0; len(answered) < len(backends) && attempt < 40; attempt++ {
				c := mustDial(t, nsDialer(client.ns), clusterIP)
				b, err := io.ReadAll(c)
				c.Close()
				if err != nil {
					t.Fatalf("connection %d to %s: read %q: %v", attempt, clusterIP, b, err)
				}
				id, saw, _ := strings.Cut(string(b), " ")
				if !slices.ContainsFunc(backends, func(p pod) bool { return p.ID == id }) {
					t.Fatalf("connection %d to %s got %q, want a backend's name and the client it saw", attempt, clusterIP, b)
				}
				if saw != want.String() {
					t.Errorf("backend %s saw the client at %s, want the client pod's own %s", id, saw, want)
				}
				if got := peerAddr(c.RemoteAddr()); got.Addr().Unmap() != clusterIP.Addr() {
					t.Errorf("the client's socket is connected to %s, want the ClusterIP %s", got, clusterIP)
				}
				answered[id] = true
			}
			if len(answered) < len(backends) {
				t.Errorf("only backends %v answered at %s", answered, clusterIP)
			}
		})
	}
}

// TestRouteNodePortLocal connects from another host to a NodePort of the
// node, a Service with externalTrafficPolicy Local: kube-proxy DNATs it to
// the pod without masquerade, the pod sees the other host's own address,
// and its answer, which leaves the pod for the gateway, is routed back
// through the node's conntrack to the client.
func TestRouteNodePortLocal(t *testing.T) {
	testutil.RequireRoot(t)
	d, host := routeDaemon(t, 71)
	p := routePod(t, d, "np-web")
	var peers peerLog
	serveTCPEcho(t, nsListen(t, p.ns, "tcp", ":8080"), &peers)

	for i, clusterIP := range []netip.AddrPort{netip.MustParseAddrPort("10.96.0.20:80"), netip.MustParseAddrPort("[fd00:96::20]:80")} {
		podAddr := p.IPs[i].Addr()
		nodePort := netip.AddrPortFrom(host.nodeAddr(podAddr), 30080)
		t.Run(nodePort.String(), func(t *testing.T) {
			applyKubeProxy(t, d.node, kubeService{name: "default/np:http", clusterIP: clusterIP, nodePort: nodePort.Port(), local: true,
				endpoints: []netip.AddrPort{netip.AddrPortFrom(podAddr, 8080)}})
			before := len(peers.all())
			c := mustDial(t, nsDialer(host.ns), nodePort)
			echoStream(t, c, []byte("from another host through a NodePort"))
			if seen := seenSince(&peers, before); len(seen) != 1 || seen[0].Addr() != host.addr(podAddr) {
				t.Errorf("the pod saw %v, want the other host's %s (externalTrafficPolicy Local keeps it)", seen, host.addr(podAddr))
			}
		})
	}
}

// TestRouteNodeAddress connects from the node, bound to its primary
// address (its address towards the world, not tsw0's), to a pod, and from
// the pod to a server on the node bound to that address: no NAT either
// way, each side sees the other's own address. The pod's answers to the
// node's primary address leave through the gateway and are routed to the
// node's kernel.
func TestRouteNodeAddress(t *testing.T) {
	testutil.RequireRoot(t)
	d, w := routeDaemon(t, 72)
	p := routePod(t, d, "node-addr")
	var podPeers peerLog
	inPod := nsListen(t, p.ns, "tcp", ":0")
	serveTCPEcho(t, inPod, &podPeers)
	msg := make([]byte, 1<<20)
	rand.NewChaCha8([32]byte{72}).Read(msg)

	for i := range p.IPs {
		podAddr := p.IPs[i].Addr()
		nodeAddr := w.nodeAddr(podAddr)
		t.Run(fmt.Sprintf("node %s to pod %s", nodeAddr, podAddr), func(t *testing.T) {
			before := len(podPeers.all())
			c := mustDial(t, nsDialerFrom(d.node, nodeAddr), netip.AddrPortFrom(podAddr, portOf(inPod.Addr())))
			echoStream(t, c, msg)
			if seen := seenSince(&podPeers, before); len(seen) != 1 || seen[0].Addr() != nodeAddr {
				t.Errorf("the pod's server saw %v, want the node's %s", seen, nodeAddr)
			}
		})
		t.Run(fmt.Sprintf("pod %s to node %s", podAddr, nodeAddr), func(t *testing.T) {
			var nodePeers peerLog
			onNode := nsListen(t, d.node, "tcp", netip.AddrPortFrom(nodeAddr, 0).String())
			serveTCPEcho(t, onNode, &nodePeers)
			c := mustDial(t, nsDialer(p.ns), netip.AddrPortFrom(nodeAddr, portOf(onNode.Addr())))
			echoStream(t, c, msg)
			if seen := nodePeers.all(); len(seen) != 1 || seen[0].Addr() != podAddr {
				t.Errorf("the node's server saw %v, want the pod's %s", seen, podAddr)
			}
		})
	}
}

// TestRouteEgressMasquerade sends 32 MiB from a pod to a server in the
// world and back, over IPv4 and IPv6: the node's kernel masquerades the
// flow (the world sees the node's address), the pod's socket is connected
// to the world's own address, and the daemon's table says masquerade.
func TestRouteEgressMasquerade(t *testing.T) {
	testutil.RequireRoot(t)
	d, w := routeDaemon(t, 73)
	p := routePod(t, d, "masq")
	var peers peerLog
	ln := nsListen(t, w.ns, "tcp", ":0")
	serveLongEcho(t, ln, &peers)
	msg := make([]byte, 32<<20)
	rand.NewChaCha8([32]byte{73}).Read(msg)

	for _, src := range []netip.Addr{p.IPs[0].Addr(), p.IPs[1].Addr()} {
		dst := netip.AddrPortFrom(w.addr(src), portOf(ln.Addr()))
		t.Run(dst.Addr().String(), func(t *testing.T) {
			before := len(peers.all())
			c := mustDial(t, nsDialer(p.ns), dst)
			c.SetDeadline(time.Now().Add(2 * time.Minute))
			if got := peerAddr(c.RemoteAddr()); got.Addr().Unmap() != dst.Addr() {
				t.Errorf("the pod's socket is connected to %s, want the world's %s", got, dst)
			}
			if got := peerAddr(c.LocalAddr()); got.Addr().Unmap() != src {
				t.Errorf("the pod's socket is bound to %s, want the pod's %s", got, src)
			}
			echoStream(t, c, msg)
			if seen := seenSince(&peers, before); len(seen) != 1 || seen[0].Addr() != w.nodeAddr(src) {
				t.Errorf("the world saw %v, want the node's %s (masquerade)", seen, w.nodeAddr(src))
			}
		})
	}
	checkPeers(t, "world echo server", peers.addrs(), w.node4, w.node6)
	table, ok := nodeTable(t, d.node)
	if !ok || !strings.Contains(table, "masquerade") {
		t.Errorf("nft list table inet %s in the node (exists: %v) has no masquerade:\n%s", routeTable, ok, table)
	}
}

// TestRouteTTLExpired sends UDP datagrams from a pod to the world with
// IP_RECVERR on and reads the ICMP errors from the socket's error queue.
// With TTL (hop limit) 1 the gateway, the first hop, answers time exceeded
// from its own address; with 2 the datagram dies in the node's kernel,
// whose time exceeded comes from tsw0's address: the switch decremented
// it once. With the default TTL the world's echo answers.
func TestRouteTTLExpired(t *testing.T) {
	testutil.RequireRoot(t)
	d, w := routeDaemon(t, 74)
	p := routePod(t, d, "ttl")
	host, err := tap.Inspect(d.node, daemon.DefaultHostPort)
	if err != nil {
		t.Fatal(err)
	}
	echo := nsListenPacket(t, w.ns, "udp", ":0")
	serveUDPEcho(t, echo, nil)

	for i := range p.IPs {
		src := p.IPs[i].Addr()
		dst := netip.AddrPortFrom(w.addr(src), portOf(echo.LocalAddr()))
		var tsw0 netip.Addr
		for _, a := range host.Addrs {
			if a.Addr().Is4() == src.Is4() {
				tsw0 = a.Addr()
			}
		}
		t.Run(dst.Addr().String(), func(t *testing.T) {
			s := openRecvErr(t, p.ns, src.Is6())
			s.mustEcho(t, dst)
			// Other ports than the echo's: each round's errors name
			// their own destination port, so a late one of the
			// round before is told apart.
			for _, tt := range []struct {
				ttl  int
				want netip.Addr
				who  string
			}{{1, p.Gateways[i], "the gateway"}, {2, tsw0, "the node's tsw0"}} {
				to := netip.AddrPortFrom(dst.Addr(), 33433+uint16(tt.ttl))
				e := s.icmpError(t, to, tt.ttl)
				t.Logf("ttl %d to %s: origin %d type %d code %d errno %d from %s", tt.ttl, to, e.origin, e.typ, e.code, e.errno, e.offender)
				wantOrigin, wantType := uint8(unix.SO_EE_ORIGIN_ICMP), uint8(11) // time exceeded (RFC 792)
				if src.Is6() {
					wantOrigin, wantType = unix.SO_EE_ORIGIN_ICMP6, 3 // time exceeded (RFC 4443)
				}
				if e.origin != wantOrigin || e.typ != wantType || e.code != 0 {
					t.Errorf("ttl %d: ICMP error origin %d type %d code %d, want origin %d type %d code 0 (hop limit exceeded in transit)",
						tt.ttl, e.origin, e.typ, e.code, wantOrigin, wantType)
				}
				if e.offender != tt.want {
					t.Errorf("ttl %d: the time exceeded came from %s, want %s's %s", tt.ttl, e.offender, tt.who, tt.want)
				}
			}
		})
	}
	// One error from the gateway a family: the metric counts them.
	if v := metric(t, daemonMetrics(t, d), `tapswitch_icmp_errors_sent_total{type="time_exceeded"}`); v < float64(len(p.IPs)) {
		t.Errorf("tapswitch_icmp_errors_sent_total{type=\"time_exceeded\"} = %v, want at least %d", v, len(p.IPs))
	}
}

// recvErrSocket is a UDP socket in a pod with IP_RECVERR (IPV6_RECVERR)
// on: the ICMP errors its datagrams cause queue up on it (ip(7)).
type recvErrSocket struct {
	fd int
	v6 bool
}

// openRecvErr opens a recvErrSocket in the netns at ns; it is closed when
// the test ends.
func openRecvErr(t *testing.T, ns string, v6 bool) *recvErrSocket {
	t.Helper()
	s := &recvErrSocket{fd: -1, v6: v6}
	err := netnsutil.Do(ns, func() error {
		family, level, opt := unix.AF_INET, unix.IPPROTO_IP, unix.IP_RECVERR
		if v6 {
			family, level, opt = unix.AF_INET6, unix.IPPROTO_IPV6, unix.IPV6_RECVERR
		}
		fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		s.fd = fd
		return unix.SetsockoptInt(fd, level, opt, 1)
	})
	if s.fd >= 0 {
		t.Cleanup(func() { unix.Close(s.fd) })
	}
	if err != nil {
		t.Fatalf("recverr socket in %s: %v", ns, err)
	}
	return s
}

// setTTL sets the TTL (hop limit) of the socket's datagrams.
func (s *recvErrSocket) setTTL(t *testing.T, ttl int) {
	t.Helper()
	level, opt := unix.IPPROTO_IP, unix.IP_TTL
	if s.v6 {
		level, opt = unix.IPPROTO_IPV6, unix.IPV6_UNICAST_HOPS
	}
	if err := unix.SetsockoptInt(s.fd, level, opt, ttl); err != nil {
		t.Fatalf("set ttl %d: %v", ttl, err)
	}
}

func (s *recvErrSocket) send(to netip.AddrPort, msg []byte) error {
	var sa unix.Sockaddr
	if s.v6 {
		sa = &unix.SockaddrInet6{Port: int(to.Port()), Addr: to.Addr().As16()}
	} else {
		sa = &unix.SockaddrInet4{Port: int(to.Port()), Addr: to.Addr().As4()}
	}
	return unix.Sendto(s.fd, msg, 0, sa)
}

// mustEcho sends a datagram with the default TTL to an echo server until
// it answers (the first may wait for the gateway's MAC).
func (s *recvErrSocket) mustEcho(t *testing.T, to netip.AddrPort) {
	t.Helper()
	s.setTTL(t, 64)
	msg := []byte("are you there")
	buf := make([]byte, 1500)
	for range 10 {
		// An error left by an earlier datagram fails one send or
		// receive; the next goes.
		s.send(to, msg)
		fds := []unix.PollFd{{Fd: int32(s.fd), Events: unix.POLLIN}}
		if n, _ := unix.Poll(fds, 1000); n == 0 || fds[0].Revents&unix.POLLIN == 0 {
			continue
		}
		if n, _, err := unix.Recvfrom(s.fd, buf, unix.MSG_DONTWAIT); err == nil && string(buf[:n]) == string(msg) {
			return
		}
	}
	t.Fatalf("no echo from %s with the default TTL", to)
}

// icmpError is one ICMP error read from a socket's error queue.
type icmpError struct {
	errno       uint32
	origin      uint8 // SO_EE_ORIGIN_ICMP or SO_EE_ORIGIN_ICMP6
	typ, code   uint8
	info        uint32 // the MTU of a fragmentation needed or packet too big
	offender    netip.Addr
	destination netip.AddrPort // of the datagram that caused it
}

// icmpError sends datagrams with the given TTL to dst, one a second, until
// an ICMP error about one of them, one whose destination is dst, is in
// the error queue, and returns it. Errors about other destinations are
// skipped.
func (s *recvErrSocket) icmpError(t *testing.T, dst netip.AddrPort, ttl int) icmpError {
	t.Helper()
	s.setTTL(t, ttl)
	buf, oob := make([]byte, 1500), make([]byte, 512)
	for range 10 {
		// With IP_RECVERR a queued error also fails the next send
		// (ip(7)); the datagram after it goes.
		if err := s.send(dst, []byte("expire")); err != nil {
			s.send(dst, []byte("expire"))
		}
		fds := []unix.PollFd{{Fd: int32(s.fd), Events: unix.POLLERR}}
		unix.Poll(fds, 1000)
		for {
			_, oobn, _, from, err := unix.Recvmsg(s.fd, buf, oob, unix.MSG_ERRQUEUE|unix.MSG_DONTWAIT)
			if err != nil {
				break // the queue is empty
			}
			e, ok := parseRecvErr(oob[:oobn], from)
			if ok && e.destination == dst {
				return e
			}
		}
	}
	t.Fatalf("no ICMP error for datagrams to %s with ttl %d in 10s", dst, ttl)
	return icmpError{}
}

// sockExtendedErrLen is the size of struct sock_extended_err
// (linux/errqueue.h), unix.SockExtendedErr.
const sockExtendedErrLen = 16

// parseRecvErr reads the IP_RECVERR (IPV6_RECVERR) control message of an
// error-queue read: struct sock_extended_err and, after it, the offender's
// sockaddr (SO_EE_OFFENDER, linux/errqueue.h). from is the destination of
// the datagram the error is about.
func parseRecvErr(oob []byte, from unix.Sockaddr) (icmpError, bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return icmpError{}, false
	}
	for _, m := range msgs {
		v4 := m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_RECVERR
		v6 := m.Header.Level == unix.IPPROTO_IPV6 && m.Header.Type == unix.IPV6_RECVERR
		if !v4 && !v6 || len(m.Data) < sockExtendedErrLen {
			continue
		}
		d := m.Data
		e := icmpError{
			errno:  binary.NativeEndian.Uint32(d[0:]),
			origin: d[4], typ: d[5], code: d[6],
			info: binary.NativeEndian.Uint32(d[8:]),
		}
		off := d[sockExtendedErrLen:]
		switch {
		case v4 && len(off) >= 8: // sockaddr_in: family, port, address
			e.offender = netip.AddrFrom4([4]byte(off[4:8]))
		case v6 && len(off) >= 24: // sockaddr_in6: family, port, flow info, address
			e.offender = netip.AddrFrom16([16]byte(off[8:24])).Unmap()
		}
		switch sa := from.(type) {
		case *unix.SockaddrInet4:
			e.destination = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
		case *unix.SockaddrInet6:
			e.destination = netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(sa.Port))
		}
		return e, true
	}
	return icmpError{}, false
}

// TestRoutePMTU runs the pods and tsw0 at MTU 9000 and the node's link to
// the world at 1500, and sends 4 MiB from a pod to the world. The world
// advertises a jumbo MSS (a route's advmss, as a server on a jumbo segment
// beyond the 1500 link would), so the pod's first segments are too big
// for the node's next hop: the node's kernel answers them with
// fragmentation needed (packet too big), which must reach the pod, whose
// kernel then caches the path MTU 1500. Without that the transfer stalls.
func TestRoutePMTU(t *testing.T) {
	testutil.RequireRoot(t)
	d, w := routeDaemon(t, 75, "--mtu", "9000")
	p := routePod(t, d, "pmtu")
	for _, dev := range []struct{ ns, name string }{{d.node, daemon.DefaultHostPort}, {p.ns, p.IfName}} {
		if l, err := tap.Inspect(dev.ns, dev.name); err != nil || l.MTU != 9000 {
			t.Fatalf("%s in %s: %+v, %v; want MTU 9000", dev.name, dev.ns, l, err)
		}
	}
	world := filepath.Base(w.ns)
	ipCmd(t, "-n", world, "route", "add", w.node4.String()+"/32", "dev", w.worldIf, "advmss", "8960")
	ipCmd(t, "-n", world, "-6", "route", "add", w.node6.String()+"/128", "dev", w.worldIf, "advmss", "8940")
	ln := nsListen(t, w.ns, "tcp", ":0")
	serveSum(t, ln)
	msg := make([]byte, 4<<20)
	rand.NewChaCha8([32]byte{75}).Read(msg)

	for _, src := range []netip.Addr{p.IPs[0].Addr(), p.IPs[1].Addr()} {
		dst := netip.AddrPortFrom(w.addr(src), portOf(ln.Addr()))
		t.Run(dst.Addr().String(), func(t *testing.T) {
			c := mustDial(t, nsDialer(p.ns), dst)
			c.SetDeadline(time.Now().Add(time.Minute))
			if m := socketMTU(t, c.(*net.TCPConn), src.Is6()); m != 9000 {
				t.Fatalf("before the transfer the pod's path MTU to %s is %d, want its own 9000", dst.Addr(), m)
			}
			start := time.Now()
			sendSummed(t, c, msg)
			t.Logf("4 MiB to %s in %v", dst, time.Since(start).Round(time.Millisecond))
			sockMTU := socketMTU(t, c.(*net.TCPConn), src.Is6())
			route := ipNetnsOutput(t, p.ns, "ip", "route", "get", dst.Addr().String())
			if sockMTU != 1500 && !strings.Contains(route, "mtu 1500") {
				t.Errorf("after the transfer the pod's path MTU to %s is %d (socket), route:\n%s\nwant 1500 from the node's ICMP error", dst.Addr(), sockMTU, route)
			}
		})
	}
}

// sendSummed sends msg on c, a connection to a serveSum server, closes
// its side and checks the server's count and SHA-256 of what it read.
func sendSummed(t *testing.T, c net.Conn, msg []byte) {
	t.Helper()
	if _, err := c.Write(msg); err != nil {
		t.Fatalf("write %d bytes to %s: %v", len(msg), c.RemoteAddr(), err)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if want := fmt.Sprintf("%d %x", len(msg), sha256.Sum256(msg)); err != nil || string(got) != want {
		t.Fatalf("%s read %q (%v), want %q", c.RemoteAddr(), got, err, want)
	}
}

// socketMTU reads a connected socket's path MTU (IP_MTU, IPV6_MTU).
func socketMTU(t *testing.T, c *net.TCPConn, v6 bool) int {
	t.Helper()
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	level, opt := unix.IPPROTO_IP, unix.IP_MTU
	if v6 {
		level, opt = unix.IPPROTO_IPV6, unix.IPV6_MTU
	}
	var mtu int
	var serr error
	if err := raw.Control(func(fd uintptr) { mtu, serr = unix.GetsockoptInt(int(fd), level, opt) }); err != nil || serr != nil {
		t.Fatalf("path MTU of the socket: %v %v", err, serr)
	}
	return mtu
}

// TestRouteHostPort adds port forwards on every address of the node (and
// on its loopback) to a pod's server. In route mode they are DNAT rules in
// the daemon's table: a client on another host reaches the pod through
// the node's address, and the pod sees the client's own address, not the
// gateway's; a client on the node reaches it through 127.0.0.1. Deleting
// the forward, then the pod, takes the rules away.
func TestRouteHostPort(t *testing.T) {
	testutil.RequireRoot(t)
	d, host := routeDaemon(t, 76)
	p := routePod(t, d, "hostport")
	var peers peerLog
	serveTCPEcho(t, nsListen(t, p.ns, "tcp", ":80"), &peers)
	for _, listen := range []string{"0.0.0.0:8080", "[::]:8080", "127.0.0.1:8081"} {
		if out, err := d.ctl("forward add", "--listen", listen, "--pod", p.ID, "--port", "80"); err != nil {
			t.Fatalf("forward add --listen %s: %v\n%s", listen, err, out)
		}
	}
	table, _ := nodeTable(t, d.node)
	for _, a := range p.IPs {
		if !mentions(table, a.Addr()) {
			t.Errorf("the daemon's table has no DNAT to the pod's %s:\n%s", a.Addr(), table)
		}
	}

	for _, a := range p.IPs {
		podAddr := a.Addr()
		nodePort := netip.AddrPortFrom(host.nodeAddr(podAddr), 8080)
		t.Run(nodePort.String(), func(t *testing.T) {
			before := len(peers.all())
			echoStream(t, mustDial(t, nsDialer(host.ns), nodePort), []byte("from another host to a hostPort"))
			if seen := seenSince(&peers, before); len(seen) != 1 || seen[0].Addr() != host.addr(podAddr) {
				t.Errorf("the pod saw %v, want the client's own %s", seen, host.addr(podAddr))
			}
		})
	}
	t.Run("127.0.0.1:8081 from the node", func(t *testing.T) {
		echoStream(t, mustDial(t, d.nodeDial, netip.MustParseAddrPort("127.0.0.1:8081")), []byte("from the node's loopback"))
	})

	if out, err := d.ctl("forward del", "--listen", "0.0.0.0:8080"); err != nil {
		t.Fatalf("forward del: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if c, err := nsDialer(host.ns)(ctx, "tcp", netip.AddrPortFrom(host.node4, 8080).String()); err == nil {
		c.Close()
		t.Errorf("%s:8080 still reaches the pod after forward del", host.node4)
	} else if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dial %s:8080 after forward del: %v, want connection refused (no DNAT, no listener)", host.node4, err)
	}
	// The other forwards stay.
	echoStream(t, mustDial(t, nsDialer(host.ns), netip.AddrPortFrom(host.node6, 8080)), []byte("[::]:8080 still forwards"))
	echoStream(t, mustDial(t, d.nodeDial, netip.MustParseAddrPort("127.0.0.1:8081")), []byte("127.0.0.1:8081 still forwards"))

	if out, err := d.ctl("pod del", "--id", p.ID); err != nil {
		t.Fatalf("pod del: %v\n%s", err, out)
	}
	table, ok := nodeTable(t, d.node)
	if !ok {
		t.Fatalf("the daemon's table is gone after pod del")
	}
	for _, a := range p.IPs {
		if mentions(table, a.Addr()) {
			t.Errorf("after pod del the daemon's table still mentions the pod's %s:\n%s", a.Addr(), table)
		}
	}
	if fws := forwardList(t, d); len(fws) != 0 {
		t.Errorf("forward list after pod del = %+v, want none", fws)
	}
}

// TestRouteRestartKeepsEgress keeps TCP streams open across a SIGKILL and
// restart of the daemon: two from a pod to the world (masqueraded) and one
// from another host to the pod through a hostPort (DNAT'd). The node's
// conntrack and rules outlive the daemon, the TAPs are persistent, so each
// stream goes on where it stopped: no byte lost, no reset anywhere.
func TestRouteRestartKeepsEgress(t *testing.T) {
	testutil.RequireRoot(t)
	flags := routeFlags(77)
	d, w := routeDaemon(t, 77)
	p := routePod(t, d, "restart")
	worldLn := nsListen(t, w.ns, "tcp", ":0")
	serveLongEcho(t, worldLn, nil)
	serveLongEcho(t, nsListen(t, p.ns, "tcp", ":80"), nil)
	if out, err := d.ctl("forward add", "--listen", "0.0.0.0:8080", "--pod", p.ID, "--port", "80"); err != nil {
		t.Fatalf("forward add: %v\n%s", err, out)
	}

	streams := []struct {
		name string
		c    net.Conn
	}{
		{"egress " + w.addr4.String(), mustDial(t, nsDialer(p.ns), netip.AddrPortFrom(w.addr4, portOf(worldLn.Addr())))},
		{"egress " + w.addr6.String(), mustDial(t, nsDialer(p.ns), netip.AddrPortFrom(w.addr6, portOf(worldLn.Addr())))},
		{"hostPort " + w.node4.String() + ":8080", mustDial(t, nsDialer(w.ns), netip.AddrPortFrom(w.node4, 8080))},
	}
	rng := rand.NewChaCha8([32]byte{77})
	chunk := func() []byte {
		b := make([]byte, 256<<10)
		rng.Read(b)
		return b
	}
	for _, s := range streams {
		s.c.SetDeadline(time.Now().Add(90 * time.Second))
		if err := echoChunk(s.c, chunk()); err != nil {
			t.Fatalf("%s before the restart: %v", s.name, err)
		}
	}
	nss := []string{d.node, w.ns, p.ns}
	var rsts []int64
	for _, ns := range nss {
		rsts = append(rsts, tcpOutRsts(t, ns))
	}

	if err := d.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	d.exited <- <-d.exited // wait for the exit, and leave it for stop
	d2 := startDaemonIn(t, d.node, d.stateDir, flags...)
	t.Cleanup(func() {
		if t.Failed() {
			logNode(t, d2)
		}
		// Before d2 stops: the servers wait for the streams' FINs.
		for _, s := range streams {
			s.c.Close()
		}
	})

	for _, s := range streams {
		if err := echoChunk(s.c, chunk()); err != nil {
			t.Errorf("%s after the restart: %v", s.name, err)
		}
	}
	for i, ns := range nss {
		if n := tcpOutRsts(t, ns); n != rsts[i] {
			t.Errorf("%s sent %d TCP resets during the restart", ns, n-rsts[i])
		}
	}
}

// echoChunk writes msg to an echo server on c while reading the echo,
// and compares it.
func echoChunk(c net.Conn, msg []byte) error {
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(msg)
		werr <- err
	}()
	got := make([]byte, len(msg))
	n, err := io.ReadFull(c, got)
	if werr := <-werr; werr != nil {
		return fmt.Errorf("write: %w", werr)
	}
	if err != nil {
		return fmt.Errorf("read the echo after %d of %d bytes: %w", n, len(msg), err)
	}
	if i := firstDiff(got, msg); i < len(msg) {
		return fmt.Errorf("the echo differs at byte %d", i)
	}
	return nil
}

// TestRouteNoResetForOutsideSources connects to a pod, directly at its
// address, from a host outside the pod CIDRs that routes them via the
// node (which forwards). The pod's answers leave through the gateway to
// the node's kernel, which passes them on as part of the flow it
// forwarded: no masquerade, no reset from a gateway that never saw the
// connection start.
func TestRouteNoResetForOutsideSources(t *testing.T) {
	testutil.RequireRoot(t)
	d, host := routeDaemon(t, 78)
	p := routePod(t, d, "outside")
	hostName := filepath.Base(host.ns)
	ipCmd(t, "-n", hostName, "route", "add", p.IPs[0].Masked().String(), "via", host.node4.String())
	ipCmd(t, "-n", hostName, "-6", "route", "add", p.IPs[1].Masked().String(), "via", host.node6.String())
	var peers peerLog
	ln := nsListen(t, p.ns, "tcp", ":0")
	serveTCPEcho(t, ln, &peers)
	msg := make([]byte, 1<<20)
	rand.NewChaCha8([32]byte{78}).Read(msg)

	for _, a := range p.IPs {
		dst := netip.AddrPortFrom(a.Addr(), portOf(ln.Addr()))
		t.Run(dst.String(), func(t *testing.T) {
			before := len(peers.all())
			rsts := tcpOutRsts(t, p.ns)
			echoStream(t, mustDial(t, nsDialer(host.ns), dst), msg)
			if seen := seenSince(&peers, before); len(seen) != 1 || seen[0].Addr() != host.addr(a.Addr()) {
				t.Errorf("the pod saw %v, want the outside host's own %s", seen, host.addr(a.Addr()))
			}
			if n := tcpOutRsts(t, p.ns); n != rsts {
				t.Errorf("the pod sent %d resets", n-rsts)
			}
		})
	}
}

// TestRouteStartErrors starts the daemon with route mode's flags wrong: it
// must exit, naming the flag, and leave no table behind.
func TestRouteStartErrors(t *testing.T) {
	testutil.RequireRoot(t)
	node := testutil.NewNetNS(t)
	ipCmd(t, "-n", filepath.Base(node), "link", "set", "lo", "up")
	for _, tt := range []struct {
		name string
		args []string
		want []string
	}{
		{"cluster cidr without the pods", []string{"--pod-cidr", "10.251.79.0/24", "--cluster-cidr", "10.0.0.0/24"}, []string{"-cluster-cidr"}},
		{"bogus egress", []string{"--pod-cidr", "10.251.79.0/24", "--egress", "bogus"}, []string{"-egress"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out := failedStart(t, node, filepath.Join(t.TempDir(), "state"), tt.args...)
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("tapswitchd %v said %q, want it to name %q", tt.args, strings.TrimSpace(out), w)
				}
			}
			if table, ok := nodeTable(t, node); ok {
				t.Errorf("the failed start left its table:\n%s", table)
			}
		})
	}
}

// TestRouteRulesLifecycle checks the daemon's hold on its table: made at
// start, restored when someone deletes a rule of it or all of it, removed
// on a clean exit unless --keep-rules; and another table of the node's
// untouched throughout.
func TestRouteRulesLifecycle(t *testing.T) {
	testutil.RequireRoot(t)
	node := testutil.NewNetNS(t)
	ipCmd(t, "-n", filepath.Base(node), "link", "set", "lo", "up")
	nft(t, node, "add", "table", "inet", "other")
	nft(t, node, "add", "chain", "inet", "other", "keep", "{ type filter hook forward priority 0; policy accept; }")
	nft(t, node, "add", "rule", "inet", "other", "keep", "ip", "saddr", "10.251.80.0/24", "counter", "accept")
	other := nft(t, node, "-s", "list", "table", "inet", "other")
	checkOther := func(when string) {
		t.Helper()
		if got := nft(t, node, "-s", "list", "table", "inet", "other"); got != other {
			t.Errorf("%s the table inet other is\n%s\nwas\n%s", when, got, other)
		}
	}
	flags := routeFlags(80)
	d := startDaemonIn(t, node, "", flags...)
	t.Cleanup(func() {
		if t.Failed() {
			logNode(t, d)
		}
	})
	hasMasquerade := func() bool {
		table, ok := nodeTable(t, node)
		return ok && strings.Contains(table, "masquerade")
	}
	if !hasMasquerade() {
		table, _ := nodeTable(t, node)
		t.Fatalf("after start the node has no table inet %s with masquerade:\n%s", routeTable, table)
	}
	checkOther("after start")

	chain, handle := ruleHandle(t, node, "masquerade")
	nft(t, node, "delete", "rule", "inet", routeTable, chain, "handle", handle)
	waitRulesCheck(t, "the daemon to restore its masquerade rule", hasMasquerade)
	nft(t, node, "delete", "table", "inet", routeTable)
	waitRulesCheck(t, "the daemon to restore its table", hasMasquerade)
	checkOther("after the restores")

	d.stop(t)
	if table, ok := nodeTable(t, node); ok {
		t.Errorf("after SIGTERM the table is still there:\n%s", table)
	}
	checkOther("after SIGTERM")

	d2 := startDaemonIn(t, node, d.stateDir, append(flags, "--keep-rules")...)
	if !hasMasquerade() {
		t.Fatalf("after a restart with --keep-rules the node has no table with masquerade")
	}
	d2.stop(t)
	if !hasMasquerade() {
		table, _ := nodeTable(t, node)
		t.Errorf("after SIGTERM with --keep-rules the table is gone or changed:\n%s", table)
	}
	checkOther("after SIGTERM with --keep-rules")
}

// rulesCheck bounds how long the daemon may take to notice that its table
// changed: it compares the table with what it wrote every 10 s
// (daemon.rulesCheck), longer than testutil.WaitFor waits.
const rulesCheck = 30 * time.Second

// waitRulesCheck polls cond until it holds, and fails t naming what it
// waited for if that takes longer than rulesCheck.
func waitRulesCheck(t *testing.T, what string, cond func() bool) {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > rulesCheck {
			t.Fatalf("timed out after %v waiting for %s", rulesCheck, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("%s took %v", what, time.Since(start).Round(time.Millisecond))
}

// ruleHandle finds the first rule of the daemon's table whose text
// contains what, and returns its chain and handle.
func ruleHandle(t *testing.T, node, what string) (chain, handle string) {
	t.Helper()
	out := nft(t, node, "-a", "list", "table", "inet", routeTable)
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && f[0] == "chain" {
			chain = f[1]
			continue
		}
		if i := slices.Index(f, "handle"); i > 0 && i+1 < len(f) && strings.Contains(sc.Text(), what) && chain != "" {
			return chain, f[i+1]
		}
	}
	t.Fatalf("no rule with %q in the daemon's table:\n%s", what, out)
	return "", ""
}

// TestRouteModeSwitch restarts a node's daemon from one egress mode into
// the other with the same state. Proxy to route: a forward on [::1],
// which proxy mode serves and Linux cannot DNAT, stays listed with the
// reason and out of the table, and the daemon starts with the others in
// it. Route to proxy: the table a route-mode daemon left (--keep-rules)
// is removed, so its DNATs do not take the proxy's connections.
func TestRouteModeSwitch(t *testing.T) {
	testutil.RequireRoot(t)
	node := testutil.NewNetNS(t)
	ipCmd(t, "-n", filepath.Base(node), "link", "set", "lo", "up")
	flags := routeFlags(81)
	d := startDaemonIn(t, node, "", append(flags, "--egress", "proxy")...)
	p := routePod(t, d, "switch-web")
	for _, listen := range []string{"[::1]:18081", "0.0.0.0:18082"} {
		if out, err := d.ctl("forward add", "--listen", listen, "--pod", p.ID, "--port", "8080"); err != nil {
			t.Fatalf("forward add %s: %v: %s", listen, err, out)
		}
	}
	d.stop(t)

	d = startDaemonIn(t, node, d.stateDir, append(flags, "--keep-rules")...)
	fws := forwardList(t, d)
	for _, fw := range fws {
		switch fw.Listen.String() {
		case "[::1]:18081":
			if fw.Via != "dnat" || !strings.Contains(fw.Error, "loopback") {
				t.Errorf("forward %s after the switch to route mode: via %q, error %q; want dnat and why ::1 cannot be one", fw.Listen, fw.Via, fw.Error)
			}
		case "0.0.0.0:18082":
			if fw.Error != "" {
				t.Errorf("forward %s after the switch to route mode: error %q, want none", fw.Listen, fw.Error)
			}
		}
	}
	if len(fws) != 2 {
		t.Errorf("forwards after the switch to route mode = %+v, want both listed", fws)
	}
	table, ok := nodeTable(t, node)
	if !ok || !strings.Contains(table, "dport 18082") || strings.Contains(table, "18081") {
		t.Errorf("the node's table after the switch to route mode has the DNAT for 18082 and none for 18081? it is:\n%s", table)
	}
	d.stop(t)
	if _, ok := nodeTable(t, node); !ok {
		t.Fatal("--keep-rules: the table is gone after SIGTERM")
	}

	d = startDaemonIn(t, node, d.stateDir, append(flags, "--egress", "proxy")...)
	if table, ok := nodeTable(t, node); ok {
		t.Errorf("a daemon in proxy mode left the route-mode table in place:\n%s", table)
	}
	fws = forwardList(t, d)
	if len(fws) != 2 {
		t.Errorf("forwards back in proxy mode = %+v, want both listed", fws)
	}
	for _, fw := range fws {
		if fw.Via != "proxy" || fw.Error != "" {
			t.Errorf("forward %s back in proxy mode: via %q, error %q; want proxy and no error", fw.Listen, fw.Via, fw.Error)
		}
	}
}
