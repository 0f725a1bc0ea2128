package test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	types040 "github.com/containernetworking/cni/pkg/types/040"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"golang.org/x/sys/unix"

	"tapswitch/cni"
	"tapswitch/internal/testutil"
	"tapswitch/tap"
)

// CNI error codes of the spec the tests expect.
const (
	cniErrUnknownContainer = 3
	cniErrInvalidEnv       = 4
	cniErrInvalidConfig    = 7
	cniErrTryAgainLater    = 11
	cniErrNotAvailable     = 50
	cniErrLimited          = 51
)

func TestCNILifecycle(t *testing.T) {
	testutil.RequireRoot(t)
	for _, v := range cni.SupportedVersions.SupportedVersions() {
		t.Run(v, func(t *testing.T) { testCNILifecycle(t, v) })
	}
}

// testCNILifecycle runs a runtime's whole life of two dual-stack pods in
// cniVersion v: VERSION, ADD, traffic, CHECK, STATUS, DEL.
func testCNILifecycle(t *testing.T, v string) {
	d := startDaemon(t, "", "--pod-cidr", "10.251.60.0/24", "--pod-cidr6", "fd00:4a4:60::/64", "--dns", "127.0.0.1:53")
	rig := newCNIRig(t, d)
	l := confList(t, "tsw-lifecycle", v, tapswitchConf(d.socket))
	ctx := context.Background()

	info, err := rig.cni.GetVersionInfo(ctx, "tapswitch")
	if err != nil {
		t.Fatalf("VERSION: %v", err)
	}
	if got, want := info.SupportedVersions(), cni.SupportedVersions.SupportedVersions(); !slices.Equal(got, want) {
		t.Errorf("VERSION lists %v, want %v", got, want)
	}

	var rts []*libcni.RuntimeConf
	var pods []pod
	for _, name := range []string{"web-0", "web-1"} {
		rt := k8sRuntime(uniqueID("lc"), testutil.NewNetNS(t), name)
		res := rig.mustAdd(t, l, rt)
		p := attachedPod(t, d, rt)
		checkAddResult(t, v, res, rig.exec.last(t, "tapswitch", "ADD").stdout, p)
		if p.PodNamespace != k8sNamespace || p.PodName != name || p.ContainerID != rt.ContainerID || p.Network != l.Name {
			t.Errorf("daemon pod records %s/%s container %q network %q, want %s/%s %q %q",
				p.PodNamespace, p.PodName, p.ContainerID, p.Network, k8sNamespace, name, rt.ContainerID, l.Name)
		}
		rts = append(rts, rt)
		pods = append(pods, p)
	}
	for _, pair := range [][2]pod{{pods[0], pods[1]}, {pods[1], pods[0]}} {
		for _, dst := range pair[1].IPs {
			mustPing(t, pair[0], dst.Addr())
		}
	}
	if v == "1.1.0" {
		// Once is enough: the K8S_ arguments do not depend on the
		// version, and the daemon's records of them are checked above.
		out, err := d.ctl("pods")
		if err != nil {
			t.Fatalf("tapswitchctl pods: %v\n%s", err, out)
		}
		for _, name := range []string{"web-0", "web-1"} {
			if !strings.Contains(out, k8sNamespace+"/"+name) {
				t.Errorf("tapswitchctl pods does not show %s/%s:\n%s", k8sNamespace, name, out)
			}
		}
	}

	// CHECK is defined from 0.4.0 on; libcni refuses it for older
	// conflists without running any plugin.
	for _, rt := range rts {
		err := rig.check(t, l, rt)
		if v == "0.3.0" || v == "0.3.1" {
			if !errors.Is(err, libcni.ErrorCheckNotSupp) {
				t.Errorf("CHECK with cniVersion %s = %v, want libcni's %v", v, err, libcni.ErrorCheckNotSupp)
			}
		} else if err != nil {
			t.Errorf("CHECK %s: %v", rt.ContainerID, err)
		}
	}
	// STATUS is new in 1.1.0; libcni answers nil for older conflists
	// without asking the plugin.
	if err := rig.status(t, l); err != nil {
		t.Errorf("STATUS: %v", err)
	}
	wantCalls := map[string]int{"tapswitch ADD": 2}
	if v != "0.3.0" && v != "0.3.1" {
		wantCalls["tapswitch CHECK"] = 2
	}
	if v == "1.1.0" {
		wantCalls["tapswitch STATUS"] = 1
	}
	gotCalls := map[string]int{}
	for _, c := range rig.exec.commands() {
		if c != "tapswitch VERSION" {
			gotCalls[c]++
		}
	}
	if !maps.Equal(gotCalls, wantCalls) {
		t.Errorf("plugin calls %v, want %v", gotCalls, wantCalls)
	}

	for _, rt := range rts {
		rig.mustDel(t, l, rt)
		requireGone(t, d, rt)
	}
	requireNoLeases(t, d)
}

