package cni

import (
	"fmt"
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
		{fmt.Errorf("decode answer"), types.ErrInternal, "decode answer"},
	}
	for _, tt := range tests {
		err := daemonError("attach the pod", tt.err)
		if code := cniCode(t, err); code != tt.code || !strings.Contains(err.Error(), tt.says) {
			t.Errorf("daemonError(%v) = %v (code %d), want code %d saying %q", tt.err, err, code, tt.code, tt.says)
		}
	}
}
