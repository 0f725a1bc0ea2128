package cni

import (
	"encoding/json"
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"tapswitch/daemon/api"
	vswitch "tapswitch/switch"
)

var testMAC = vswitch.MAC{0x02, 0x54, 0x53, 0x00, 0x00, 0x07}

func v4Pod() api.Pod {
	return api.Pod{
		ID:       "c0ffee",
		NetNS:    "/var/run/netns/pod-a",
		IfName:   "eth0",
		MAC:      testMAC,
		IPs:      []netip.Prefix{netip.MustParsePrefix("10.88.0.7/16")},
		Gateways: []netip.Addr{netip.MustParseAddr("10.88.0.1")},
		DNS:      []netip.Addr{netip.MustParseAddr("10.88.0.1")},
		MTU:      1500,
	}
}

func dualPod() api.Pod {
	p := v4Pod()
	p.IPs = append(p.IPs, netip.MustParsePrefix("fd00:88::7/64"))
	// The IPv6 gateway comes first to check that each IP gets the
	// gateway of its own family.
	p.Gateways = []netip.Addr{netip.MustParseAddr("fd00:88::1"), netip.MustParseAddr("10.88.0.1")}
	p.DNS = []netip.Addr{netip.MustParseAddr("10.88.0.1"), netip.MustParseAddr("fd00:88::1")}
	return p
}

// wantIP is one expected "ips" entry.
type wantIP struct{ version, address, gateway string }

// wantRoute is one expected "routes" entry.
type wantRoute struct{ dst, gw string }

func TestResult(t *testing.T) {
	pods := []struct {
		name   string
		pod    api.Pod
		ips    []wantIP
		routes []wantRoute
		dns    []string
	}{
		{
			name:   "ipv4",
			pod:    v4Pod(),
			ips:    []wantIP{{"4", "10.88.0.7/16", "10.88.0.1"}},
			routes: []wantRoute{{"0.0.0.0/0", "10.88.0.1"}},
			dns:    []string{"10.88.0.1"},
		},
		{
			name: "dual-stack",
			pod:  dualPod(),
			ips: []wantIP{
				{"4", "10.88.0.7/16", "10.88.0.1"},
				{"6", "fd00:88::7/64", "fd00:88::1"},
			},
			routes: []wantRoute{{"0.0.0.0/0", "10.88.0.1"}, {"::/0", "fd00:88::1"}},
			dns:    []string{"10.88.0.1", "fd00:88::1"},
		},
	}
	for _, ver := range SupportedVersions.SupportedVersions() {
		for _, tc := range pods {
			t.Run(ver+"/"+tc.name, func(t *testing.T) {
				raw, m := convert(t, tc.pod, ver)

				if got := m["cniVersion"]; got != ver {
					t.Errorf("cniVersion = %v, want %s", got, ver)
				}
				checkInterfaces(t, m, ver, tc.pod)
				checkIPs(t, m, ver, tc.ips)
				checkRoutes(t, m, tc.routes)
				if got := nameservers(t, m); !reflect.DeepEqual(got, tc.dns) {
					t.Errorf("dns.nameservers = %v, want %v", got, tc.dns)
				}
				checkRoundTrip(t, ver, raw, m)
			})
		}
	}
}