// checkAddResult checks an ADD result in cniVersion v against the
// daemon's pod p: its type and the raw output of the plugin are of that
// version, and it names the interface with MAC and sandbox, each address
// with its gateway, a default route per family and the nameservers.
func checkAddResult(t *testing.T, v string, res types.Result, stdout []byte, p pod) {
	t.Helper()
	if res.Version() != v {
		t.Errorf("result version %s, want %s", res.Version(), v)
	}
	var raw struct {
		CNIVersion string           `json:"cniVersion"`
		Interfaces []map[string]any `json:"interfaces"`
		IPs        []map[string]any `json:"ips"`
	}
	if err := json.Unmarshal(stdout, &raw); err != nil {
		t.Fatalf("ADD printed %q: %v", stdout, err)
	}
	if raw.CNIVersion != v {
		t.Errorf("ADD printed cniVersion %q, want %q:\n%s", raw.CNIVersion, v, stdout)
	}
	old := v == "0.3.0" || v == "0.3.1" || v == "0.4.0"
	for _, ip := range raw.IPs {
		// Before 1.0.0 each IP names its family; 1.0.0 dropped the field.
		if _, has := ip["version"]; has != old {
			t.Errorf("ADD in %s: ip %v has a version field: %v, want %v", v, ip, has, old)
		}
	}
	for _, iface := range raw.Interfaces {
		// The interface's mtu is new in 1.1.0.
		if _, has := iface["mtu"]; has != (v == "1.1.0") {
			t.Errorf("ADD in %s: interface %v has an mtu: %v", v, iface, has)
		}
	}
	if old {
		r, ok := res.(*types040.Result)
		if !ok {
			t.Fatalf("result of %s is a %T, want a 0.4.0-style result", v, res)
		}
		for i, ipc := range r.IPs {
			want := "6"
			if ipc.Address.IP.To4() != nil {
				want = "4"
			}
			if ipc.Version != want {
				t.Errorf("ips[%d] %s has version %q, want %q", i, ipc.Address.String(), ipc.Version, want)
			}
		}
	} else if _, ok := res.(*types100.Result); !ok {
		t.Fatalf("result of %s is a %T, want a 1.x result", v, res)
	}

	r, err := types100.NewResultFromResult(res)
	if err != nil {
		t.Fatalf("result of %s: %v", v, err)
	}
	if len(r.Interfaces) != 1 {
		t.Fatalf("result interfaces = %v, want the pod's", r.Interfaces)
	}
	iface := r.Interfaces[0]
	if iface.Name != p.IfName || iface.Mac != p.MAC.String() || iface.Sandbox != p.ns {
		t.Errorf("result interface = %+v, want %s with mac %s in %s", *iface, p.IfName, p.MAC, p.ns)
	}
	wantMTU := 0 // not in the result before 1.1.0
	if v == "1.1.0" {
		wantMTU = p.MTU
	}
	if iface.Mtu != wantMTU {
		t.Errorf("result interface mtu in %s = %d, want %d", v, iface.Mtu, wantMTU)
	}
	if len(r.IPs) != len(p.IPs) || len(p.IPs) != 2 {
		t.Fatalf("result ips = %v, pod ips = %v, want both families", r.IPs, p.IPs)
	}
	for i, ipc := range r.IPs {
		if ipc.Address.String() != p.IPs[i].String() || ipc.Interface == nil || *ipc.Interface != 0 {
			t.Errorf("result ips[%d] = %s, want %s on interface 0", i, ipc, p.IPs[i])
		}
		if gw, _ := netip.AddrFromSlice(ipc.Gateway); gw.Unmap() != p.Gateways[i] {
			t.Errorf("result ips[%d] gateway = %v, want %s", i, ipc.Gateway, p.Gateways[i])
		}
	}
	var routes []string
	for _, rt := range r.Routes {
		routes = append(routes, rt.Dst.String()+" via "+rt.GW.String())
	}
	wantRoutes := []string{"0.0.0.0/0 via " + p.Gateways[0].String(), "::/0 via " + p.Gateways[1].String()}
	if !slices.Equal(routes, wantRoutes) {
		t.Errorf("result routes = %v, want %v", routes, wantRoutes)
	}
	var wantDNS []string
	for _, a := range p.DNS {
		wantDNS = append(wantDNS, a.String())
	}
	if len(wantDNS) == 0 || !slices.Equal(r.DNS.Nameservers, wantDNS) {
		t.Errorf("result nameservers = %v, pod dns = %v; want the gateways", r.DNS.Nameservers, wantDNS)
	}
}

