package cni

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"

	"tapswitch/daemon/api"
)

// prevResultOf is the 1.1.0 result the plugin gave for pod.
func prevResultOf(t *testing.T, pod api.Pod) *types100.Result {
	t.Helper()
	res, err := Result(pod, "1.1.0")
	if err != nil {
		t.Fatal(err)
	}
	return res.(*types100.Result)
}

func TestResultDiffs(t *testing.T) {
	pod := dualPod()
	if d := resultDiffs(pod, prevResultOf(t, pod)); len(d) != 0 {
		t.Errorf("a pod against its own result: %v", d)
	}

	// A chained plugin may add an interface, addresses of its own and
	// routes: none of that is a difference.
	prev := prevResultOf(t, pod)
	prev.Interfaces = append([]*types100.Interface{{Name: "cni0"}}, prev.Interfaces...)
	for _, ip := range prev.IPs {
		ip.Interface = types100.Int(1)
	}
	prev.Routes = append(prev.Routes, &types.Route{})
	if d := resultDiffs(pod, prev); len(d) != 0 {
		t.Errorf("with a chained plugin's additions: %v", d)
	}

	tests := []struct {
		name   string
		change func(*types100.Result)
		want   string
	}{
		{"mac", func(r *types100.Result) { r.Interfaces[0].Mac = "02:00:00:00:00:99" }, "prevResult says 02:00:00:00:00:99"},
		{"sandbox", func(r *types100.Result) { r.Interfaces[0].Sandbox = "/var/run/netns/other" }, "prevResult says /var/run/netns/other"},
		{"no interface", func(r *types100.Result) { r.Interfaces[0].Name = "eth1" }, "no interface eth0"},
		{"missing ip", func(r *types100.Result) { r.IPs = r.IPs[:1] }, "prevResult says [10.88.0.7/16]"},
		{"other ip", func(r *types100.Result) { r.IPs[0].Address.IP[3] = 9 }, "10.88.0.9/16"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prev := prevResultOf(t, pod)
			tt.change(prev)
			d := resultDiffs(pod, prev)
			if len(d) == 0 || !strings.Contains(strings.Join(d, "; "), tt.want) {
				t.Errorf("diffs %q, want one saying %q", d, tt.want)
			}
		})
	}
}

func TestDaemonError(t *testing.T) {
	tests := []struct {
		err  error
		code uint
		says string
	}{
		{fmt.Errorf("%w: no daemon on socket /run/x.sock", api.ErrUnavailable), types.ErrTryAgainLater, "/run/x.sock"},
		{&api.APIError{Status: http.StatusInsufficientStorage, Message: "ipam: 10.0.0.0/29: no free address"}, types.ErrTryAgainLater, "no free address"},
		{&api.APIError{Status: http.StatusBadRequest, Message: "invalid request: netns path"}, types.ErrInvalidEnvironmentVariables, "netns path"},
		{&api.APIError{Status: http.StatusConflict, Message: "mac in use"}, types.ErrInternal, "mac in use"},
		{&api.APIError{Status: http.StatusServiceUnavailable, Message: "busy: pod p is being attached or deleted"}, types.ErrTryAgainLater, "being attached"},
		{fmt.Errorf("decode answer"), types.ErrInternal, "decode answer"},
	}
	for _, tt := range tests {
		err := daemonError("attach the pod", tt.err)
		if code := cniCode(t, err); code != tt.code || !strings.Contains(err.Error(), tt.says) {
			t.Errorf("daemonError(%v) = %v (code %d), want code %d saying %q", tt.err, err, code, tt.code, tt.says)
		}
	}
}

// TestAddResultAfterPrevResult checks ADD keeps what an earlier plugin of
// the chain reported and points its own IPs at its own interface.
func TestAddResultAfterPrevResult(t *testing.T) {
	lo := &types100.Result{
		CNIVersion: types100.ImplementedSpecVersion,
		Interfaces: []*types100.Interface{{Name: "lo", Sandbox: "/var/run/netns/pod-a"}},
		IPs:        []*types100.IPConfig{{Interface: types100.Int(0), Address: net.IPNet{IP: net.IPv4(127, 0, 0, 1).To4(), Mask: net.CIDRMask(8, 32)}}},
		DNS:        types.DNS{Nameservers: []string{"192.0.2.53"}},
	}
	for _, ver := range []string{"0.4.0", "1.0.0", "1.1.0"} {
		t.Run(ver, func(t *testing.T) {
			prev, err := lo.GetAsVersion(ver)
			if err != nil {
				t.Fatal(err)
			}
			prevJSON, err := json.Marshal(prev)
			if err != nil {
				t.Fatal(err)
			}
			conf, err := parseConfig([]byte(`{"cniVersion":"` + ver + `","name":"n","type":"tapswitch","prevResult":` + string(prevJSON) + `}`))
			if err != nil {
				t.Fatal(err)
			}
			res, err := addResult(dualPod(), conf)
			if err != nil {
				t.Fatal(err)
			}
			r, err := types100.NewResultFromResult(res)
			if err != nil {
				t.Fatal(err)
			}
			if len(r.Interfaces) != 2 || r.Interfaces[0].Name != "lo" || r.Interfaces[1].Name != "eth0" {
				t.Fatalf("interfaces %+v, want lo then eth0", r.Interfaces)
			}
			if len(r.IPs) != 3 || *r.IPs[0].Interface != 0 || *r.IPs[1].Interface != 1 || *r.IPs[2].Interface != 1 {
				t.Errorf("ips %v, want lo's then eth0's two", r.IPs)
			}
			if len(r.Routes) != 2 {
				t.Errorf("routes %v, want our two default routes", r.Routes)
			}
			if want := []string{"192.0.2.53", "10.88.0.1", "fd00:88::1"}; strings.Join(r.DNS.Nameservers, ",") != strings.Join(want, ",") {
				t.Errorf("nameservers %v, want %v", r.DNS.Nameservers, want)
			}
			// And CHECK against that merged result finds eth0 as it is.
			if d := resultDiffs(dualPod(), r); len(d) != 0 {
				t.Errorf("CHECK diffs against the merged result: %v", d)
			}
		})
	}
}

// TestResultDiffsNilEntries checks a prevResult with null entries is a
// difference, not a panic.
func TestResultDiffsNilEntries(t *testing.T) {
	prev := prevResultOf(t, v4Pod())
	prev.Interfaces = append([]*types100.Interface{nil}, prev.Interfaces...)
	prev.IPs = append([]*types100.IPConfig{nil}, prev.IPs...)
	for _, ip := range prev.IPs[1:] {
		ip.Interface = types100.Int(1)
	}
	if d := resultDiffs(v4Pod(), prev); len(d) != 0 {
		t.Errorf("diffs %v, want none: the nulls are not eth0's", d)
	}
	prev.Interfaces = []*types100.Interface{nil}
	if d := resultDiffs(v4Pod(), prev); len(d) == 0 {
		t.Error("no diffs with only a null interface")
	}
}
