package netstack

import (
	"bytes"
	"io"
	"math/rand/v2"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"

	vswitch "tapswitch/switch"
)

// TestBulkTransferUsesSuperFrames sends 8 MiB each way between a pod stack
// and a listener on the gateway, over IPv4 and IPv6, and checks the bytes
// and that the data crossed the switch as GSO super-frames with partial
// checksums: far fewer frames than MSS-sized segments would take, none of
// them segmented by the switch.
func TestBulkTransferUsesSuperFrames(t *testing.T) {
	const size = 8 << 20
	n := newGWNet(t, Options{})
	pod := n.addPod(t, 2)
	want := make([]byte, size)
	for i := range want {
		want[i] = byte(rand.Uint32())
	}
	for _, gw := range []netip.Prefix{netGW4, netGW6} {
		dst := netip.AddrPortFrom(gw.Addr(), 9000)
		full, proto := fullAddress(dst.Addr(), dst.Port()), netProto(dst.Addr())
		ln, err := gonet.ListenTCP(n.gw.stack, full, proto)
		if err != nil {
			t.Fatalf("listen on %s: %v", dst, err)
		}
		// The gateway side echoes what it reads.
		done := make(chan error, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				done <- err
				return
			}
			defer c.Close()
			_, err = io.Copy(c, c)
			done <- err
		}()
		before := stats(t, n.sw)
		c := podDialTCP(t, pod, dst)
		go func() {
			c.Write(want)
			c.CloseWrite()
		}()
		got, err := io.ReadAll(c)
		c.Close()
		if err != nil {
			t.Fatalf("%s: read echo: %v", dst, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: echo of %d bytes differs (got %d bytes)", dst, size, len(got))
		}
		if err := <-done; err != nil {
			t.Fatalf("%s: gateway echo: %v", dst, err)
		}
		ln.Close()
		after := stats(t, n.sw)
		// Frames the switch wrote to the gateway: the pod's data.
		frames := after["netstack"].TxFrames - before["netstack"].TxFrames
		if frames == 0 || frames > size/1448/4 {
			t.Errorf("%s: the gateway received %d frames for %d bytes, want super-frames (under %d)", dst, frames, size, size/1448/4)
		}
		for name, ps := range after {
			if ps.Segmented != 0 {
				t.Errorf("port %s: the switch segmented %d super-frames, want 0 between GSO ports", name, ps.Segmented)
			}
		}
	}
}

func stats(t *testing.T, sw *vswitch.Switch) map[string]vswitch.PortStats {
	t.Helper()
	m := make(map[string]vswitch.PortStats)
	for _, ps := range sw.Stats() {
		m[ps.Name] = ps
	}
	return m
}