func TestCNIRepeatedAdd(t *testing.T) {
	testutil.RequireRoot(t)
	d := startDaemon(t, "")
	rig := newCNIRig(t, d)
	l := confList(t, "tsw-repeat", "1.1.0", tapswitchConf(d.socket, "portMappings"))
	ns := testutil.NewNetNS(t)
	rt := k8sRuntime(uniqueID("rep"), ns, "again")
	rt.CapabilityArgs = map[string]any{"portMappings": []map[string]any{{"hostPort": 18081, "containerPort": 80, "protocol": "tcp"}}}

	first := rig.mustAdd(t, l, rt)
	firstOut := rig.exec.last(t, "tapswitch", "ADD").stdout
	p1 := attachedPod(t, d, rt)
	_, leases1, fws1 := daemonState(t, d)

	second := rig.mustAdd(t, l, rt)
	secondOut := rig.exec.last(t, "tapswitch", "ADD").stdout
	if string(firstOut) != string(secondOut) {
		t.Errorf("second ADD printed\n%s\nfirst printed\n%s", secondOut, firstOut)
	}
	if !reflect.DeepEqual(first, second) {
		t.Errorf("second ADD's result %+v, first's %+v", second, first)
	}
	pods, leases2, fws2 := daemonState(t, d)
	if len(pods) != 1 || pods[0].PortID != p1.PortID || !pods[0].Created.Equal(p1.Created) {
		t.Errorf("pods after the second ADD = %+v, want the first one unchanged (%+v)", pods, p1.Pod)
	}
	if fmt.Sprint(leases2) != fmt.Sprint(leases1) || fmt.Sprint(fws2) != fmt.Sprint(fws1) || len(fws1) != 1 {
		t.Errorf("second ADD changed leases %v -> %v or forwards %v -> %v", leases1, leases2, fws1, fws2)
	}

	// The same container and interface in another netns is another
	// attachment with the same key: refused, the first one untouched.
	other := *rt
	other.NetNS = testutil.NewNetNS(t)
	if _, err := rig.add(t, l, &other); err == nil {
		t.Errorf("ADD of container %s in a second netns succeeded", rt.ContainerID)
	} else {
		t.Logf("ADD of the same container in another netns: %v", err)
	}
	if _, err := tap.Inspect(other.NetNS, "eth0"); !errors.Is(err, tap.ErrNotFound) {
		t.Errorf("the refused ADD left eth0 in its netns (inspect: %v)", err)
	}
	if err := rig.check(t, l, rt); err != nil {
		t.Errorf("CHECK of the first attachment after the refused ADD: %v", err)
	}
	rig.mustDel(t, l, rt)
	requireGone(t, d, rt)
	requireNoLeases(t, d)
}

