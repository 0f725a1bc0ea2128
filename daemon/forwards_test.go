package daemon

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
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

	"tapswitch/daemon/api"
	"tapswitch/internal/netnsutil"
	"tapswitch/internal/testutil"
	"tapswitch/ipam"

	"golang.org/x/sys/unix"
)

// The forward tests run the daemon in the test's own namespace (no host
// port), its pods in namespaces the test creates, and the forwards'
// listeners and clients on the loopback addresses 127.0.0.1 and ::1.

// newForwardDaemon returns a dual-stack daemon over stateDir that is not
// serving and is closed when the test ends.
func newForwardDaemon(t *testing.T, stateDir string, udpIdle time.Duration) *Daemon {
	t.Helper()
	var log *slog.Logger
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	d, err := New(Options{
		// In-process daemons share the test's namespace, the
		// machine's: route mode would change its forwarding and
		// nftables. The end-to-end tests run route mode in
		// namespaces of their own.
		Egress:         EgressProxy,
		Logger:         log,
		PodCIDR:        netip.MustParsePrefix("10.252.9.0/29"),
		PodCIDR6:       netip.MustParsePrefix("fd00:252:9::/64"),
		StateDir:       stateDir,
		Socket:         filepath.Join(t.TempDir(), "sock"),
		UDPIdleTimeout: udpIdle,
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// addForwardPod attaches a new namespace as pod id. Its loopback is up:
// the Go runtime probes the kernel's IPv6 support once per process, on the
// first TCP listen, by binding ::1 in whatever namespace that happens; in
// a namespace without loopback the probe fails and wildcard "tcp"
// listeners of the whole test binary become IPv4 only.
func addForwardPod(t *testing.T, d *Daemon, id string) (api.Pod, string) {
	t.Helper()
	ns := testutil.NewNetNS(t)
	if out, err := exec.Command("ip", "-n", filepath.Base(ns), "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up in %s: %v: %s", ns, err, out)
	}
	pod, err := d.AddPod(api.PodRequest{ID: id, NetNS: ns})
	if err != nil {
		t.Fatalf("AddPod(%s): %v", id, err)
	}
	return pod, ns
}

// freeAddr returns a loopback address with a port that is free for both
// TCP and UDP right now.
func freeAddr(t *testing.T, ip string) string {
	t.Helper()
	for range 20 {
		ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		if pc, err := net.ListenPacket("udp", addr); err == nil {
			pc.Close()
			return addr
		}
	}
	t.Fatal("no port free for both tcp and udp")
	return ""
}

// checkFree fails unless addr can be listened on with proto: no forward
// holds it.
func checkFree(t *testing.T, proto, addr string) {
	t.Helper()
	if proto == api.ProtoUDP {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			t.Errorf("udp %s is not free: %v", addr, err)
			return
		}
		pc.Close()
		return
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Errorf("tcp %s is not free: %v", addr, err)
		return
	}
	ln.Close()
}

// podServer serves TCP on port of each pod address family inside the pod's
// namespace with handle, one goroutine per connection, until the test
// ends. Then it closes the connections still open: a pod that was deleted
// never ends them.
func podServer(t *testing.T, ns string, port int, handle func(c *net.TCPConn)) {
	t.Helper()
	// One listener per family: a wildcard "tcp" listener is IPv4 only if
	// the Go runtime probed for IPv6 in a namespace without loopback.
	for _, network := range []string{"tcp4", "tcp6"} {
		var ln net.Listener
		err := netnsutil.Do(ns, func() (err error) {
			ln, err = net.Listen(network, fmt.Sprintf(":%d", port))
			return err
		})
		if err != nil {
			t.Fatalf("listen in pod: %v", err)
		}
		serve(t, ln, handle)
	}
}

// serve runs handle for each connection ln accepts until the test ends.
func serve(t *testing.T, ln net.Listener, handle func(c *net.TCPConn)) {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex // guards conns
		conns = make(map[net.Conn]bool)
	)
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Go(func() {
				defer func() {
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
					c.Close()
				}()
				handle(c.(*net.TCPConn))
			})
		}
	})
}

// podUDPEcho answers every datagram to port inside the pod's namespace
// with the same bytes, until the test ends.
func podUDPEcho(t *testing.T, ns string, port int) {
	t.Helper()
	for _, network := range []string{"udp4", "udp6"} {
		var pc net.PacketConn
		err := netnsutil.Do(ns, func() (err error) {
			pc, err = net.ListenPacket(network, fmt.Sprintf(":%d", port))
			return err
		})
		if err != nil {
			t.Fatalf("listen udp in pod: %v", err)
		}
		udpEcho(t, pc)
	}
}

// udpEcho answers every datagram pc receives with the same bytes, until
// the test ends.
func udpEcho(t *testing.T, pc net.PacketConn) {
	var wg sync.WaitGroup
	t.Cleanup(func() {
		pc.Close()
		wg.Wait()
	})
	wg.Go(func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	})
}

