package test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"tapswitch/daemon/api"
	"tapswitch/internal/testutil"
)

// Port forwards in proxy mode (--egress proxy): a client on the node's
// loopback reaches a server in a pod through the daemon's listener and the
// gateway netstack, and the pod sees the gateway as the client. In route
// mode forwards are DNAT rules instead (route_test.go).

// proxyMode is the flag that keeps forwards userspace proxies.
var proxyMode = []string{"--egress", "proxy"}

// forwardPodServers runs, inside the pod's namespace, an HTTP server on
// port 80 (GET /big answers body, GET /peer the client address the pod
// saw) and a UDP echo server on port 5353, until the test ends.
func forwardPodServers(t *testing.T, p pod, body []byte) {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /big", func(w http.ResponseWriter, r *http.Request) { w.Write(body) })
	mux.HandleFunc("GET /peer", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.RemoteAddr) })
	serveHTTP(t, nsListen(t, p.ns, "tcp4", ":80"), mux)
	serveUDPEcho(t, nsListenPacket(t, p.ns, "udp4", ":5353"), nil)
}

// nodeUDPExchange sends msg to addr from the node until an answer comes
// back (the first datagram may wait for ARP) and returns it.
func nodeUDPExchange(t *testing.T, d *daemonProc, addr string, msg []byte) []byte {
	t.Helper()
	c, err := d.nodeDial(context.Background(), "udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 64<<10)
	for range 10 {
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(time.Second))
		if n, err := c.Read(buf); err == nil {
			return buf[:n]
		}
	}
	t.Fatalf("no udp answer through %s", addr)
	return nil
}

// forwardList runs "tapswitchctl forward list -o json".
func forwardList(t *testing.T, d *daemonProc) []api.Forward {
	t.Helper()
	out, err := d.ctl("forward list", "-o", "json")
	if err != nil {
		t.Fatalf("forward list: %v\n%s", err, out)
	}
	var fws []api.Forward
	if err := json.Unmarshal([]byte(out), &fws); err != nil {
		t.Fatalf("forward list -o json: %v\n%s", err, out)
	}
	return fws
}

func TestForwardTCPAndUDP(t *testing.T) {
	testutil.RequireRoot(t)
	d := startDaemon(t, "", proxyMode...)
	p := addPod(t, d, "fwd-web")
	body := make([]byte, 4<<20)
	rand.Read(body)
	forwardPodServers(t, p, body)

	out, err := d.ctl("forward add", "--listen", "127.0.0.1:8080", "--pod", p.ID, "--port", "80")
	if err != nil {
		t.Fatalf("forward add: %v\n%s", err, out)
	}
	if want := netip.AddrPortFrom(p.addr(), 80).String(); !strings.Contains(out, "127.0.0.1:8080") || !strings.Contains(out, want) {
		t.Errorf("forward add printed %q, want the listen address and %s", out, want)
	}
	out, err = d.ctl("forward add", "--listen", "127.0.0.1:5353", "--proto", "udp", "--pod", p.ID, "--port", "5353", "-o", "json")
	if err != nil {
		t.Fatalf("forward add udp: %v\n%s", err, out)
	}
	var fw api.Forward
	if err := json.Unmarshal([]byte(out), &fw); err != nil || fw.Proto != "udp" || fw.Target != netip.AddrPortFrom(p.addr(), 5353) {
		t.Errorf("forward add -o json = %+v, %v; want udp to %s:5353\n%s", fw, err, p.addr(), out)
	}

	hc := d.nodeHTTPClient()
	if got := get(t, hc, "http://127.0.0.1:8080/big"); !bytes.Equal([]byte(got), body) {
		t.Errorf("GET /big through the forward: %d bytes, want the pod's %d", len(got), len(body))
	}
	peer, err := netip.ParseAddrPort(get(t, hc, "http://127.0.0.1:8080/peer"))
	if err != nil || peer.Addr() != p.Gateways[0] {
		t.Errorf("the pod saw client %v (%v), want the gateway %s", peer, err, p.Gateways[0])
	}
	for i := range 5 {
		msg := fmt.Appendf(nil, "datagram %d", i)
		if got := nodeUDPExchange(t, d, "127.0.0.1:5353", msg); !bytes.Equal(got, msg) {
			t.Errorf("udp echo through the forward = %q, want %q", got, msg)
		}
	}
	if fws := forwardList(t, d); len(fws) != 2 {
		t.Errorf("forward list = %+v, want 2 forwards", fws)
	}
	out, err = d.ctl("forward list")
	if err != nil || !strings.Contains(out, "listening") || !strings.Contains(out, p.ID) {
		t.Errorf("forward list = %q, %v; want a table of listening forwards to %s", out, err, p.ID)
	}

	// Delete one forward: its address refuses connections.
	if out, err := d.ctl("forward del", "--listen", "127.0.0.1:8080"); err != nil {
		t.Fatalf("forward del: %v\n%s", err, out)
	}
	if c, err := d.nodeDial(context.Background(), "tcp", "127.0.0.1:8080"); err == nil {
		c.Close()
		t.Error("127.0.0.1:8080 accepts connections after forward del")
	} else if !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "refused") {
		t.Errorf("dial after forward del: %v, want connection refused", err)
	}
	// Deleting the pod takes its other forward along.
	if out, err := d.ctl("pod del", "--id", p.ID); err != nil {
		t.Fatalf("pod del: %v\n%s", err, out)
	}
	if fws := forwardList(t, d); len(fws) != 0 {
		t.Errorf("forward list after pod del = %+v, want none", fws)
	}
}