func TestCNIDelIdempotent(t *testing.T) {
	testutil.RequireRoot(t)
	d := startDaemon(t, "")
	rig := newCNIRig(t, d)
	l := confList(t, "tsw-del", "1.0.0", tapswitchConf(d.socket))

	t.Run("netns deleted", func(t *testing.T) {
		ns := testutil.NewNetNS(t)
		rt := k8sRuntime(uniqueID("gone"), ns, "gone")
		rig.mustAdd(t, l, rt)
		p := attachedPod(t, d, rt)
		deleteNetNS(t, ns)
		rig.mustDel(t, l, rt)
		requireGone(t, d, rt)
		if rootHasMAC(t, p.MAC.String()) {
			t.Errorf("the pod's tap (mac %s) is in the root namespace after its netns went", p.MAC)
		}
	})
	t.Run("netns file stale", func(t *testing.T) {
		// The namespace's mount is gone but its file is left, as after a
		// umount without rm: nothing can be inside it any more.
		ns := testutil.NewNetNS(t)
		rt := k8sRuntime(uniqueID("stale"), ns, "stale")
		rig.mustAdd(t, l, rt)
		if err := unix.Unmount(ns, unix.MNT_DETACH); err != nil {
			t.Fatalf("umount %s: %v", ns, err)
		}
		rig.mustDel(t, l, rt)
		requireGone(t, d, rt)
	})
	t.Run("twice", func(t *testing.T) {
		rt := k8sRuntime(uniqueID("twice"), testutil.NewNetNS(t), "twice")
		rig.mustAdd(t, l, rt)
		rig.mustDel(t, l, rt)
		rig.mustDel(t, l, rt)
		requireGone(t, d, rt)
	})
	t.Run("empty netns", func(t *testing.T) {
		ns := testutil.NewNetNS(t)
		rt := k8sRuntime(uniqueID("nons"), ns, "nons")
		rig.mustAdd(t, l, rt)
		del := *rt
		del.NetNS = ""
		rig.mustDel(t, l, &del)
		requireGone(t, d, rt) // rt names the netns: eth0 must be gone from it too
	})
	t.Run("unknown container", func(t *testing.T) {
		rig.mustDel(t, l, k8sRuntime(uniqueID("never"), "", "never"))
	})
	t.Run("lost cache", func(t *testing.T) {
		// A runtime that lost its cache deletes without prevResult.
		rt := k8sRuntime(uniqueID("nocache"), testutil.NewNetNS(t), "nocache")
		rig.mustAdd(t, l, rt)
		ctx, cancel := context.WithTimeout(context.Background(), cniTimeout)
		defer cancel()
		if err := rig.freshCache(t).DelNetworkList(ctx, l, rt); err != nil {
			t.Fatalf("DEL without cache: %v", err)
		}
		requireGone(t, d, rt)
	})
	requireNoLeases(t, d)
}

func TestCNIDaemonDown(t *testing.T) {
	testutil.RequireRoot(t)
	d := startDaemon(t, "")
	rig := newCNIRig(t, d)
	d.stop(t)
	l := confList(t, "tsw-down", "1.1.0", tapswitchConf(d.socket))
	ns := testutil.NewNetNS(t)
	rt := k8sRuntime(uniqueID("down"), ns, "down")

	_, err := rig.add(t, l, rt)
	ce := requireCNIError(t, err, cniErrTryAgainLater)
	if !strings.Contains(ce.Msg+" "+ce.Details, d.socket) {
		t.Errorf("ADD error %q / %q does not name the socket %s", ce.Msg, ce.Details, d.socket)
	}
	if _, err := tap.Inspect(ns, "eth0"); !errors.Is(err, tap.ErrNotFound) {
		t.Errorf("the failed ADD left eth0 in the pod's netns (inspect: %v)", err)
	}
	if res, err := rig.cni.GetNetworkListCachedResult(l, rt); res != nil || err != nil {
		t.Errorf("libcni cached %v, %v after the failed ADD", res, err)
	}
	ce = requireCNIError(t, rig.status(t, l), cniErrLimited)
	if !strings.Contains(ce.Msg+" "+ce.Details, d.socket) {
		t.Errorf("STATUS error %q / %q does not name the socket %s", ce.Msg, ce.Details, d.socket)
	}
	// A DEL cannot release the address without the daemon: the runtime
	// must retry it.
	requireCNIError(t, rig.del(t, l, rt), cniErrTryAgainLater)

	d2 := startDaemonIn(t, d.node, d.stateDir)
	l2 := confList(t, "tsw-down", "1.1.0", tapswitchConf(d2.socket))
	if pods, _ := d2.client.Pods(context.Background()); len(pods) != 0 {
		t.Errorf("daemon has pods %+v from ADDs made while it was down", pods)
	}
	if err := rig.status(t, l2); err != nil {
		t.Errorf("STATUS with the daemon back: %v", err)
	}
	rig.mustAdd(t, l2, rt)
	if _, err := tap.Inspect(ns, "eth0"); err != nil {
		t.Errorf("ADD with the daemon back: %v", err)
	}
	rig.mustDel(t, l2, rt)
	requireGone(t, d2, rt)
}