// echo copies what the client sends back to it and half-closes when the
// client did.
func echo(c *net.TCPConn) {
	if _, err := io.Copy(c, c); err == nil {
		c.CloseWrite()
	}
}

// roundTrip sends payload on a new connection to addr, half-closes, and
// returns everything read back until EOF.
func roundTrip(t *testing.T, addr string, payload []byte) []byte {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Minute))
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		werr <- err
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read from %s: %v", addr, err)
	}
	if err := <-werr; err != nil {
		t.Fatalf("write to %s: %v", addr, err)
	}
	return got
}

func randomBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestForwardTCP(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.CheckGoroutines(t)
	d := newForwardDaemon(t, t.TempDir(), 0)
	pod, ns := addForwardPod(t, d, "web")
	var peers sync.Map // the clients' addresses as the pod's servers saw them
	podServer(t, ns, 8080, func(c *net.TCPConn) {
		peers.Store(c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr(), true)
		echo(c)
	})
	// The pod speaks first and half-closes, then reads what the client
	// sends after it saw the pod's FIN.
	late := make(chan []byte, 1)
	podServer(t, ns, 8081, func(c *net.TCPConn) {
		c.Write([]byte("banner"))
		c.CloseWrite()
		b, _ := io.ReadAll(c)
		late <- b
	})

	for _, listen := range []string{freeAddr(t, "127.0.0.1"), freeAddr(t, "::1")} {
		t.Run(listen, func(t *testing.T) {
			fw, err := d.AddForward(api.ForwardRequest{Listen: listen, Pod: "web", Port: 8080})
			if err != nil {
				t.Fatalf("AddForward: %v", err)
			}
			want := pod.IPs[0].Addr()
			if netip.MustParseAddrPort(listen).Addr().Is6() {
				want = pod.IPs[1].Addr()
			}
			if fw.Target != netip.AddrPortFrom(want, 8080) || fw.Proto != api.ProtoTCP {
				t.Errorf("AddForward = %+v, want tcp to %s:8080", fw, want)
			}
			payload := randomBytes(t, 4<<20)
			if got := roundTrip(t, listen, payload); !bytes.Equal(got, payload) {
				t.Fatalf("echo through %s: got %d bytes, want the %d sent", listen, len(got), len(payload))
			}
			// Many short connections, one after the other.
			for i := range 20 {
				msg := fmt.Appendf(nil, "hello %d", i)
				if got := roundTrip(t, listen, msg); !bytes.Equal(got, msg) {
					t.Fatalf("short echo %d = %q, want %q", i, got, msg)
				}
			}
		})
	}
	// The pod saw the gateway as the client.
	peers.Range(func(k, _ any) bool {
		if a := k.(netip.Addr); a != ipam.Gateway(d.opts.PodCIDR) && a != ipam.Gateway(d.opts.PodCIDR6) {
			t.Errorf("pod server saw client %s, want a gateway address", a)
		}
		return true
	})

	t.Run("half-close from the pod", func(t *testing.T) {
		listen := freeAddr(t, "127.0.0.1")
		if _, err := d.AddForward(api.ForwardRequest{Listen: listen, Pod: "web", Port: 8081}); err != nil {
			t.Fatalf("AddForward: %v", err)
		}
		c, err := net.Dial("tcp", listen)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(time.Minute))
		banner, err := io.ReadAll(c) // ends with the pod's FIN
		if err != nil || string(banner) != "banner" {
			t.Fatalf("read banner = %q, %v; want banner then EOF", banner, err)
		}
		if _, err := c.Write([]byte("after your fin")); err != nil {
			t.Fatal(err)
		}
		c.(*net.TCPConn).CloseWrite()
		if got := <-late; string(got) != "after your fin" {
			t.Errorf("pod read %q after its half-close, want %q", got, "after your fin")
		}
	})

	t.Run("refused", func(t *testing.T) {
		listen := freeAddr(t, "127.0.0.1")
		if _, err := d.AddForward(api.ForwardRequest{Listen: listen, Pod: "web", Port: 9}); err != nil {
			t.Fatalf("AddForward: %v", err)
		}
		// The reset may come before the kernel's connect returns.
		c, err := net.Dial("tcp", listen)
		if err == nil {
			defer c.Close()
			c.SetDeadline(time.Now().Add(time.Minute))
			_, err = c.Read(make([]byte, 1))
		}
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("connection to a forward to a closed pod port: %v, want connection reset", err)
		}
		// The metrics count the forwards and the failed connect.
		rec := httptest.NewRecorder()
		d.metrics.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		body := rec.Body.String()
		for _, want := range []string{
			"tapswitch_forwards 4\n",
			fmt.Sprintf("tapswitch_forward_dial_errors_total{listen=%q,pod=\"web\",proto=\"tcp\"} 1\n", listen),
			fmt.Sprintf("tapswitch_forward_not_listening{listen=%q,pod=\"web\",proto=\"tcp\"} 0\n", listen),
		} {
			if !strings.Contains(body, want) {
				t.Errorf("metrics lack %q:\n%s", want, body)
			}
		}
	})
}