func TestForwardCLIErrors(t *testing.T) {
	testutil.RequireRoot(t)
	d := startDaemon(t, "", proxyMode...)
	p := addPod(t, d, "fwd-err")
	if out, err := d.ctl("forward add", "--listen", "127.0.0.1:8080", "--pod", p.ID, "--port", "80"); err != nil {
		t.Fatalf("forward add: %v\n%s", err, out)
	}
	tests := []struct {
		name string
		cmd  string
		args []string
		want string
	}{
		{"unknown pod", "forward add", []string{"--listen", "127.0.0.1:8081", "--pod", "nope", "--port", "80"}, "not found: pod nope"},
		{"duplicate", "forward add", []string{"--listen", "127.0.0.1:8080", "--pod", p.ID, "--port", "81"}, "exists"},
		{"bad proto", "forward add", []string{"--listen", "127.0.0.1:8081", "--pod", p.ID, "--port", "80", "--proto", "sctp"}, "want tcp or udp"},
		{"malformed listen", "forward add", []string{"--listen", "localhost:8081", "--pod", p.ID, "--port", "80"}, "want IP:PORT"},
		{"listen port 0", "forward add", []string{"--listen", "127.0.0.1:0", "--pod", p.ID, "--port", "80"}, "port 0"},
		{"pod port too big", "forward add", []string{"--listen", "127.0.0.1:8081", "--pod", p.ID, "--port", "70000"}, "want 1 to 65535"},
		{"no ipv6 on the pod", "forward add", []string{"--listen", "[::1]:8081", "--pod", p.ID, "--port", "80"}, "no IPv6 address"},
		{"missing flags", "forward add", []string{"--listen", "127.0.0.1:8081"}, "needs --listen, --pod and --port"},
		{"unknown forward", "forward del", []string{"--listen", "127.0.0.1:8081"}, "not found: forward tcp 127.0.0.1:8081"},
		{"wrong proto", "forward del", []string{"--listen", "127.0.0.1:8080", "--proto", "udp"}, "not found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := d.ctl(tt.cmd, tt.args...)
			if err == nil {
				t.Fatalf("tapswitchctl %s %v succeeded, want error:\n%s", tt.cmd, tt.args, out)
			}
			if !strings.Contains(out, tt.want) {
				t.Errorf("tapswitchctl %s %v = %q, want it to mention %q", tt.cmd, tt.args, out, tt.want)
			}
		})
	}
	// Nothing half-made: the first forward alone, and 8081 free on the
	// node.
	if fws := forwardList(t, d); len(fws) != 1 || fws[0].Listen.Port() != 8080 {
		t.Errorf("forwards after the failed adds = %+v, want only 127.0.0.1:8080", fws)
	}
	if c, err := d.nodeDial(context.Background(), "tcp", "127.0.0.1:8081"); err == nil {
		c.Close()
		t.Error("a failed forward add left a listener on 127.0.0.1:8081")
	}
}

func TestForwardSurvivesRestart(t *testing.T) {
	testutil.RequireRoot(t)
	d := startDaemon(t, "", proxyMode...)
	p := addPod(t, d, "fwd-restart")
	body := []byte("still here")
	forwardPodServers(t, p, body)
	if out, err := d.ctl("forward add", "--listen", "127.0.0.1:8080", "--pod", p.ID, "--port", "80"); err != nil {
		t.Fatalf("forward add: %v\n%s", err, out)
	}
	if out, err := d.ctl("forward add", "--listen", "127.0.0.1:5353", "--proto", "udp", "--pod", p.ID, "--port", "5353"); err != nil {
		t.Fatalf("forward add udp: %v\n%s", err, out)
	}
	d.stop(t)

	d2 := startDaemonIn(t, d.node, d.stateDir, proxyMode...)
	if fws := forwardList(t, d2); len(fws) != 2 || fws[0].Error != "" || fws[1].Error != "" {
		t.Fatalf("forwards after restart = %+v, want both, listening", fws)
	}
	if got := get(t, d2.nodeHTTPClient(), "http://127.0.0.1:8080/big"); got != string(body) {
		t.Errorf("GET through the restored forward = %q, want %q", got, body)
	}
	if got := nodeUDPExchange(t, d2, "127.0.0.1:5353", []byte("udp too")); string(got) != "udp too" {
		t.Errorf("udp echo through the restored forward = %q", got)
	}
}
