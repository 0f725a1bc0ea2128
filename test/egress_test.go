package test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"tapswitch/internal/netnsutil"
	"tapswitch/internal/testutil"
)

// The egress tests of proxy mode: pods reaching an outside-world namespace
// through the gateway's forwarders.

// TestWorldFromNode checks the test's outside world itself, without the
// gateway: the node reaches the world's servers over both families and is
// seen at its veth address, a closed port is refused by the world's
// kernel, and nothing of the world outlives the test.
func TestWorldFromNode(t *testing.T) {
	testutil.RequireRoot(t)
	node := testutil.NewNetNS(t)
	w := newWorld(t, node)
	var peers peerLog
	ln := nsListen(t, w.ns, "tcp", ":0")
	serveTCPEcho(t, ln, &peers)
	closed := nsListen(t, w.ns, "tcp", ":0")
	closed.Close()
	dial := nsDialer(node)
	for _, dst := range []netip.Addr{w.addr4, w.addr6} {
		c := mustDial(t, dial, netip.AddrPortFrom(dst, portOf(ln.Addr())))
		echoStream(t, c, []byte("hello, world"))
		if got := peers.addrs(); !slices.Contains(got, w.nodeAddr(dst)) {
			t.Errorf("the world saw %v, want the node's %s", got, w.nodeAddr(dst))
		}
		rsts := tcpOutRsts(t, w.ns)
		_, err := dial(context.Background(), "tcp", netip.AddrPortFrom(dst, portOf(closed.Addr())).String())
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("dial a closed port of %s = %v, want connection refused", dst, err)
		}
		if tcpOutRsts(t, w.ns) == rsts {
			t.Errorf("the world's OutRsts did not count the refusal")
		}
	}
	checkPeers(t, "world server", peers.addrs(), w.node4, w.node6)
}

// egressDaemon starts a daemon in proxy mode (--egress proxy: the gateway
// terminates the pods' flows and re-dials them from the node's sockets,
// which is what these tests check; route mode is route_test.go's) with the
// pod CIDRs 10.251.N.0/24 and fd00:4a4:N::/64, a world next to its node and
// one pod.
func egressDaemon(t *testing.T, n int, podID string, extra ...string) (*daemonProc, *world, pod) {
	t.Helper()
	flags := append([]string{"--egress", "proxy", "--pod-cidr", fmt.Sprintf("10.251.%d.0/24", n), "--pod-cidr6", fmt.Sprintf("fd00:4a4:%d::/64", n)}, extra...)
	d := startDaemon(t, "", flags...)
	w := newWorld(t, d.node)
	p := addPod(t, d, podID)
	if len(p.IPs) != 2 {
		t.Fatalf("pod %s has addresses %v, want an IPv4 and an IPv6 one", p.ID, p.IPs)
	}
	return d, w, p
}