func TestForwardUDP(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.CheckGoroutines(t)
	const idle = 300 * time.Millisecond
	d := newForwardDaemon(t, t.TempDir(), idle)
	_, ns := addForwardPod(t, d, "dns")
	podUDPEcho(t, ns, 5353)
	listen := freeAddr(t, "127.0.0.1")
	fw, err := d.AddForward(api.ForwardRequest{Listen: listen, Proto: "udp", Pod: "dns", Port: 5353})
	if err != nil {
		t.Fatalf("AddForward: %v", err)
	}
	// Two clients: each gets its own answers back.
	var clients []net.Conn
	for range 2 {
		c, err := net.Dial("udp", listen)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		clients = append(clients, c)
	}
	for i := range 10 {
		for j, c := range clients {
			msg := fmt.Appendf(nil, "client %d datagram %d", j, i)
			if got := udpExchange(t, c, msg); !bytes.Equal(got, msg) {
				t.Fatalf("udp echo = %q, want %q", got, msg)
			}
		}
	}
	big := randomBytes(t, 8000) // fragmented on a 1500 byte link
	if got := udpExchange(t, clients[0], big); !bytes.Equal(got, big) {
		t.Fatalf("udp echo of %d bytes = %d bytes, different", len(big), len(got))
	}
	f := d.forwards[keyOf(fw)]
	if st := f.stats(); st.active != 2 || st.conns != 2 {
		t.Errorf("forward stats = %d flows open, %d opened; want 2 and 2", st.active, st.conns)
	}
	// Idle flows expire; a client that speaks again gets a new one.
	testutil.WaitFor(t, "udp flows to expire", func() bool { return f.stats().active == 0 })
	if got := udpExchange(t, clients[1], []byte("again")); string(got) != "again" {
		t.Errorf("udp echo after expiry = %q, want again", got)
	}
	if st := f.stats(); st.conns != 3 {
		t.Errorf("flows opened = %d, want 3", st.conns)
	}
}

// udpExchange sends msg on c until an answer comes back (the first
// datagram may wait for neighbour resolution) and returns the answer.
func udpExchange(t *testing.T, c net.Conn, msg []byte) []byte {
	t.Helper()
	buf := make([]byte, 65535)
	for range 10 {
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(time.Second))
		n, err := c.Read(buf)
		if err == nil {
			return buf[:n]
		}
	}
	t.Fatalf("no udp answer through %s", c.RemoteAddr())
	return nil
}

