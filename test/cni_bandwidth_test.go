package test

import (
	"context"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"tapswitch/internal/testutil"
)

// TestCNIBandwidth attaches a pod with the bandwidth capability, as
// kubelet does for a pod with ingress- and egress-bandwidth annotations,
// and checks both limits act on a TCP stream: the pod's sending is shaped
// by its tbf qdisc, what it receives is policed by the switch. The bounds
// are loose on purpose: they tell a working limit from none, not how
// precise it is (make bench measures, tests assert).
func TestCNIBandwidth(t *testing.T) {
	testutil.RequireRoot(t)
	d := startDaemon(t, "")
	rig := newCNIRig(t, d)
	l := confList(t, "tsw-bw", "1.0.0", tapswitchConf(d.socket, "bandwidth"))

	const ingress, egress = 40e6, 20e6 // bit/s
	limitedRT := k8sRuntime(uniqueID("bw"), testutil.NewNetNS(t), "limited")
	limitedRT.CapabilityArgs = map[string]any{"bandwidth": map[string]uint64{
		"ingressRate": ingress, "ingressBurst": 8e6,
		"egressRate": egress, "egressBurst": 1e6,
	}}
	freeRT := k8sRuntime(uniqueID("bw"), testutil.NewNetNS(t), "free")
	rig.mustAdd(t, l, limitedRT)
	rig.mustAdd(t, l, freeRT)
	limited, free := attachedPod(t, d, limitedRT), attachedPod(t, d, freeRT)
	if limited.Bandwidth == nil || limited.Bandwidth.EgressRate != egress || limited.Bandwidth.IngressRate != ingress {
		t.Fatalf("daemon pod bandwidth %+v, want the runtime's", limited.Bandwidth)
	}
	if free.Bandwidth != nil {
		t.Errorf("pod without limits has bandwidth %+v", free.Bandwidth)
	}
	if err := rig.check(t, l, limitedRT); err != nil {
		t.Errorf("CHECK of the limited pod: %v", err)
	}

	got := tcpRate(t, limited, free, 2*time.Second)
	t.Logf("limited -> free: %.1f Mbit/s (egress limit %.0f)", got/1e6, egress/1e6)
	if got > 1.5*egress || got < 0.3*egress {
		t.Errorf("limited -> free: %.1f Mbit/s, want about the egress limit %.0f", got/1e6, egress/1e6)
	}
	got = tcpRate(t, free, limited, 2*time.Second)
	t.Logf("free -> limited: %.1f Mbit/s (ingress limit %.0f)", got/1e6, ingress/1e6)
	if got > 1.5*ingress || got < 0.2*ingress {
		t.Errorf("free -> limited: %.1f Mbit/s, want about the ingress limit %.0f", got/1e6, ingress/1e6)
	}
	st, err := d.client.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, p := range st.Ports {
		if p.Name == limited.ID {
			found = true
			if p.Drops["policed"] == 0 {
				t.Errorf("the limited pod's port policed nothing: %+v", p.Drops)
			}
		}
	}
	if !found {
		t.Errorf("no port %s in the switch's stats", limited.ID)
	}

	rig.mustDel(t, l, limitedRT)
	rig.mustDel(t, l, freeRT)
	requireNoLeases(t, d)
}

// tcpRate sends as fast as it can from src to dst for about d and returns
// the rate dst received at, in bits per second.
func tcpRate(t *testing.T, src, dst pod, d time.Duration) float64 {
	t.Helper()
	ln := nsListen(t, dst.ns, "tcp", net.JoinHostPort(dst.addr().String(), "0"))
	type result struct {
		n       int64
		elapsed time.Duration
		err     error
	}
	done := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer c.Close()
		start := time.Now()
		n, err := io.Copy(io.Discard, c)
		done <- result{n, time.Since(start), err}
	}()

	ctx, cancel := context.WithTimeout(context.Background(), d+30*time.Second)
	defer cancel()
	c, err := nsDialer(src.ns)(ctx, "tcp", netip.AddrPortFrom(dst.addr(), portOf(ln.Addr())).String())
	if err != nil {
		t.Fatalf("dial %s -> %s: %v", src.ID, dst.ID, err)
	}
	buf := make([]byte, 64<<10)
	c.SetWriteDeadline(time.Now().Add(d))
	for {
		if _, err := c.Write(buf); err != nil {
			break // the deadline
		}
	}
	c.Close()
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatalf("receive %s -> %s: %v", src.ID, dst.ID, r.err)
		}
		return float64(r.n*8) / r.elapsed.Seconds()
	case <-ctx.Done():
		t.Fatalf("receive %s -> %s: no end", src.ID, dst.ID)
		return 0
	}
}