// TestEgressHTTP fetches a large body over HTTP from a server in the world
// and uploads one to it, from the pod, over IPv4 and IPv6. The world sees
// the node's address as the client, as behind a NAT.
func TestEgressHTTP(t *testing.T) {
	testutil.RequireRoot(t)
	_, w, p := egressDaemon(t, 42, "egress-http")
	body := make([]byte, 32<<20)
	rand.NewChaCha8([32]byte{42}).Read(body)
	var peers peerLog
	ln := nsListen(t, w.ns, "tcp", ":0")
	mux := http.NewServeMux()
	mux.HandleFunc("GET /big", func(rw http.ResponseWriter, r *http.Request) {
		peers.add(netip.MustParseAddrPort(r.RemoteAddr))
		rw.Header().Set("Content-Length", fmt.Sprint(len(body)))
		rw.Write(body)
	})
	mux.HandleFunc("POST /sum", func(rw http.ResponseWriter, r *http.Request) {
		peers.add(netip.MustParseAddrPort(r.RemoteAddr))
		h := sha256.New()
		if _, err := io.Copy(h, r.Body); err != nil {
			http.Error(rw, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(rw, "%x", h.Sum(nil))
	})
	serveHTTP(t, ln, mux)
	hc := &http.Client{
		Transport: &http.Transport{DialContext: nsDialer(p.ns), DisableKeepAlives: true},
		Timeout:   20 * time.Second,
	}
	t.Cleanup(hc.CloseIdleConnections)

	for _, src := range []netip.Addr{p.IPs[0].Addr(), p.IPs[1].Addr()} {
		dst := netip.AddrPortFrom(w.addr(src), portOf(ln.Addr()))
		t.Run(dst.Addr().String(), func(t *testing.T) {
			resp, err := hc.Get("http://" + dst.String() + "/big")
			if err != nil {
				t.Fatalf("GET /big from the pod: %v", err)
			}
			got, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatalf("GET /big: read after %d bytes: %v", len(got), err)
			}
			if !bytes.Equal(got, body) {
				t.Fatalf("GET /big: %d bytes, want %d; first difference at byte %d", len(got), len(body), firstDiff(got, body))
			}

			upload := body[:8<<20]
			resp, err = hc.Post("http://"+dst.String()+"/sum", "application/octet-stream", bytes.NewReader(upload))
			if err != nil {
				t.Fatalf("POST /sum from the pod: %v", err)
			}
			sum, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if want := sha256.Sum256(upload); err != nil || string(sum) != hex.EncodeToString(want[:]) {
				t.Errorf("POST /sum = %q, %v; want %x", sum, err, want)
			}
			wantPeer := w.nodeAddr(src)
			if got := peers.addrs(); !slices.Contains(got, wantPeer) {
				t.Errorf("the world saw clients %v, want the node's %s", got, wantPeer)
			}
		})
	}
	checkPeers(t, "http server", peers.addrs(), w.node4, w.node6)
}

// checkPeers fails t unless every address a server saw is one of want.
func checkPeers(t *testing.T, what string, got []netip.Addr, want ...netip.Addr) {
	t.Helper()
	for _, a := range got {
		if !slices.Contains(want, a) {
			t.Errorf("%s saw a client at %s, want only %v (the pods must not be seen)", what, a, want)
		}
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestEgressUDPEcho sends datagrams of several sizes from the pod to an
// echo server in the world, over IPv4 and IPv6. Each comes back whole; the
// world sees one flow from the node's address.
func TestEgressUDPEcho(t *testing.T) {
	testutil.RequireRoot(t)
	_, w, p := egressDaemon(t, 43, "egress-udp")
	var peers peerLog
	pc := nsListenPacket(t, w.ns, "udp", ":0")
	serveUDPEcho(t, pc, &peers)
	rng := rand.NewChaCha8([32]byte{43})

	for _, src := range []netip.Addr{p.IPs[0].Addr(), p.IPs[1].Addr()} {
		dst := netip.AddrPortFrom(w.addr(src), portOf(pc.LocalAddr()))
		t.Run(dst.Addr().String(), func(t *testing.T) {
			before := len(peers.all())
			c, err := nsDialer(p.ns)(context.Background(), "udp", dst.String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			buf := make([]byte, 2048)
			for _, size := range []int{1, 64, 512, 1000, 1200, 1400, 1400, 3} {
				msg := make([]byte, size)
				rng.Read(msg)
				if _, err := c.Write(msg); err != nil {
					t.Fatalf("send %d bytes: %v", size, err)
				}
				c.SetReadDeadline(time.Now().Add(3 * time.Second))
				n, err := c.Read(buf)
				if err != nil {
					t.Fatalf("echo of %d bytes: %v", size, err)
				}
				if !bytes.Equal(buf[:n], msg) {
					t.Fatalf("echo of %d bytes came back as %d different bytes", size, n)
				}
			}
			// All datagrams of the pod's flow left from one socket of the
			// node, like one NAT mapping.
			seen := peers.all()[before:]
			if len(seen) != 1 || seen[0].Addr() != w.nodeAddr(src) {
				t.Errorf("the world saw the flow from %v, want one address:port of the node's %s", seen, w.nodeAddr(src))
			}
		})
	}
	checkPeers(t, "udp echo server", peers.addrs(), w.node4, w.node6)
}

// TestEgressRefused dials a port of the world where nothing listens: the
// world's kernel resets the node's connection attempt, and the pod must get
// a RST, so its connect fails with ECONNREFUSED — well before the gateway's
// own dial time-out (30s by default), which would be a different failure.
// A port that listens is reached first, and the world's kernel counts the
// resets it sent, so the refusal is the world's, not the gateway's own.
func TestEgressRefused(t *testing.T) {
	testutil.RequireRoot(t)
	_, w, p := egressDaemon(t, 44, "egress-refused")
	open := nsListen(t, w.ns, "tcp", ":0")
	serveTCPEcho(t, open, nil)
	ln := nsListen(t, w.ns, "tcp", ":0")
	closed := portOf(ln.Addr())
	ln.Close()

	for _, src := range []netip.Addr{p.IPs[0].Addr(), p.IPs[1].Addr()} {
		t.Run(w.addr(src).String(), func(t *testing.T) {
			mustDial(t, nsDialer(p.ns), netip.AddrPortFrom(w.addr(src), portOf(open.Addr())))
			dst := netip.AddrPortFrom(w.addr(src), closed)
			rstsBefore := tcpOutRsts(t, w.ns)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			start := time.Now()
			c, err := nsDialer(p.ns)(ctx, "tcp", dst.String())
			if err == nil {
				c.Close()
				t.Fatalf("dial %s from the pod succeeded, want connection refused", dst)
			}
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatalf("dial %s from the pod after %v: %v, want connection refused", dst, time.Since(start).Round(time.Millisecond), err)
			}
			if n := tcpOutRsts(t, w.ns); n == rstsBefore {
				t.Errorf("the world sent no RST (OutRsts stayed %d): the refusal did not come from it", n)
			}
		})
	}
}

// tcpOutRsts reads the TCP OutRsts counter (RFC 4022's tcpOutRsts) of the
// netns at ns: the resets its kernel sent. /proc/thread-self/net is the
// namespace of the thread that reads it.
func tcpOutRsts(t *testing.T, ns string) int64 {
	t.Helper()
	var snmp []byte
	if err := netnsutil.Do(ns, func() (err error) {
		snmp, err = os.ReadFile("/proc/thread-self/net/snmp")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	// Two lines start with "Tcp:": the field names, then the values.
	var names []string
	for line := range strings.Lines(string(snmp)) {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "Tcp:" {
			continue
		}
		if names == nil {
			names = f
			continue
		}
		if i := slices.Index(names, "OutRsts"); i > 0 && i < len(f) {
			var n int64
			fmt.Sscan(f[i], &n)
			return n
		}
	}
	t.Fatalf("no Tcp OutRsts in %s's /proc/net/snmp", ns)
	return 0
}

// TestEgressConnectTimeout dials, from the pod, addresses that the node
// routes into the world but nobody holds: the world drops the SYNs
// silently (it does not forward). As behind a kernel NAT, the pod gets no
// answer at all, neither a RST nor a SYN-ACK, and its own connect times
// out; the gateway's host-side dial gives up after --dial-timeout and a
// retransmitted SYN is dialled again. Once the world holds the address,
// the pod's next connect succeeds: a failure is not remembered.
func TestEgressConnectTimeout(t *testing.T) {
	testutil.RequireRoot(t)
	d, w, p := egressDaemon(t, 50, "egress-timeout", "--dial-timeout", "1s")
	nodeName, worldName := filepath.Base(d.node), filepath.Base(w.ns)
	lost := []netip.Addr{netip.MustParseAddr("198.19.0.5"), netip.MustParseAddr("2001:db8:1::5")}
	ipCmd(t, "-n", nodeName, "route", "add", "198.19.0.0/24", "via", w.addr4.String())
	ipCmd(t, "-n", nodeName, "-6", "route", "add", "2001:db8:1::/64", "via", w.addr6.String())

	for _, dst := range lost {
		t.Run(dst.String(), func(t *testing.T) {
			to := netip.AddrPortFrom(dst, 80)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			c, err := nsDialer(p.ns)(ctx, "tcp", to.String())
			if err == nil {
				c.Close()
				t.Fatalf("dial %s from the pod succeeded, want a time-out", to)
			}
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				t.Fatalf("dial %s from the pod = %v, want a time-out (no answer, as behind a NAT)", to, err)
			}

			// The world takes the address and listens on it.
			bits := 32
			if dst.Is6() {
				bits = 128
			}
			ipCmd(t, "-n", worldName, "addr", "add", netip.PrefixFrom(dst, bits).String(), "dev", "lo")
			ln := nsListen(t, w.ns, "tcp", to.String())
			serveTCPEcho(t, ln, nil)
			c = mustDial(t, nsDialer(p.ns), to)
			echoStream(t, c, []byte("found at last"))
		})
	}
}

// TestEgressTCPHalfClose checks that a FIN crosses the gateway in each
// direction while the other direction stays open, as through a kernel NAT.
func TestEgressTCPHalfClose(t *testing.T) {
	testutil.RequireRoot(t)
	_, w, p := egressDaemon(t, 48, "egress-half")
	dial := nsDialer(p.ns)

	// The pod finishes sending first; the world answers after reading
	// to the end.
	podFirst := nsListen(t, w.ns, "tcp", ":0")
	serveSum(t, podFirst)
	// The world finishes sending first; the pod answers after reading
	// to the end, and the world reports what it got.
	worldFirst := nsListen(t, w.ns, "tcp", ":0")
	const greeting = "hello from the world"
	gotAfterFIN := make(chan string, 2)
	serveConns(t, worldFirst, func(c net.Conn) error {
		if _, err := io.WriteString(c, greeting); err != nil {
			return err
		}
		if err := c.(*net.TCPConn).CloseWrite(); err != nil {
			return err
		}
		b, err := io.ReadAll(c)
		gotAfterFIN <- string(b)
		return err
	})

	for _, src := range []netip.Addr{p.IPs[0].Addr(), p.IPs[1].Addr()} {
		t.Run("pod closes first "+w.addr(src).String(), func(t *testing.T) {
			c := mustDial(t, dial, netip.AddrPortFrom(w.addr(src), portOf(podFirst.Addr())))
			msg := make([]byte, 1<<20)
			rand.NewChaCha8([32]byte{48}).Read(msg)
			if _, err := c.Write(msg); err != nil {
				t.Fatal(err)
			}
			if err := c.(*net.TCPConn).CloseWrite(); err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(c)
			if want := fmt.Sprintf("%d %x", len(msg), sha256.Sum256(msg)); err != nil || string(got) != want {
				t.Errorf("after the pod's FIN the world answered %q, %v; want %q", got, err, want)
			}
		})
		t.Run("world closes first "+w.addr(src).String(), func(t *testing.T) {
			c := mustDial(t, dial, netip.AddrPortFrom(w.addr(src), portOf(worldFirst.Addr())))
			got, err := io.ReadAll(c)
			if err != nil || string(got) != greeting {
				t.Fatalf("the pod read %q, %v until EOF; want %q", got, err, greeting)
			}
			const reply = "the pod still talks"
			if _, err := io.WriteString(c, reply); err != nil {
				t.Fatalf("write after the world's FIN: %v", err)
			}
			c.(*net.TCPConn).CloseWrite()
			select {
			case s := <-gotAfterFIN:
				if s != reply {
					t.Errorf("the world got %q after its FIN, want %q", s, reply)
				}
			case <-time.After(10 * time.Second):
				t.Errorf("the world got nothing within 10s after its FIN")
			}
		})
	}
}

// TestEgressTCPReset checks that a RST crosses the gateway in each
// direction: an abortive close (SO_LINGER 0) at one end is a reset at the
// other, not an orderly end of stream.
func TestEgressTCPReset(t *testing.T) {
	testutil.RequireRoot(t)
	_, w, p := egressDaemon(t, 49, "egress-rst")
	dial := nsDialer(p.ns)

	worldResets := nsListen(t, w.ns, "tcp", ":0")
	serveConns(t, worldResets, func(c net.Conn) error {
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			return err
		}
		c.(*net.TCPConn).SetLinger(0)
		return nil // serveConns closes it: a RST
	})
	podResets := nsListen(t, w.ns, "tcp", ":0")
	worldSaw := make(chan error, 2)
	serveConns(t, podResets, func(c net.Conn) error {
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			return err
		}
		if _, err := c.Write([]byte("k")); err != nil {
			return err
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := c.Read(make([]byte, 1))
		worldSaw <- err
		return nil
	})

	for _, src := range []netip.Addr{p.IPs[0].Addr(), p.IPs[1].Addr()} {
		t.Run("world resets "+w.addr(src).String(), func(t *testing.T) {
			c := mustDial(t, dial, netip.AddrPortFrom(w.addr(src), portOf(worldResets.Addr())))
			if _, err := c.Write([]byte("x")); err != nil {
				t.Fatal(err)
			}
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, err := c.Read(make([]byte, 1))
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("the pod's read after the world's reset = %v, want connection reset", err)
			}
		})
		t.Run("pod resets "+w.addr(src).String(), func(t *testing.T) {
			c := mustDial(t, dial, netip.AddrPortFrom(w.addr(src), portOf(podResets.Addr())))
			if _, err := c.Write([]byte("x")); err != nil {
				t.Fatal(err)
			}
			// The world's "k" says the flow is up end to end.
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
				t.Fatal(err)
			}
			c.(*net.TCPConn).SetLinger(0)
			c.Close()
			select {
			case err := <-worldSaw:
				if !errors.Is(err, syscall.ECONNRESET) {
					t.Errorf("the world's read after the pod's reset = %v, want connection reset", err)
				}
			case <-time.After(15 * time.Second):
				t.Errorf("the world's read did not return within 15s")
			}
		})
	}
}

// mustDial connects through dial and closes the connection when the test
// ends.
func mustDial(t *testing.T, dial func(context.Context, string, string) (net.Conn, error), dst netip.AddrPort) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := dial(ctx, "tcp", dst.String())
	if err != nil {
		t.Fatalf("dial %s: %v", dst, err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(15 * time.Second))
	return c
}

// TestEgressManyConnectionsNoLeaks runs a thousand short TCP connections
// and a few hundred UDP flows from the pod to the world, over IPv4 and
// IPv6, then checks that the daemon's open files and goroutines come back
// to what they were: closed TCP flows free their host sockets, and idle UDP
// flows expire after --udp-idle-timeout.
func TestEgressManyConnectionsNoLeaks(t *testing.T) {
	testutil.RequireRoot(t)
	const udpIdle = 2 * time.Second
	d, w, p := egressDaemon(t, 45, "egress-many", "--udp-idle-timeout", udpIdle.String())
	echo := nsListen(t, w.ns, "tcp", ":0")
	serveTCPEcho(t, echo, nil)
	udpEcho := nsListenPacket(t, w.ns, "udp", ":0")
	serveUDPEcho(t, udpEcho, nil)
	tcpDst := func(i int) string {
		return netip.AddrPortFrom(w.addr(p.IPs[i%2].Addr()), portOf(echo.Addr())).String()
	}
	udpDst := func(i int) string {
		return netip.AddrPortFrom(w.addr(p.IPs[i%2].Addr()), portOf(udpEcho.LocalAddr())).String()
	}

	fdsBefore := daemonFDs(t, d)
	// A few flows first, so that whatever the daemon starts once, on
	// first use, is running before the goroutines are counted.
	if err := podFlows(p, 8, 2, tcpDst, udpDst); err != nil {
		t.Fatalf("warm-up flows: %v", err)
	}
	waitFDs(t, d, fdsBefore, udpIdle+10*time.Second, "after the warm-up flows")
	goroutinesBefore := daemonGoroutines(t, d)
	t.Logf("daemon before: %d fds, %d goroutines", fdsBefore, goroutinesBefore)

	const workers, tcpPerWorker, udpPerWorker = 4, 250, 50
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for range workers {
		wg.Go(func() { errs <- podFlows(p, tcpPerWorker, udpPerWorker, tcpDst, udpDst) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	t.Logf("daemon after %d TCP connections and %d UDP flows: %d fds, %d goroutines",
		workers*tcpPerWorker, workers*udpPerWorker, daemonFDs(t, d), daemonGoroutines(t, d))

	waitFDs(t, d, fdsBefore, udpIdle+10*time.Second, "after the flows ended")
	// A leak of one goroutine in a hundred flows would exceed this
	// slack; the slack is for the scrape's own connection and timers.
	const slack = 3
	deadline := time.Now().Add(10 * time.Second)
	for {
		n := daemonGoroutines(t, d)
		if n <= goroutinesBefore+slack {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon runs %d goroutines 10s after the flows ended, %d before", n, goroutinesBefore)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// The gateway counted every flow, and none is open any more.
	body := daemonMetrics(t, d)
	for proto, want := range map[string]int{"tcp": workers * tcpPerWorker, "udp": workers * udpPerWorker} {
		if v := metric(t, body, fmt.Sprintf(`tapswitch_gateway_egress_flows_total{proto=%q}`, proto)); v < float64(want) {
			t.Errorf("tapswitch_gateway_egress_flows_total{proto=%q} = %v, want >= %d", proto, v, want)
		}
		if v := metric(t, body, fmt.Sprintf(`tapswitch_gateway_egress_flows{proto=%q}`, proto)); v != 0 {
			t.Errorf("tapswitch_gateway_egress_flows{proto=%q} = %v after the flows ended, want 0", proto, v)
		}
	}
}

// podFlows runs, from the pod's namespace, nTCP short TCP connections
// (connect, send 100 bytes, read the echo, close) and nUDP UDP flows (one
// datagram from a fresh socket and its echo), alternating between the
// destinations dst(i) gives.
func podFlows(p pod, nTCP, nUDP int, tcpDst, udpDst func(int) string) error {
	return netnsutil.Do(p.ns, func() error {
		msg := []byte(strings.Repeat("tapswitch", 12)[:100])
		buf := make([]byte, len(msg))
		for i := range nTCP {
			if err := echoOnce("tcp", tcpDst(i), msg, buf); err != nil {
				return fmt.Errorf("tcp flow %d: %w", i, err)
			}
		}
		for i := range nUDP {
			if err := echoOnce("udp", udpDst(i), msg, buf); err != nil {
				return fmt.Errorf("udp flow %d: %w", i, err)
			}
		}
		return nil
	})
}

// echoOnce opens a connection to dst, sends msg, reads the echo into buf
// and closes.
func echoOnce(network, dst string, msg, buf []byte) error {
	c, err := net.DialTimeout(network, dst, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(msg); err != nil {
		return err
	}
	if _, err := io.ReadFull(c, buf); err != nil {
		return fmt.Errorf("read echo from %s: %w", dst, err)
	}
	if !bytes.Equal(buf, msg) {
		return fmt.Errorf("echo from %s differs", dst)
	}
	return nil
}

// daemonFDs counts the daemon's open files. ip netns exec execs the
// daemon, so the process the test started is tapswitchd itself.
func daemonFDs(t *testing.T, d *daemonProc) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", d.cmd.Process.Pid))
	if err != nil {
		t.Fatalf("daemon fds: %v", err)
	}
	return len(ents)
}

// waitFDs waits until the daemon has at most want open files, and fails
// t, listing them, if it has more after timeout.
func waitFDs(t *testing.T, d *daemonProc, want int, timeout time.Duration, when string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		n := daemonFDs(t, d)
		if n <= want {
			return
		}
		if time.Now().After(deadline) {
			out, _ := exec.Command("ls", "-l", fmt.Sprintf("/proc/%d/fd", d.cmd.Process.Pid)).CombinedOutput()
			t.Fatalf("%s: the daemon has %d open files %v later, want at most %d:\n%s", when, n, timeout, want, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// daemonGoroutines reads go_goroutines from the daemon's metrics on its
// API socket.
func daemonGoroutines(t *testing.T, d *daemonProc) int {
	t.Helper()
	return int(metric(t, daemonMetrics(t, d), "go_goroutines"))
}

// daemonMetrics scrapes /metrics on the daemon's API socket.
func daemonMetrics(t *testing.T, d *daemonProc) string {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", d.socket)
		},
	}}
	return get(t, hc, "http://tapswitchd/metrics")
}

// TestEgressUnreachable dials, from the pod, addresses the node has an
// unreachable route for: the node's own connect fails at once, and so must
// the pod's, on the gateway's ICMP error, not after its SYN retries. The
// pod's kernel takes the error only if it quotes the SYN's real sequence
// number (tcp_v4_err, tcp_v6_err), which gVisor test pods do not check.
func TestEgressUnreachable(t *testing.T) {
	testutil.RequireRoot(t)
	d, _, p := egressDaemon(t, 51, "egress-unreach")
	node := filepath.Base(d.node)
	ipCmd(t, "-n", node, "route", "add", "unreachable", "198.19.2.0/24")
	ipCmd(t, "-n", node, "-6", "route", "add", "unreachable", "2001:db8:2::/64")
	for _, dst := range []string{"198.19.2.5:80", "[2001:db8:2::5]:80"} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		start := time.Now()
		c, err := nsDialer(p.ns)(ctx, "tcp", dst)
		cancel()
		if err == nil {
			c.Close()
			t.Fatalf("dial %s from the pod succeeded", dst)
		}
		if !errors.Is(err, syscall.EHOSTUNREACH) && !errors.Is(err, syscall.ENETUNREACH) {
			t.Errorf("dial %s from the pod = %v after %v, want no route to host or network unreachable", dst, err, time.Since(start).Round(time.Millisecond))
		}
	}
	if v := metric(t, daemonMetrics(t, d), "tapswitch_gateway_egress_icmp_sent_total"); v < 2 {
		t.Errorf("tapswitch_gateway_egress_icmp_sent_total = %v, want >= 2", v)
	}
}