func TestForwardBadInputLeavesNothing(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.CheckGoroutines(t)
	state := t.TempDir()
	d := newForwardDaemon(t, state, 0)
	addForwardPod(t, d, "p")
	existing := freeAddr(t, "127.0.0.1")
	if _, err := d.AddForward(api.ForwardRequest{Listen: existing, Pod: "p", Port: 80}); err != nil {
		t.Fatalf("AddForward: %v", err)
	}
	held, err := net.Listen("tcp", freeAddr(t, "127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	free := freeAddr(t, "127.0.0.1")
	before := d.Forwards()

	tests := []struct {
		name string
		req  api.ForwardRequest
		want error
	}{
		{"unknown pod", api.ForwardRequest{Listen: free, Pod: "nope", Port: 80}, ErrNotFound},
		{"bad pod id", api.ForwardRequest{Listen: free, Pod: "a/b", Port: 80}, ErrInvalid},
		{"bad proto", api.ForwardRequest{Listen: free, Proto: "sctp", Pod: "p", Port: 80}, ErrInvalid},
		{"upper-case proto", api.ForwardRequest{Listen: free, Proto: "TCP", Pod: "p", Port: 80}, ErrInvalid},
		{"host name", api.ForwardRequest{Listen: "localhost:8080", Pod: "p", Port: 80}, ErrInvalid},
		{"no port", api.ForwardRequest{Listen: "127.0.0.1", Pod: "p", Port: 80}, ErrInvalid},
		{"port too big", api.ForwardRequest{Listen: "127.0.0.1:65536", Pod: "p", Port: 80}, ErrInvalid},
		{"empty listen", api.ForwardRequest{Pod: "p", Port: 80}, ErrInvalid},
		{"listen port 0", api.ForwardRequest{Listen: "127.0.0.1:0", Pod: "p", Port: 80}, ErrInvalid},
		{"multicast", api.ForwardRequest{Listen: "224.0.0.251:5353", Proto: "udp", Pod: "p", Port: 80}, ErrInvalid},
		{"pod port 0", api.ForwardRequest{Listen: free, Pod: "p", Port: 0}, ErrInvalid},
		{"pod port too big", api.ForwardRequest{Listen: free, Pod: "p", Port: 65536}, ErrInvalid},
		{"not a host address", api.ForwardRequest{Listen: "192.0.2.1:8080", Pod: "p", Port: 80}, ErrInvalid},
		{"duplicate", api.ForwardRequest{Listen: existing, Pod: "p", Port: 81}, ErrConflict},
		{"in use by another socket", api.ForwardRequest{Listen: held.Addr().String(), Pod: "p", Port: 80}, ErrConflict},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fw, err := d.AddForward(tt.req)
			if !errors.Is(err, tt.want) {
				t.Fatalf("AddForward(%+v) = %+v, %v; want %v", tt.req, fw, err, tt.want)
			}
			t.Logf("error: %v", err)
			checkNothingChanged(t, d, before)
			checkFree(t, api.ProtoTCP, free)
		})
	}

	t.Run("no ipv6 address", func(t *testing.T) {
		d4 := newTestDaemon(t, t.TempDir()) // IPv4 only
		addForwardPod(t, d4, "p4")
		_, err := d4.AddForward(api.ForwardRequest{Listen: freeAddr(t, "::1"), Pod: "p4", Port: 80})
		if !errors.Is(err, ErrInvalid) {
			t.Fatalf("AddForward of [::1] to a pod without IPv6 = %v, want ErrInvalid", err)
		}
		t.Logf("error: %v", err)
		if fws := d4.Forwards(); len(fws) != 0 {
			t.Errorf("forwards = %+v, want none", fws)
		}
	})

	t.Run("failed save", func(t *testing.T) {
		// A directory where the temporary state file goes makes the
		// save fail after the listener was opened.
		tmp := filepath.Join(state, "pods.json.tmp")
		if err := os.Mkdir(tmp, 0o700); err != nil {
			t.Fatal(err)
		}
		defer os.Remove(tmp)
		if _, err := d.AddForward(api.ForwardRequest{Listen: free, Pod: "p", Port: 80}); err == nil {
			t.Fatal("AddForward with an unwritable state succeeded")
		}
		checkNothingChanged(t, d, before)
		checkFree(t, api.ProtoTCP, free)
		// A delete whose save fails keeps the forward, listening.
		if err := d.DeleteForward("tcp", existing); err == nil {
			t.Fatal("DeleteForward with an unwritable state succeeded")
		}
		checkNothingChanged(t, d, before)
		if ln, err := net.Listen("tcp", existing); err == nil {
			ln.Close()
			t.Errorf("forward stopped listening after a failed delete: %s is free", existing)
		}
	})

	t.Run("delete", func(t *testing.T) {
		for _, tc := range []struct{ proto, listen string }{{"tcp", free}, {"udp", existing}, {"sctp", existing}, {"tcp", "nonsense"}} {
			if err := d.DeleteForward(tc.proto, tc.listen); err == nil {
				t.Errorf("DeleteForward(%s, %s) succeeded, want an error", tc.proto, tc.listen)
			}
		}
		checkNothingChanged(t, d, before)
		if err := d.DeleteForward("", existing); err != nil {
			t.Fatalf("DeleteForward(tcp %s): %v", existing, err)
		}
		checkFree(t, api.ProtoTCP, existing)
		if fws := d.Forwards(); len(fws) != 0 {
			t.Errorf("forwards after delete = %+v, want none", fws)
		}
	})
}

// checkNothingChanged fails unless d's forwards, in memory and on disk,
// are want.
func checkNothingChanged(t *testing.T, d *Daemon, want []api.Forward) {
	t.Helper()
	if got := d.Forwards(); !slices.Equal(got, want) {
		t.Errorf("forwards = %+v, want %+v", got, want)
	}
	st, err := d.state.read()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(st.Forwards, want) {
		t.Errorf("saved forwards = %+v, want %+v", st.Forwards, want)
	}
}

func TestForwardsGoWithTheirPod(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.CheckGoroutines(t)
	d := newForwardDaemon(t, t.TempDir(), 0)
	_, ns := addForwardPod(t, d, "gone")
	addForwardPod(t, d, "stays")
	podServer(t, ns, 8080, echo)
	tcpAddr, udpAddr, other := freeAddr(t, "127.0.0.1"), freeAddr(t, "127.0.0.1"), freeAddr(t, "127.0.0.1")
	for _, req := range []api.ForwardRequest{
		{Listen: tcpAddr, Pod: "gone", Port: 8080},
		{Listen: udpAddr, Proto: "udp", Pod: "gone", Port: 53},
		{Listen: other, Pod: "stays", Port: 80},
	} {
		if _, err := d.AddForward(req); err != nil {
			t.Fatalf("AddForward(%+v): %v", req, err)
		}
	}
	// An open connection through the forward ends with the pod.
	c, err := net.Dial("tcp", tcpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(time.Minute))
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatalf("echo before the delete: %v", err)
	}

	if err := d.DeletePod("gone"); err != nil {
		t.Fatalf("DeletePod: %v", err)
	}
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("connection through the deleted pod's forward still open")
	}
	checkFree(t, api.ProtoTCP, tcpAddr)
	checkFree(t, api.ProtoUDP, udpAddr)
	fws := d.Forwards()
	if len(fws) != 1 || fws[0].Pod != "stays" {
		t.Errorf("forwards after the pod's delete = %+v, want only the one to pod stays", fws)
	}
	st, err := d.state.read()
	if err != nil || len(st.Forwards) != 1 || st.Forwards[0].Pod != "stays" {
		t.Errorf("saved forwards = %+v, %v; want only the one to pod stays", st.Forwards, err)
	}
}

