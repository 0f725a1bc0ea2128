package daemon

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"tapswitch/daemon/api"
	"tapswitch/internal/netnsutil"
	"tapswitch/internal/testutil"
	vswitch "tapswitch/switch"
)

// TestCheckPod checks that CheckPod passes a pod as made and names each
// thing changed behind the daemon's back.
func TestCheckPod(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNetNS(t)
	d := newTestDaemon(t, t.TempDir())
	pod, err := d.AddPod(api.PodRequest{ID: "chk", NetNS: ns})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.CheckPod("chk"); err != nil {
		t.Fatalf("CheckPod of a fresh pod: %v", err)
	}
	if _, err := d.CheckPod("nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("CheckPod of an unknown pod = %v, want ErrNotFound", err)
	}

	// Change the MAC and MTU, drop the address (which takes the
	// default route along) and set the link down.
	err = netnsutil.Do(ns, func() error {
		link, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetDown(link); err != nil {
			return err
		}
		if err := netlink.LinkSetHardwareAddr(link, net.HardwareAddr{0x02, 0, 0, 0, 0, 9}); err != nil {
			return err
		}
		if err := netlink.LinkSetMTU(link, 1400); err != nil {
			return err
		}
		return netlink.AddrDel(link, &netlink.Addr{IPNet: ipNetOf(pod.IPs[0].String())})
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = d.CheckPod("chk")
	if !errors.Is(err, ErrMismatch) {
		t.Fatalf("CheckPod after changes = %v, want ErrMismatch", err)
	}
	for _, want := range []string{"mac is 02:00:00:00:00:09", "mtu is 1400", "link is down", "address " + pod.IPs[0].String() + " is missing", "default route via 10.252.9.1 is missing"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("CheckPod error %q does not say %q", err, want)
		}
	}

	// A pod whose TAP is gone.
	if err := netnsutil.Do(ns, func() error {
		link, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		return netlink.LinkDel(link)
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.CheckPod("chk"); err == nil || !strings.Contains(err.Error(), "no interface eth0") {
		t.Errorf("CheckPod without the TAP = %v, want it to say the interface is missing", err)
	}
}

// TestAddPodMAC checks a requested MAC is used, and one in use by another
// port is refused without leaving anything behind.
func TestAddPodMAC(t *testing.T) {
	testutil.RequireRoot(t)
	ns1, ns2 := testutil.NewNetNS(t), testutil.NewNetNS(t)
	d := newTestDaemon(t, t.TempDir())
	mac := vswitch.MAC{0x02, 0xaa, 0, 0, 0, 1}
	pod, err := d.AddPod(api.PodRequest{ID: "m1", NetNS: ns1, MAC: &mac})
	if err != nil {
		t.Fatal(err)
	}
	if pod.MAC != mac {
		t.Errorf("pod MAC = %s, want %s", pod.MAC, mac)
	}
	if _, err := d.CheckPod("m1"); err != nil {
		t.Errorf("CheckPod: %v", err)
	}
	for _, m := range []vswitch.MAC{mac, gatewayMAC()} {
		_, err = d.AddPod(api.PodRequest{ID: "m2", NetNS: ns2, MAC: &m})
		if !errors.Is(err, ErrConflict) {
			t.Errorf("AddPod with mac %s = %v, want ErrConflict", m, err)
		}
	}
	if len(d.Pods()) != 1 {
		t.Errorf("pods after refused adds: %v, want only m1", d.Pods())
	}
	st := d.Status()
	// 10.252.9.0/28: 16 addresses less network, gateway, host port and
	// broadcast; one leased.
	if len(st.Pools) != 1 || st.Pools[0].Size != 12 || st.Pools[0].Free != 11 || st.Pods != 1 {
		t.Errorf("Status = %+v, want one pool of 12 with 11 free and 1 pod", st)
	}
}

func ipNetOf(s string) *net.IPNet {
	ip, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	n.IP = ip
	return n
}

// TestBusyPod checks a pod in the middle of its add answers ErrBusy (503)
// to a second add and to a delete, and is not listed.
func TestBusyPod(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNetNS(t)
	d := newTestDaemon(t, t.TempDir())
	pod := api.Pod{ID: "busy", NetNS: ns, IfName: "eth0", MAC: podMAC("busy", "eth0")}
	if err := d.reserve(&pod); err != nil { // as AddPod does before making the TAP
		t.Fatal(err)
	}
	if _, err := d.AddPod(api.PodRequest{ID: "busy", NetNS: ns}); !errors.Is(err, ErrBusy) {
		t.Errorf("AddPod of a pod being added = %v, want ErrBusy", err)
	}
	if err := d.DeletePod("busy"); !errors.Is(err, ErrBusy) {
		t.Errorf("DeletePod of a pod being added = %v, want ErrBusy", err)
	}
	if _, err := d.PodByID("busy"); !errors.Is(err, ErrNotFound) {
		t.Errorf("PodByID of a pod being added = %v, want ErrNotFound", err)
	}
	rec := httptest.NewRecorder()
	writeError(rec, fmt.Errorf("%w: x", ErrBusy))
	if rec.Code != http.StatusServiceUnavailable {
		t.Errorf("ErrBusy answers %d, want 503", rec.Code)
	}
	d.unreserve(pod)
}