func TestCNIStatusExhausted(t *testing.T) {
	testutil.RequireRoot(t)
	d := startDaemon(t, "", "--pod-cidr", "10.251.61.0/29")
	rig := newCNIRig(t, d)
	l := confList(t, "tsw-full", "1.1.0", tapswitchConf(d.socket))
	st, err := d.client.Status(context.Background())
	if err != nil || len(st.Pools) != 1 || st.Pools[0].Size == 0 || st.Pools[0].Size > 6 {
		t.Fatalf("status = %+v, %v; want one small pool", st, err)
	}
	var rts []*libcni.RuntimeConf
	for i := range st.Pools[0].Size {
		if err := rig.status(t, l); err != nil {
			t.Fatalf("STATUS with %d of %d addresses used: %v", i, st.Pools[0].Size, err)
		}
		rt := k8sRuntime(uniqueID("full"), testutil.NewNetNS(t), fmt.Sprintf("full-%d", i))
		rig.mustAdd(t, l, rt)
		rts = append(rts, rt)
	}
	ce := requireCNIError(t, rig.status(t, l), cniErrNotAvailable)
	if !strings.Contains(ce.Details, "10.251.61.0/29") {
		t.Errorf("STATUS error %q / %q does not name the CIDR", ce.Msg, ce.Details)
	}
	one := k8sRuntime(uniqueID("over"), testutil.NewNetNS(t), "over")
	_, err = rig.add(t, l, one)
	ce = requireCNIError(t, err, cniErrTryAgainLater)
	t.Logf("ADD with no free address: %q / %q", ce.Msg, ce.Details)
	requireGone(t, d, one)

	rig.mustDel(t, l, rts[0])
	if err := rig.status(t, l); err != nil {
		t.Errorf("STATUS after a DEL freed an address: %v", err)
	}
	for _, rt := range rts[1:] {
		rig.mustDel(t, l, rt)
	}
	requireNoLeases(t, d)
}