func TestForwardsRestored(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.CheckGoroutines(t)
	state := t.TempDir()
	d := newForwardDaemon(t, state, 0)
	_, ns := addForwardPod(t, d, "web")
	podServer(t, ns, 8080, echo)
	podUDPEcho(t, ns, 5353)
	tcpAddr, udpAddr, taken := freeAddr(t, "127.0.0.1"), freeAddr(t, "::1"), freeAddr(t, "127.0.0.1")
	for _, req := range []api.ForwardRequest{
		{Listen: tcpAddr, Pod: "web", Port: 8080},
		{Listen: udpAddr, Proto: "udp", Pod: "web", Port: 5353},
		{Listen: taken, Pod: "web", Port: 8080},
	} {
		if _, err := d.AddForward(req); err != nil {
			t.Fatalf("AddForward(%+v): %v", req, err)
		}
	}
	want := d.Forwards()
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	// Close stops listening but keeps the forwards on disk.
	checkFree(t, api.ProtoTCP, tcpAddr)
	checkFree(t, api.ProtoUDP, udpAddr)
	// Another process takes one forward's address while the daemon is
	// down.
	held, err := net.Listen("tcp", taken)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()

	d2 := newForwardDaemon(t, state, 0)
	got := d2.Forwards()
	if len(got) != len(want) {
		t.Fatalf("forwards after restart = %+v, want %+v", got, want)
	}
	for i := range got {
		failed := got[i].Listen.String() == taken
		if failed != (got[i].Error != "") {
			t.Errorf("restored forward %+v: error %q, want one only for the taken address %s", got[i], got[i].Error, taken)
		}
		got[i].Error = ""
		if got[i] != want[i] {
			t.Errorf("restored forward %+v, want %+v", got[i], want[i])
		}
	}
	// The forward that could not listen is kept on disk.
	if st, err := d2.state.read(); err != nil || len(st.Forwards) != 3 {
		t.Errorf("saved forwards after restart = %+v, %v; want all 3", st.Forwards, err)
	}
	msg := []byte("after the restart")
	if got := roundTrip(t, tcpAddr, msg); !bytes.Equal(got, msg) {
		t.Errorf("tcp echo after restart = %q, want %q", got, msg)
	}
	c, err := net.Dial("udp", udpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := udpExchange(t, c, msg); !bytes.Equal(got, msg) {
		t.Errorf("udp echo after restart = %q, want %q", got, msg)
	}
	// The failed one can be deleted and added again once its address
	// is free.
	if err := d2.DeleteForward("tcp", taken); err != nil {
		t.Fatalf("DeleteForward of the failed forward: %v", err)
	}
	held.Close()
	if _, err := d2.AddForward(api.ForwardRequest{Listen: taken, Pod: "web", Port: 8080}); err != nil {
		t.Fatalf("AddForward again: %v", err)
	}
	if got := roundTrip(t, taken, msg); !bytes.Equal(got, msg) {
		t.Errorf("tcp echo through the re-added forward = %q, want %q", got, msg)
	}
}

func TestRestoreDropsForwardsOfForgottenPods(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNetNS(t)
	ready := testPod("ready", ns, "10.252.9.2/28")
	leftoverTAP(t, ready)
	gone := testPod("gone", "/var/run/netns/tsw-test-never-made", "10.252.9.3/28")
	readyFwd := api.Forward{Listen: netip.MustParseAddrPort(freeAddr(t, "127.0.0.1")), Proto: api.ProtoTCP, Pod: "ready", Port: 80}
	goneFwd := api.Forward{Listen: netip.MustParseAddrPort(freeAddr(t, "127.0.0.1")), Proto: api.ProtoUDP, Pod: "gone", Port: 53}
	unknownFwd := api.Forward{Listen: netip.MustParseAddrPort(freeAddr(t, "127.0.0.1")), Proto: api.ProtoTCP, Pod: "never", Port: 80}
	state := t.TempDir()
	seedLeases(t, state, ready, gone)
	s, err := openState(filepath.Join(state, "pods.json"))
	if err != nil {
		t.Fatal(err)
	}
	err = s.write(savedState{
		Pods:     []savedPod{{Pod: ready}, {Pod: gone}},
		Forwards: []api.Forward{readyFwd, goneFwd, unknownFwd},
	})
	s.close()
	if err != nil {
		t.Fatal(err)
	}

	d := newTestDaemon(t, state)
	fws := d.Forwards()
	if len(fws) != 1 || fws[0].Listen != readyFwd.Listen || fws[0].Target != netip.MustParseAddrPort("10.252.9.2:80") {
		t.Fatalf("forwards after restore = %+v, want only %+v to 10.252.9.2:80", fws, readyFwd)
	}
	checkFree(t, api.ProtoUDP, goneFwd.Listen.String())
	checkFree(t, api.ProtoTCP, unknownFwd.Listen.String())
	st, err := d.state.read()
	if err != nil || len(st.Forwards) != 1 || st.Forwards[0].Pod != "ready" {
		t.Errorf("saved forwards after restore = %+v, %v; want only the ready pod's", st.Forwards, err)
	}
}

func TestStateWithoutForwards(t *testing.T) {
	// A file written before forwards existed still loads, with none.
	dir := t.TempDir()
	s, err := openState(filepath.Join(dir, "pods.json"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	old := `{"version": 1, "pods": [{"id": "a", "netns": "/x", "ifname": "eth0", "mac": "02:00:00:00:00:01", "ips": ["10.0.0.2/24"], "gateways": ["10.0.0.1"], "mtu": 1500, "port": "a", "port_id": 3, "created": "2024-01-01T00:00:00Z"}]}`
	if err := os.WriteFile(s.path, []byte(old), 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := s.read()
	if err != nil || len(st.Pods) != 1 || st.Pods[0].ID != "a" || st.Forwards != nil {
		t.Fatalf("read of a pods-only file = %+v, %v; want pod a and no forwards", st, err)
	}
	// And forwards round-trip.
	fw := api.Forward{Listen: netip.MustParseAddrPort("[::1]:8080"), Proto: api.ProtoUDP, Pod: "a", Port: 53,
		Target: netip.MustParseAddrPort("[fd00::2]:53"), Created: time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)}
	if err := s.write(savedState{Pods: st.Pods, Forwards: []api.Forward{fw}}); err != nil {
		t.Fatal(err)
	}
	st, err = s.read()
	if err != nil || len(st.Forwards) != 1 || st.Forwards[0] != fw {
		t.Fatalf("read = %+v, %v; want forward %+v", st.Forwards, err, fw)
	}
}

func TestCopyLoopHalfClose(t *testing.T) {
	// copyLoop over loopback TCP: an EOF is passed on as a half-close
	// and the other direction keeps going.
	pair := func() (a, b *net.TCPConn) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		return c.(*net.TCPConn), s.(*net.TCPConn)
	}
	client, proxyIn := pair()
	proxyOut, server := pair()
	defer client.Close()
	defer server.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		var wg sync.WaitGroup
		wg.Go(func() { copyLoop(proxyOut, proxyIn) })
		copyLoop(proxyIn, proxyOut)
		wg.Wait()
		proxyIn.Close()
		proxyOut.Close()
	}()
	client.Write([]byte("request"))
	client.CloseWrite()
	req, err := io.ReadAll(server)
	if err != nil || string(req) != "request" {
		t.Fatalf("server read %q, %v; want request then EOF", req, err)
	}
	server.Write([]byte("response"))
	server.CloseWrite()
	resp, err := io.ReadAll(client)
	if err != nil || string(resp) != "response" {
		t.Fatalf("client read %q, %v; want response then EOF", resp, err)
	}
	<-done
}

func TestForwardAPI(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.CheckGoroutines(t)
	d := newForwardDaemon(t, t.TempDir(), 0)
	addForwardPod(t, d, "api")
	sock := filepath.Join(t.TempDir(), "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: d.handler()}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	c := api.NewClient(sock)
	ctx := context.Background()
	listen := freeAddr(t, "::1")

	fw, err := c.AddForward(ctx, api.ForwardRequest{Listen: listen, Proto: "udp", Pod: "api", Port: 53})
	if err != nil || fw.Listen.String() != listen || fw.Proto != "udp" || fw.Pod != "api" || fw.Port != 53 {
		t.Fatalf("AddForward = %+v, %v", fw, err)
	}
	for _, tt := range []struct {
		req    api.ForwardRequest
		status int
	}{
		{api.ForwardRequest{Listen: listen, Proto: "udp", Pod: "api", Port: 54}, http.StatusConflict},
		{api.ForwardRequest{Listen: listen, Proto: "icmp", Pod: "api", Port: 54}, http.StatusBadRequest},
		{api.ForwardRequest{Listen: listen, Pod: "ghost", Port: 54}, http.StatusNotFound},
	} {
		var ae *api.APIError
		if _, err := c.AddForward(ctx, tt.req); !errors.As(err, &ae) || ae.Status != tt.status {
			t.Errorf("AddForward(%+v) = %v, want HTTP %d", tt.req, err, tt.status)
		}
	}
	fws, err := c.Forwards(ctx)
	if err != nil || len(fws) != 1 || fws[0] != fw {
		t.Fatalf("Forwards = %+v, %v; want [%+v]", fws, err, fw)
	}
	var ae *api.APIError
	if err := c.DeleteForward(ctx, "tcp", listen); !errors.As(err, &ae) || ae.Status != http.StatusNotFound {
		t.Errorf("DeleteForward of the wrong proto = %v, want HTTP 404", err)
	}
	if err := c.DeleteForward(ctx, "udp", listen); err != nil {
		t.Fatalf("DeleteForward(udp %s): %v", listen, err)
	}
	checkFree(t, api.ProtoUDP, listen)
	if fws, err := c.Forwards(ctx); err != nil || len(fws) != 0 {
		t.Errorf("Forwards after delete = %+v, %v; want none", fws, err)
	}
}

// TestForwardUDPWildcardRepliesFromLocalAddress checks that a UDP forward
// on a wildcard address (Kubernetes' hostPort without hostIP) answers each
// client from the address the client sent to (RFC 1122 section 3.3.4.2),
// not from whichever source the route back to the client prefers. A
// connected client socket, as resolvers use, drops datagrams from any
// other address.
func TestForwardUDPWildcardRepliesFromLocalAddress(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.CheckGoroutines(t)
	d := newForwardDaemon(t, t.TempDir(), 0)
	_, podNS := addForwardPod(t, d, "echo")
	podUDPEcho(t, podNS, 5353)

	// A namespace of the test's own plays the node, so the IPv6 case has
	// a second local address: its loopback has 127.0.0.0/8, ::1 and
	// 2001:db8:4::2. The forwards listen and the clients send in it. The
	// client sends from the first address: the route back to it picks
	// that address as the source, so without the fix the answer to the
	// second address comes from the wrong one.
	node := testutil.NewNetNS(t)
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		{"-6", "addr", "add", "2001:db8:4::2/128", "dev", "lo", "nodad"},
	} {
		args = append([]string{"-n", filepath.Base(node)}, args...)
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	inNode := func(fn func() error) {
		t.Helper()
		if err := netnsutil.Do(node, fn); err != nil {
			t.Fatal(err)
		}
	}
	const port = 5353 // free: nothing else listens in the node namespace
	for _, tc := range []struct {
		network string
		listen  netip.Addr
		locals  []netip.Addr // the node addresses clients send to; the first is theirs too
	}{
		{"udp4", netip.IPv4Unspecified(), []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2")}},
		{"udp6", netip.IPv6Unspecified(), []netip.Addr{netip.IPv6Loopback(), netip.MustParseAddr("2001:db8:4::2")}},
	} {
		t.Run(tc.network, func(t *testing.T) {
			listen := netip.AddrPortFrom(tc.listen, port)
			var fw api.Forward
			inNode(func() (err error) {
				fw, err = d.AddForward(api.ForwardRequest{Listen: listen.String(), Proto: api.ProtoUDP, Pod: "echo", Port: 5353})
				return err
			})
			t.Cleanup(func() { // before the node namespace goes
				if err := d.DeleteForward(api.ProtoUDP, listen.String()); err != nil {
					t.Errorf("DeleteForward: %v", err)
				}
			})
			clientAddr := net.UDPAddrFromAddrPort(netip.AddrPortFrom(tc.locals[0], 0))

			// One connected client per node address.
			for _, local := range tc.locals {
				var c *net.UDPConn
				inNode(func() (err error) {
					c, err = net.DialUDP(tc.network, clientAddr, net.UDPAddrFromAddrPort(netip.AddrPortFrom(local, port)))
					return err
				})
				defer c.Close()
				msg := fmt.Appendf(nil, "connected, to %s", local)
				if got := udpExchange(t, c, msg); !bytes.Equal(got, msg) {
					t.Fatalf("udp echo through %s = %q, want %q", local, got, msg)
				}
			}

			// One unconnected client that talks to both addresses: each
			// address answers from itself, on a flow of its own.
			var pc *net.UDPConn
			inNode(func() (err error) {
				pc, err = net.ListenUDP(tc.network, clientAddr)
				return err
			})
			defer pc.Close()
			for i := range 3 {
				for _, local := range tc.locals {
					dst := netip.AddrPortFrom(local, port)
					msg := fmt.Appendf(nil, "unconnected %d, to %s", i, local)
					if from := udpExchangeFrom(t, pc, dst, msg); from != dst {
						t.Fatalf("echo of a datagram to %s came from %s", dst, from)
					}
				}
			}
			if st := d.forwards[keyOf(fw)].stats(); st.active != 4 || st.conns != 4 {
				t.Errorf("forward stats = %d flows open, %d opened; want 4 and 4 (two connected clients, one client to two addresses)", st.active, st.conns)
			}
		})
	}
}

// udpExchangeFrom sends msg from pc to dst until the same bytes come back
// (the first datagram may wait for neighbour resolution) and returns the
// address the answer came from. Late answers to earlier messages are
// skipped.
func udpExchangeFrom(t *testing.T, pc *net.UDPConn, dst netip.AddrPort, msg []byte) netip.AddrPort {
	t.Helper()
	buf := make([]byte, 65535)
	for range 10 {
		if _, err := pc.WriteToUDPAddrPort(msg, dst); err != nil {
			t.Fatal(err)
		}
		pc.SetReadDeadline(time.Now().Add(time.Second))
		for {
			n, from, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				break
			}
			if bytes.Equal(buf[:n], msg) {
				return netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
			}
		}
	}
	t.Fatalf("no udp answer from %s", dst)
	return netip.AddrPort{}
}

// TestForwardPktinfo runs the pktinfo helpers (forwarder_linux.go) on
// wildcard sockets on this namespace's loopback, without a daemon: the
// answer to a connected client comes from the address it sent to, for
// IPv4, IPv6, and IPv4 on a dual-stack IPv6 socket (v4-mapped
// IPV6_PKTINFO both ways; the forwards' own IPv6 sockets are IPv6 only),
// and a datagram's round trip through them does not allocate.
func TestForwardPktinfo(t *testing.T) {
	for _, tc := range []struct {
		name    string
		network string // the server's; "udp" on [::] is dual-stack
		listen  string
		v6      bool // the server socket's family
		client  netip.Addr
		dst     netip.Addr // not the client's address, where there is another
	}{
		{"ipv4", "udp4", "0.0.0.0:0", false, netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2")},
		{"ipv4 on dual-stack ipv6", "udp", "[::]:0", true, netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2")},
		{"ipv6", "udp6", "[::]:0", true, netip.IPv6Loopback(), netip.IPv6Loopback()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, err := net.ListenUDP(tc.network, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(tc.listen)))
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Close()
			if err := enablePktinfo(srv, tc.v6); err != nil {
				t.Fatal(err)
			}
			dst := netip.AddrPortFrom(tc.dst, srv.LocalAddr().(*net.UDPAddr).AddrPort().Port())
			c, err := net.DialUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(tc.client, 0)), net.UDPAddrFromAddrPort(dst))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			deadline := time.Now().Add(10 * time.Second) // a datagram from the wrong source never comes
			srv.SetDeadline(deadline)
			c.SetDeadline(deadline)
			src := pktinfoSrc(tc.dst, tc.v6)
			msg, buf, oob := []byte("ping"), make([]byte, 64), newPktinfoBuffer()
			exchange := func() {
				if _, err := c.Write(msg); err != nil {
					t.Fatal(err)
				}
				n, oobn, _, from, err := srv.ReadMsgUDPAddrPort(buf, oob)
				if err != nil {
					t.Fatal(err)
				}
				if local := pktinfoDst(oob[:oobn]); local != tc.dst {
					t.Fatalf("pktinfoDst = %v, want %v", local, tc.dst)
				}
				if _, _, err := srv.WriteMsgUDPAddrPort(buf[:n], src, from); err != nil {
					t.Fatalf("WriteMsgUDPAddrPort from %v to %v: %v", tc.dst, from, err)
				}
				if n, err := c.Read(buf); err != nil || !bytes.Equal(buf[:n], msg) {
					t.Fatalf("client read %q, %v; want %q", buf[:n], err, msg)
				}
			}
			exchange()
			if n := testing.AllocsPerRun(100, exchange); n != 0 {
				t.Errorf("a datagram's round trip allocates %v times, want 0", n)
			}
		})
	}

	t.Run("parse", func(t *testing.T) {
		v4 := pktinfoSrc(netip.MustParseAddr("192.0.2.7"), false)
		v6 := pktinfoSrc(netip.MustParseAddr("2001:db8::7"), true)
		rights := unix.UnixRights(0) // another control message first
		for _, tt := range []struct {
			name string
			oob  []byte
			want netip.Addr
		}{
			{"none", nil, netip.Addr{}},
			{"shorter than a header", v4[:4], netip.Addr{}},
			{"truncated", v4[:unix.CmsgLen(0)+4], netip.Addr{}},
			{"in_pktinfo", v4, netip.MustParseAddr("192.0.2.7")},
			{"in6_pktinfo", v6, netip.MustParseAddr("2001:db8::7")},
			{"after another message", append(rights, v6...), netip.MustParseAddr("2001:db8::7")},
			{"v4-mapped", pktinfoSrc(netip.MustParseAddr("192.0.2.7"), true), netip.MustParseAddr("192.0.2.7")},
		} {
			if got := pktinfoDst(tt.oob); got != tt.want {
				t.Errorf("%s: pktinfoDst = %v, want %v", tt.name, got, tt.want)
			}
		}
	})
}