// convert runs Result and returns its JSON, raw and decoded.
func convert(t *testing.T, pod api.Pod, ver string) ([]byte, map[string]any) {
	t.Helper()
	res, err := Result(pod, ver)
	if err != nil {
		t.Fatalf("Result(%s) error: %v", ver, err)
	}
	if res.Version() != ver {
		t.Errorf("Result(%s).Version() = %s", ver, res.Version())
	}
	raw, err := json.Marshal(res)
	if err != nil {
		t.Fatalf("marshal %s result: %v", ver, err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("unmarshal %s result %s: %v", ver, raw, err)
	}
	return raw, m
}

func checkInterfaces(t *testing.T, m map[string]any, ver string, pod api.Pod) {
	t.Helper()
	ifaces, _ := m["interfaces"].([]any)
	if len(ifaces) != 1 {
		t.Fatalf("interfaces = %v, want one", m["interfaces"])
	}
	iface := ifaces[0].(map[string]any)
	want := map[string]any{
		"name":    pod.IfName,
		"mac":     "02:54:53:00:00:07",
		"sandbox": pod.NetNS,
	}
	// mtu is defined from spec 1.1.0 on; JSON numbers decode as float64.
	if ver == "1.1.0" {
		want["mtu"] = float64(pod.MTU)
	}
	if !reflect.DeepEqual(iface, want) {
		t.Errorf("interfaces[0] = %v, want %v", iface, want)
	}
}

func checkIPs(t *testing.T, m map[string]any, ver string, want []wantIP) {
	t.Helper()
	ips, _ := m["ips"].([]any)
	if len(ips) != len(want) {
		t.Fatalf("ips = %v, want %d entries", m["ips"], len(want))
	}
	legacy := strings.HasPrefix(ver, "0.")
	for i, w := range want {
		ip := ips[i].(map[string]any)
		if ip["address"] != w.address || ip["gateway"] != w.gateway {
			t.Errorf("ips[%d] = %v, want address %s gateway %s", i, ip, w.address, w.gateway)
		}
		if ip["interface"] != float64(0) {
			t.Errorf("ips[%d].interface = %v, want 0", i, ip["interface"])
		}
		v, has := ip["version"]
		switch {
		case legacy && v != w.version:
			t.Errorf("ips[%d].version = %v, want %q", i, v, w.version)
		case !legacy && has:
			t.Errorf("ips[%d] has version %v, which %s does not define", i, v, ver)
		}
	}
}

func checkRoutes(t *testing.T, m map[string]any, want []wantRoute) {
	t.Helper()
	routes, _ := m["routes"].([]any)
	var got []wantRoute
	for _, r := range routes {
		r := r.(map[string]any)
		dst, _ := r["dst"].(string)
		gw, _ := r["gw"].(string)
		got = append(got, wantRoute{dst, gw})
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("routes = %v, want %v", got, want)
	}
}

// nameservers returns dns.nameservers, or nil when absent.
func nameservers(t *testing.T, m map[string]any) []string {
	t.Helper()
	dns, _ := m["dns"].(map[string]any)
	list, _ := dns["nameservers"].([]any)
	var out []string
	for _, ns := range list {
		out = append(out, ns.(string))
	}
	return out
}

// checkRoundTrip parses raw with the library's decoder for ver, as a
// runtime or a chained plugin reading prevResult does, and checks that it
// marshals back to the same JSON.
func checkRoundTrip(t *testing.T, ver string, raw []byte, m map[string]any) {
	t.Helper()
	parsed, err := version.NewResult(ver, raw)
	if err != nil {
		t.Fatalf("version.NewResult(%s, %s) error: %v", ver, raw, err)
	}
	if parsed.Version() != ver {
		t.Errorf("parsed Version() = %s, want %s", parsed.Version(), ver)
	}
	again, err := json.Marshal(parsed)
	if err != nil {
		t.Fatalf("marshal parsed result: %v", err)
	}
	var m2 map[string]any
	if err := json.Unmarshal(again, &m2); err != nil {
		t.Fatalf("unmarshal %s: %v", again, err)
	}
	if !reflect.DeepEqual(m, m2) {
		t.Errorf("round trip changed the result:\n got %s\nwant %s", again, raw)
	}
}

func TestResultNoDNS(t *testing.T) {
	pod := v4Pod()
	pod.DNS = nil
	for _, ver := range SupportedVersions.SupportedVersions() {
		t.Run(ver, func(t *testing.T) {
			raw, m := convert(t, pod, ver)
			if got := nameservers(t, m); got != nil {
				t.Errorf("dns.nameservers = %v, want none in %s", got, raw)
			}
			checkRoundTrip(t, ver, raw, m)
		})
	}
}

// An IP whose family has no gateway gets neither a gateway nor a default
// route, rather than a gateway of the wrong family.
func TestResultFamilyWithoutGateway(t *testing.T) {
	pod := dualPod()
	pod.Gateways = []netip.Addr{netip.MustParseAddr("10.88.0.1")}
	for _, ver := range SupportedVersions.SupportedVersions() {
		t.Run(ver, func(t *testing.T) {
			_, m := convert(t, pod, ver)
			ips := m["ips"].([]any)
			if gw, has := ips[1].(map[string]any)["gateway"]; has {
				t.Errorf("ips[1].gateway = %v, want none", gw)
			}
			checkRoutes(t, m, []wantRoute{{"0.0.0.0/0", "10.88.0.1"}})
		})
	}
}

func TestResultUnsupportedVersion(t *testing.T) {
	for _, ver := range []string{"0.1.0", "0.2.0", "1.2.0", "2.0.0", "", "latest"} {
		t.Run(ver, func(t *testing.T) {
			res, err := Result(v4Pod(), ver)
			if err == nil {
				t.Fatalf("Result(%q) = %v, want error", ver, res)
			}
			var cniErr *types.Error
			if !errors.As(err, &cniErr) {
				t.Fatalf("Result(%q) error %T %v, want *types.Error", ver, err, err)
			}
			if cniErr.Code != types.ErrIncompatibleCNIVersion {
				t.Errorf("Result(%q) error code = %d, want %d", ver, cniErr.Code, types.ErrIncompatibleCNIVersion)
			}
			if cniErr.Msg != "incompatible CNI versions" {
				t.Errorf("Result(%q) error msg = %q, want %q", ver, cniErr.Msg, "incompatible CNI versions")
			}
			msg := err.Error()
			for _, want := range []string{`"` + ver + `"`, "0.3.0", "1.1.0"} {
				if !strings.Contains(msg, want) {
					t.Errorf("Result(%q) error %q does not name %s", ver, msg, want)
				}
			}
		})
	}
}

func TestResultInvalidAddress(t *testing.T) {
	pod := v4Pod()
	pod.IPs = append(pod.IPs, netip.Prefix{})
	if _, err := Result(pod, "1.1.0"); err == nil {
		t.Errorf("Result with an invalid prefix: no error")
	}
}

func TestSupportedVersions(t *testing.T) {
	got := SupportedVersions.SupportedVersions()
	want := []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("SupportedVersions = %v, want %v", got, want)
	}
}
