package test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"testing"
	"time"

	"tapswitch/daemon/api"
	"tapswitch/internal/netnsutil"
	"tapswitch/internal/testutil"
)

// TestOffloadToNoOffloadTransfer sends a large TCP stream from a pod whose
// TAP has offloads (its kernel hands the switch 64 KiB super-frames) to a
// pod whose TAP has none, so the switch must segment and checksum in
// software, and back the other way. The bytes must arrive exactly.
func TestOffloadToNoOffloadTransfer(t *testing.T) {
	testutil.RequireRoot(t)
	d := startDaemon(t, "")
	a := addPod(t, d, "gso-a")
	off := false
	nsB := testutil.NewNetNS(t)
	pb, err := d.client.AddPod(context.Background(), api.PodRequest{ID: "gso-b", NetNS: nsB, Offloads: &off})
	if err != nil {
		t.Fatal(err)
	}
	b := pod{Pod: pb, ns: nsB}
	if !a.Offloads || b.Offloads {
		t.Fatalf("offloads: a %v, b %v; want a on, b off", a.Offloads, b.Offloads)
	}
	const size = 32 << 20
	for _, dir := range []struct {
		name     string
		from, to pod
	}{{"offload to plain", a, b}, {"plain to offload", b, a}} {
		t.Run(dir.name, func(t *testing.T) {
			got, want := transfer(t, dir.from, dir.to, size)
			if !bytes.Equal(got, want) {
				t.Fatalf("SHA-256 of what %s received = %x, want %x", dir.to.ID, got, want)
			}
		})
	}
	st, err := d.client.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range st.Ports {
		if p.ID == b.PortID && p.Segmented == 0 {
			t.Errorf("port %s: no super-frame was segmented in software: %+v", p.Name, p)
		}
	}
}

// transfer sends size pseudo-random bytes over TCP from src to dst and
// returns the SHA-256 the receiver computed and the one of what was sent.
func transfer(t *testing.T, src, dst pod, size int) (got, want []byte) {
	t.Helper()
	var ln net.Listener
	if err := netnsutil.Do(dst.ns, func() (err error) {
		ln, err = net.Listen("tcp", netip.AddrPortFrom(dst.addr(), 0).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	srvErr := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			srvErr <- err
			return
		}
		defer c.Close()
		h := sha256.New()
		if _, err := io.Copy(h, c); err != nil {
			srvErr <- err
			return
		}
		_, err = c.Write(h.Sum(nil))
		srvErr <- err
	}()

	var c net.Conn
	if err := netnsutil.Do(src.ns, func() (err error) {
		c, err = net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	h := sha256.New()
	rng := rand.NewChaCha8([32]byte{7})
	buf := make([]byte, 1<<20)
	for sent := 0; sent < size; sent += len(buf) {
		rng.Read(buf)
		h.Write(buf)
		if _, err := c.Write(buf); err != nil {
			t.Fatalf("send: %v", err)
		}
	}
	c.(*net.TCPConn).CloseWrite()
	got = make([]byte, sha256.Size)
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read the receiver's hash: %v (server: %v)", err, <-srvErr)
	}
	if err := <-srvErr; err != nil {
		t.Fatalf("receiver: %v", err)
	}
	return got, h.Sum(nil)
}
