package tap

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"tapswitch/internal/testutil"
	vswitch "tapswitch/switch"
)

var (
	tapMAC  = vswitch.MAC{0x02, 0x74, 0x73, 0x77, 0x00, 0x01}
	peerMAC = vswitch.MAC{0x02, 0x74, 0x73, 0x77, 0x00, 0x02}
)

// testSubnet returns a random 10.250.X.0/24 prefix's address .host, so
// parallel runs on one host do not share addresses (which stay inside each
// test's own netns anyway).
func testSubnet(x, host int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, 250, byte(x), byte(host)})
}

// nsHandle returns a netlink handle in the netns at path for checking.
func nsHandle(t *testing.T, path string) *netlink.Handle {
	t.Helper()
	h, err := newHandle(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

// create calls Create and registers cleanups that close the port and
// delete the device.
func create(t *testing.T, cfg Config) *Port {
	t.Helper()
	p, err := Create(cfg)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	name := cmp.Or(cfg.Name, "eth0")
	t.Cleanup(func() {
		p.Close()
		if err := Delete(cfg.NetNS, name); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return p
}

func TestCreateOpenDelete(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.CheckGoroutines(t)
	ns := testutil.NewNetNS(t)
	x := 1 + rand.IntN(250)
	cfg := Config{
		NetNS:    ns,
		MAC:      tapMAC,
		MTU:      1400,
		Addrs:    []netip.Prefix{netip.PrefixFrom(testSubnet(x, 2), 24)},
		Gateways: []netip.Addr{testSubnet(x, 1)},
		Queues:   2,
	}
	p := create(t, cfg)
	if p.Queues() != 2 || p.Caps() != (vswitch.Caps{MaxFrame: 1414, NonBlockingWrite: true}) || p.Name() != "eth0" {
		t.Errorf("port = %d queues, %+v, %q; want 2, MaxFrame 1414, non-blocking writes, eth0", p.Queues(), p.Caps(), p.Name())
	}
	h := nsHandle(t, ns)
	verifyLink(t, h, cfg)

	if _, err := Create(cfg); !errors.Is(err, ErrExists) {
		t.Errorf("Create again = %v, want ErrExists", err)
	}
	if ok, err := Exists(ns, "eth0"); !ok || err != nil {
		t.Errorf("Exists = %v, %v, want true", ok, err)
	}

	// Persistent: the device outlives the fds, and Open takes it back.
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if ok, _ := Exists(ns, "eth0"); !ok {
		t.Fatal("device gone after Close")
	}
	wrong := cfg
	wrong.MAC = peerMAC
	if _, err := Open(wrong); err == nil || !strings.Contains(err.Error(), "mac") {
		t.Errorf("Open with another MAC = %v, want a mac mismatch", err)
	}
	reopen := Config{NetNS: ns, MAC: tapMAC, Queues: 4, PortName: "pod-a"}
	p2, err := Open(reopen)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if p2.Queues() != 4 || p2.Caps().MaxFrame != 1414 || p2.Name() != "pod-a" {
		t.Errorf("opened port = %d queues, %+v, %q; want 4, MaxFrame 1414 (the device's MTU), pod-a",
			p2.Queues(), p2.Caps(), p2.Name())
	}
	if err := p2.Close(); err != nil {
		t.Fatal(err)
	}
	verifyLink(t, h, cfg) // Open changed nothing

	if err := Delete(ns, "eth0"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if ok, err := Exists(ns, "eth0"); ok || err != nil {
		t.Errorf("Exists after Delete = %v, %v, want false, nil", ok, err)
	}
	if err := Delete(ns, "eth0"); err != nil {
		t.Errorf("Delete again = %v, want nil", err)
	}
	if _, err := Open(reopen); !errors.Is(err, ErrNotFound) {
		t.Errorf("Open after Delete = %v, want ErrNotFound", err)
	}
	if err := Delete(ns, "lo"); err == nil || !strings.Contains(err.Error(), "not a tap") {
		t.Errorf("Delete(lo) = %v, want not a tap device", err)
	}
}

// verifyLink checks the device in the netns matches cfg.
func verifyLink(t *testing.T, h *netlink.Handle, cfg Config) {
	t.Helper()
	link, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatalf("LinkByName: %v", err)
	}
	a := link.Attrs()
	tt, ok := link.(*netlink.Tuntap)
	if !ok || tt.Mode != netlink.TUNTAP_MODE_TAP || tt.NonPersist || tt.Flags&netlink.TUNTAP_MULTI_QUEUE == 0 {
		t.Errorf("link = %#v, want a persistent multiqueue tap", link)
	}
	if string(a.HardwareAddr) != string(cfg.MAC[:]) || a.MTU != cfg.MTU || a.Flags&net.FlagUp == 0 {
		t.Errorf("link = mac %s mtu %d flags %v, want %s, %d, up", a.HardwareAddr, a.MTU, a.Flags, cfg.MAC, cfg.MTU)
	}
	addrs, err := h.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(addrs, func(ad netlink.Addr) bool { return ad.IPNet.String() == cfg.Addrs[0].String() }) {
		t.Errorf("addresses = %v, want %s", addrs, cfg.Addrs[0])
	}
	routes, err := h.RouteList(link, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(routes, func(r netlink.Route) bool {
		ones, _ := r.Dst.Mask.Size()
		return ones == 0 && r.Gw.Equal(cfg.Gateways[0].AsSlice())
	}) {
		t.Errorf("routes = %v, want default via %s", routes, cfg.Gateways[0])
	}
}

// TestCreateIPv6Onlink creates a device whose gateway is outside its
// prefixes, so the routes need onlink, with IPv6 addresses that skip DAD,
// and one default route per family.
func TestCreateIPv6Onlink(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNetNS(t)
	cfg := Config{
		NetNS:    ns,
		Name:     "pod0",
		MAC:      tapMAC,
		Addrs:    []netip.Prefix{netip.MustParsePrefix("10.250.0.9/32"), netip.MustParsePrefix("fd00:250::9/64")},
		Gateways: []netip.Addr{netip.MustParseAddr("10.250.0.1"), netip.MustParseAddr("fd00:251::1")},
	}
	create(t, cfg)
	h := nsHandle(t, ns)
	link, err := h.LinkByName("pod0")
	if err != nil {
		t.Fatal(err)
	}
	addrs, _ := h.AddrList(link, netlink.FAMILY_V6)
	if !slices.ContainsFunc(addrs, func(a netlink.Addr) bool {
		return a.IP.Equal(net.ParseIP("fd00:250::9")) && a.Flags&0x40 == 0 // IFA_F_TENTATIVE
	}) {
		t.Errorf("v6 addresses = %v, want fd00:250::9 not tentative", addrs)
	}
	// The link-local address skips DAD too: none is tentative.
	if i := slices.IndexFunc(addrs, func(a netlink.Addr) bool { return a.Flags&0x40 != 0 }); i >= 0 {
		t.Errorf("v6 address %v is tentative, want DAD off on the device", addrs[i])
	}
	routes, _ := h.RouteList(link, netlink.FAMILY_V6)
	if !slices.ContainsFunc(routes, func(r netlink.Route) bool {
		return r.Gw.Equal(cfg.Gateways[1].AsSlice()) && r.Flags&int(netlink.FLAG_ONLINK) != 0
	}) {
		t.Errorf("v6 routes = %v, want default via %s onlink", routes, cfg.Gateways[1])
	}
	// Dual stack: the IPv4 default route is there too, onlink as well,
	// since 10.250.0.9/32 does not hold its gateway.
	routes4, _ := h.RouteList(link, netlink.FAMILY_V4)
	if !slices.ContainsFunc(routes4, func(r netlink.Route) bool {
		return r.Gw.Equal(cfg.Gateways[0].AsSlice()) && r.Flags&int(netlink.FLAG_ONLINK) != 0
	}) {
		t.Errorf("v4 routes = %v, want default via %s onlink", routes4, cfg.Gateways[0])
	}
}

func TestCreateCleansUpOnFailure(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNetNS(t)
	a := netip.MustParsePrefix("10.250.0.2/24")
	_, err := Create(Config{NetNS: ns, MAC: tapMAC, Addrs: []netip.Prefix{a, a}})
	if err == nil || !strings.Contains(err.Error(), "tap: add address 10.250.0.2/24 to eth0 in "+ns) {
		t.Fatalf("Create with a duplicate address = %v, want an add address error", err)
	}
	if ok, err := Exists(ns, "eth0"); ok || err != nil {
		t.Errorf("Exists after a failed Create = %v, %v, want false: the device should be gone", ok, err)
	}
}

func TestBadNetNS(t *testing.T) {
	missing := fmt.Sprintf("/var/run/netns/tsw-test-missing-%d", rand.Uint32())
	_, err := Create(Config{NetNS: missing, MAC: tapMAC})
	want := "tap: create eth0: netns " + missing + ": no such file or directory"
	if err == nil || err.Error() != want || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Create in a missing netns = %v, want %q", err, want)
	}
	if _, err := Open(Config{NetNS: missing, MAC: tapMAC}); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Open in a missing netns = %v, want fs.ErrNotExist", err)
	}
	if err := Delete(missing, "eth0"); err != nil {
		t.Errorf("Delete in a missing netns = %v, want nil", err)
	}
	if ok, err := Exists(missing, "eth0"); ok || err != nil {
		t.Errorf("Exists in a missing netns = %v, %v, want false, nil", ok, err)
	}
	if err := Delete(missing, "a/b"); err == nil {
		t.Errorf("Delete of an invalid name = nil, want error")
	}

	// A stale netns file (its mount gone) holds no device either.
	stale := filepath.Join(t.TempDir(), "stale")
	if err := os.WriteFile(stale, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Delete(stale, "eth0"); err != nil {
		t.Errorf("Delete in a stale netns file = %v, want nil", err)
	}
	if ok, err := Exists(stale, "eth0"); ok || err != nil {
		t.Errorf("Exists in a stale netns file = %v, %v, want false, nil", ok, err)
	}
}

// TestARP sends an ARP request into the pod's netns through the port and
// reads the kernel's reply, with and without offloads.
func TestARP(t *testing.T) {
	testutil.RequireRoot(t)
	for _, offloads := range []bool{false, true} {
		t.Run(fmt.Sprintf("offloads=%v", offloads), func(t *testing.T) {
			testutil.CheckGoroutines(t)
			ns := testutil.NewNetNS(t)
			x := 1 + rand.IntN(250)
			podIP, peerIP := testSubnet(x, 2), testSubnet(x, 1)
			p := create(t, Config{NetNS: ns, MAC: tapMAC, Offloads: offloads,
				Addrs: []netip.Prefix{netip.PrefixFrom(podIP, 24)}})
			if p.Caps().GSO != offloads {
				t.Errorf("Caps().GSO = %v, want %v", p.Caps().GSO, offloads)
			}

			req := arpRequest(peerMAC, peerIP, podIP)
			if n, err := p.WriteBatch([]*vswitch.Frame{req}); n != 1 || err != nil {
				t.Fatalf("WriteBatch(ARP request) = %d, %v", n, err)
			}
			// ReadBatch blocks; Close ends the wait if the reply never comes.
			timer := time.AfterFunc(5*time.Second, func() { p.Close() })
			defer timer.Stop()
			frames := make([]*vswitch.Frame, 16)
			for {
				n, err := p.ReadBatch(0, frames)
				if err != nil {
					t.Fatalf("no ARP reply within 5s: %v", err)
				}
				found := slices.ContainsFunc(frames[:n], func(f *vswitch.Frame) bool {
					return isARPReply(f.Bytes(), tapMAC, podIP, peerMAC, peerIP)
				})
				releaseAll(frames[:n])
				if found {
					return
				}
			}
		})
	}
}

// arpRequest returns a broadcast frame asking who has tpa, from sha/spa
// (RFC 826).
func arpRequest(sha vswitch.MAC, spa, tpa netip.Addr) *vswitch.Frame {
	f := vswitch.NewPool(vswitch.SmallBufSize).Get()
	b := f.ReadBuf(0)[:60] // padded to the Ethernet minimum
	clear(b)
	e := vswitch.Ether(b)
	e.SetDst(vswitch.Broadcast)
	e.SetSrc(sha)
	e.SetType(vswitch.EtherTypeARP)
	a := e.Payload()
	copy(a, []byte{0, 1, 8, 0, 6, 4, 0, 1}) // Ethernet, IPv4, request
	copy(a[8:14], sha[:])
	copy(a[14:18], spa.AsSlice())
	copy(a[24:28], tpa.AsSlice())
	f.SetLen(len(b))
	return f
}

// isARPReply reports whether frame is sha/spa telling tha/tpa its address.
func isARPReply(frame []byte, sha vswitch.MAC, spa netip.Addr, tha vswitch.MAC, tpa netip.Addr) bool {
	e := vswitch.Ether(frame)
	if len(frame) < vswitch.EtherHdrLen+28 || e.Type() != vswitch.EtherTypeARP || e.Dst() != tha {
		return false
	}
	a := vswitch.ARP(e.Payload())
	return a.Op() == 2 && a.SHA() == sha && a.SPA() == spa && a.THA() == tha && a.TPA() == tpa
}