func TestCNIRuntimeConfig(t *testing.T) {
	testutil.RequireRoot(t)
	d := startDaemon(t, "")
	rig := newCNIRig(t, d)
	l := confList(t, "tsw-rc", "1.0.0", tapswitchConf(d.socket, "portMappings", "mac"))
	ctx := context.Background()

	ns := testutil.NewNetNS(t)
	serveTCPEcho(t, nsListen(t, ns, "tcp4", ":8080"), nil)
	serveUDPEcho(t, nsListenPacket(t, ns, "udp4", ":5353"), nil)
	const mac = "02:42:ac:11:00:42"
	rt := k8sRuntime(uniqueID("rc"), ns, "mapped")
	rt.CapabilityArgs = map[string]any{
		"mac": mac,
		"portMappings": []map[string]any{
			{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"},
			{"hostPort": 15353, "containerPort": 5353, "protocol": "udp"},
		},
	}
	res := rig.mustAdd(t, l, rt)
	r, err := types100.NewResultFromResult(res)
	if err != nil {
		t.Fatalf("ADD result: %v", err)
	}
	p := attachedPod(t, d, rt)
	if r.Interfaces[0].Mac != mac {
		t.Errorf("result mac %s, want runtimeConfig.mac %s", r.Interfaces[0].Mac, mac)
	}
	requireMAC(t, d, rt, mac)
	fws, err := d.client.Forwards(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, fw := range fws {
		got = append(got, fmt.Sprintf("%s %s -> %s %s", fw.Proto, fw.Listen, fw.Pod, fw.Target))
	}
	slices.Sort(got)
	want := []string{
		fmt.Sprintf("tcp 0.0.0.0:18080 -> %s %s:8080", p.ID, p.addr()),
		fmt.Sprintf("udp 0.0.0.0:15353 -> %s %s:5353", p.ID, p.addr()),
	}
	if !slices.Equal(got, want) {
		t.Errorf("forwards = %v, want %v", got, want)
	}
	hostPort := netip.MustParseAddrPort("127.0.0.1:18080")
	echoStream(t, mustDial(t, d.nodeDial, hostPort), []byte("tcp through the mapping"))
	if got := nodeUDPExchange(t, d, "127.0.0.1:15353", []byte("udp through the mapping")); string(got) != "udp through the mapping" {
		t.Errorf("udp echo through the hostPort = %q", got)
	}

	// Another pod asking for the same hostPort fails, with nothing of it
	// left and the first pod's forward untouched.
	rt2 := k8sRuntime(uniqueID("rc"), testutil.NewNetNS(t), "clash")
	rt2.CapabilityArgs = map[string]any{"portMappings": []map[string]any{{"hostPort": 18080, "containerPort": 80}}}
	if _, err := rig.add(t, l, rt2); err == nil {
		t.Error("ADD of a second pod with hostPort 18080 succeeded")
	} else {
		var ce *types.Error
		if !errors.As(err, &ce) || !strings.Contains(ce.Msg+ce.Details, "18080") {
			t.Errorf("ADD with a taken hostPort: %v, want a CNI error naming the port", err)
		}
		t.Logf("ADD with a taken hostPort: %v", err)
	}
	requireGone(t, d, rt2)
	if fws2, _ := d.client.Forwards(ctx); len(fws2) != 2 {
		t.Errorf("forwards after the clash = %+v, want the first pod's two", fws2)
	}
	echoStream(t, mustDial(t, d.nodeDial, hostPort), []byte("tcp through the mapping, after the clash"))

	// Invalid runtime config: nothing made.
	for _, bad := range []map[string]any{
		{"mac": "01:00:5e:00:00:01"},
		{"portMappings": []map[string]any{{"hostPort": 18082, "containerPort": 80, "protocol": "sctp"}}},
		{"portMappings": []map[string]any{{"hostPort": 18082, "containerPort": 0}}},
	} {
		rt3 := k8sRuntime(uniqueID("bad"), testutil.NewNetNS(t), "bad")
		rt3.CapabilityArgs = bad
		_, err := rig.add(t, l, rt3)
		ce := requireCNIError(t, err, cniErrInvalidConfig)
		t.Logf("ADD with runtimeConfig %v: %q / %q", bad, ce.Msg, ce.Details)
		requireGone(t, d, rt3)
	}

	rig.mustDel(t, l, rt)
	requireGone(t, d, rt)
	if c, err := d.nodeDial(ctx, "tcp", "127.0.0.1:18080"); err == nil {
		c.Close()
		t.Error("hostPort 18080 still accepts connections after DEL")
	}
	requireNoLeases(t, d)
}

func TestCNICheckFailures(t *testing.T) {
	testutil.RequireRoot(t)
	d := startDaemon(t, "")
	rig := newCNIRig(t, d)
	l := confList(t, "tsw-check", "1.0.0", tapswitchConf(d.socket))
	ns := testutil.NewNetNS(t)
	rt := k8sRuntime(uniqueID("chk"), ns, "checked")
	res := rig.mustAdd(t, l, rt)
	p := attachedPod(t, d, rt)
	if err := rig.check(t, l, rt); err != nil {
		t.Fatalf("CHECK of a fresh attachment: %v", err)
	}

	// The plugin run directly with a prevResult of our making.
	prev, err := types100.NewResultFromResult(res)
	if err != nil {
		t.Fatal(err)
	}
	checkWith := func(containerID string, prev *types100.Result) error {
		stdin, err := json.Marshal(map[string]any{
			"cniVersion": "1.0.0", "name": l.Name, "type": "tapswitch", "socket": d.socket, "prevResult": prev,
		})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), cniTimeout)
		defer cancel()
		args := &invoke.Args{Command: "CHECK", ContainerID: containerID, NetNS: ns, IfName: "eth0",
			PluginArgsStr: "IgnoreUnknown=1", Path: strings.Join(rig.path, ":")}
		return invoke.ExecPluginWithoutResult(ctx, filepath.Join(binDir, "tapswitch"), stdin, args, rig.exec)
	}
	if err := checkWith(rt.ContainerID, prev); err != nil {
		t.Errorf("CHECK with the ADD's own result: %v", err)
	}
	wrong := *prev
	wrongIP := *prev.IPs[0]
	wrongIP.Address.IP = net.ParseIP("10.244.0.200").To4()
	wrong.IPs = []*types100.IPConfig{&wrongIP}
	ce := requireCNIError(t, checkWith(rt.ContainerID, &wrong), cni.ErrCheckFailed)
	if !strings.Contains(ce.Details, "10.244.0.200") || !strings.Contains(ce.Details, p.IPs[0].String()) {
		t.Errorf("CHECK with another IP in prevResult: %q / %q, want both addresses named", ce.Msg, ce.Details)
	}
	ce = requireCNIError(t, checkWith(uniqueID("nobody"), prev), cniErrUnknownContainer)
	t.Logf("CHECK of an unknown container: %q / %q", ce.Msg, ce.Details)

	// Changed behind the plugin's back: the MAC, then an address.
	nsName := filepath.Base(ns)
	ipCmd(t, "-n", nsName, "link", "set", "eth0", "address", "02:00:00:00:00:99")
	ce = requireCNIError(t, rig.check(t, l, rt), cni.ErrCheckFailed)
	if !strings.Contains(ce.Details, "02:00:00:00:00:99") || !strings.Contains(ce.Details, p.MAC.String()) {
		t.Errorf("CHECK with a changed mac: %q / %q, want both macs named", ce.Msg, ce.Details)
	}
	ipCmd(t, "-n", nsName, "link", "set", "eth0", "address", p.MAC.String())
	if err := rig.check(t, l, rt); err != nil {
		t.Errorf("CHECK with the mac put back: %v", err)
	}
	ipCmd(t, "-n", nsName, "addr", "del", p.IPs[0].String(), "dev", "eth0")
	ce = requireCNIError(t, rig.check(t, l, rt), cni.ErrCheckFailed)
	if !strings.Contains(ce.Details, p.IPs[0].String()) {
		t.Errorf("CHECK with the address deleted: %q / %q, want the address named", ce.Msg, ce.Details)
	}
	t.Logf("CHECK with the address deleted: %q / %q", ce.Msg, ce.Details)

	rig.mustDel(t, l, rt)
	requireGone(t, d, rt)
}

func TestCNIGC(t *testing.T) {
	testutil.RequireRoot(t)
	d := startDaemon(t, "")
	rig := newCNIRig(t, d)
	la := confList(t, "tsw-gc-a", "1.1.0", tapswitchConf(d.socket))
	lb := confList(t, "tsw-gc-b", "1.1.0", tapswitchConf(d.socket))
	var as []*libcni.RuntimeConf
	for i := range 3 {
		rt := k8sRuntime(uniqueID("gca"), testutil.NewNetNS(t), fmt.Sprintf("a-%d", i))
		rig.mustAdd(t, la, rt)
		as = append(as, rt)
	}
	b := k8sRuntime(uniqueID("gcb"), testutil.NewNetNS(t), "b")
	rig.mustAdd(t, lb, b)
	manual := addPod(t, d, "made-by-hand")

	// A runtime whose cache is empty: libcni itself deletes nothing, so
	// what goes is what the plugin's GC removes.
	ctx, cancel := context.WithTimeout(context.Background(), cniTimeout)
	defer cancel()
	gc := rig.freshCache(t)
	valid := []types.GCAttachment{{ContainerID: as[0].ContainerID, IfName: "eth0"}}
	if err := gc.GCNetworkList(ctx, la, &libcni.GCArgs{ValidAttachments: valid}); err != nil {
		t.Fatalf("GC of %s: %v", la.Name, err)
	}
	if !slices.Contains(rig.exec.commands(), "tapswitch GC") {
		t.Fatalf("libcni did not run the plugin's GC: %v", rig.exec.commands())
	}
	requireGone(t, d, as[1])
	requireGone(t, d, as[2])
	pods, err := d.client.Pods(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, p := range pods {
		ids = append(ids, p.ID)
	}
	want := []string{cni.PodID(as[0].ContainerID, "eth0"), cni.PodID(b.ContainerID, "eth0"), manual.ID}
	slices.Sort(want)
	if !slices.Equal(ids, want) {
		t.Errorf("pods after GC of %s = %v, want %v", la.Name, ids, want)
	}
	if leases, _ := d.client.Leases(ctx); len(leases) != 3 {
		t.Errorf("leases after GC = %+v, want 3", leases)
	}
	mustPing(t, attachedPod(t, d, as[0]), manual.addr())

	// GC of network B with no valid attachment: b goes, a-0 and the
	// hand-made pod stay.
	if err := gc.GCNetworkList(ctx, lb, &libcni.GCArgs{}); err != nil {
		t.Fatalf("GC of %s: %v", lb.Name, err)
	}
	requireGone(t, d, b)
	if pods, _ := d.client.Pods(ctx); len(pods) != 2 {
		t.Errorf("pods after GC of %s = %+v, want a-0 and %s", lb.Name, pods, manual.ID)
	}
	rig.mustDel(t, la, as[0])
	if err := d.client.DeletePod(ctx, manual.ID); err != nil {
		t.Fatal(err)
	}
	requireNoLeases(t, d)
}

func TestCNIArgs(t *testing.T) {
	testutil.RequireRoot(t)
	d := startDaemon(t, "")
	rig := newCNIRig(t, d)
	l := confList(t, "tsw-args", "1.1.0", tapswitchConf(d.socket))

	rt := k8sRuntime(uniqueID("args"), testutil.NewNetNS(t), "strict")
	rt.Args = [][2]string{{"K8S_POD_NAMESPACE", k8sNamespace}, {"K8S_POD_NAME", "strict"}, {"FOO", "bar"}}
	_, err := rig.add(t, l, rt)
	ce := requireCNIError(t, err, cniErrInvalidEnv)
	if !strings.Contains(ce.Msg+ce.Details, "FOO") {
		t.Errorf("ADD with an unknown CNI_ARGS key: %q / %q, want the key named", ce.Msg, ce.Details)
	}
	requireGone(t, d, rt)

	rt.Args = append([][2]string{{"IgnoreUnknown", "1"}}, rt.Args...)
	rig.mustAdd(t, l, rt)
	if p := attachedPod(t, d, rt); p.PodNamespace != k8sNamespace || p.PodName != "strict" {
		t.Errorf("pod records %s/%s, want %s/strict", p.PodNamespace, p.PodName, k8sNamespace)
	}
	rig.mustDel(t, l, rt)

	// podman passes its container name as K8S_POD_NAME: underscores and
	// capitals are taken and recorded. Its --mac-address comes as MAC=,
	// with a conflist that has no mac capability.
	const podmanMAC = "02:42:ac:11:00:43"
	podman := k8sRuntime(uniqueID("args"), testutil.NewNetNS(t), "Happy_Turing")
	podman.Args = append(podman.Args, [2]string{"MAC", podmanMAC})
	rig.mustAdd(t, l, podman)
	if p := attachedPod(t, d, podman); p.PodName != "Happy_Turing" {
		t.Errorf("pod records name %q, want Happy_Turing", p.PodName)
	}
	requireMAC(t, d, podman, podmanMAC)
	rig.mustDel(t, l, podman)

	// Both runtimeConfig.mac (the mac capability) and MAC=: runtimeConfig
	// wins.
	const capabilityMAC = "02:42:ac:11:00:44"
	withMAC := confList(t, "tsw-args-mac", "1.1.0", tapswitchConf(d.socket, "mac"))
	both := k8sRuntime(uniqueID("args"), testutil.NewNetNS(t), "both_macs")
	both.Args = append(both.Args, [2]string{"MAC", podmanMAC})
	both.CapabilityArgs = map[string]any{"mac": capabilityMAC}
	rig.mustAdd(t, withMAC, both)
	requireMAC(t, d, both, capabilityMAC)
	rig.mustDel(t, withMAC, both)

	// A name no runtime makes: the daemon refuses it, naming it.
	bad := k8sRuntime(uniqueID("args"), testutil.NewNetNS(t), "bad/name")
	_, err = rig.add(t, l, bad)
	ce = requireCNIError(t, err, cniErrInvalidEnv)
	if !strings.Contains(ce.Msg+ce.Details, "bad/name") {
		t.Errorf("ADD with pod name bad/name: %q / %q, want the name in the error", ce.Msg, ce.Details)
	}
	requireGone(t, d, bad)
	requireNoLeases(t, d)
}

// requireMAC fails t unless the daemon's pod of the attachment rt and its
// interface in the pod's netns have mac.
func requireMAC(t *testing.T, d *daemonProc, rt *libcni.RuntimeConf, mac string) {
	t.Helper()
	if p := attachedPod(t, d, rt); p.MAC.String() != mac {
		t.Errorf("daemon pod of %s has mac %s, want %s", rt.ContainerID, p.MAC, mac)
	}
	if link, err := tap.Inspect(rt.NetNS, rt.IfName); err != nil || link.MAC.String() != mac {
		t.Errorf("%s in the pod of %s has mac %v (%v), want %s", rt.IfName, rt.ContainerID, link.MAC, err, mac)
	}
}

// ipNetnsOutput runs cmd inside the netns at ns and returns its output.
func ipNetnsOutput(t *testing.T, ns string, cmd ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", filepath.Base(ns)}, cmd...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s in %s: %v: %s", strings.Join(cmd, " "), ns, err, out)
	}
	return string(out)
}
