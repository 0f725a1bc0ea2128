package daemon

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"tapswitch/daemon/api"
	vswitch "tapswitch/switch"
)

func TestValidateRequest(t *testing.T) {
	ns := "/proc/self/ns/net" // the test's own netns: valid, and changed by nothing
	notNS := t.TempDir()
	tests := []struct {
		name string
		req  api.PodRequest
		ok   bool
	}{
		{"ok", api.PodRequest{ID: "abc-1.2_3", NetNS: ns}, true},
		{"cni id", api.PodRequest{ID: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", NetNS: ns}, true},
		{"empty id", api.PodRequest{NetNS: ns}, false},
		{"slash id", api.PodRequest{ID: "a/b", NetNS: ns}, false},
		{"space id", api.PodRequest{ID: "a b", NetNS: ns}, false},
		{"leading dash", api.PodRequest{ID: "-a", NetNS: ns}, false},
		{"no netns", api.PodRequest{ID: "a"}, false},
		{"missing netns", api.PodRequest{ID: "a", NetNS: filepath.Join(notNS, "nope")}, false},
		{"not a netns", api.PodRequest{ID: "a", NetNS: notNS}, false},
		{"relative netns", api.PodRequest{ID: "a", NetNS: "proc/self/ns/net"}, false},
		{"long ifname", api.PodRequest{ID: "a", NetNS: ns, IfName: "0123456789abcdef"}, false},
		{"colon ifname", api.PodRequest{ID: "a", NetNS: ns, IfName: "eth0:1"}, false},
		{"dot ifname", api.PodRequest{ID: "a", NetNS: ns, IfName: ".."}, false},
		{"15 byte ifname", api.PodRequest{ID: "a", NetNS: ns, IfName: "0123456789abcde"}, true},
		{"k8s names", api.PodRequest{ID: "a", NetNS: ns, PodNamespace: "kube-system", PodName: "coredns-5d78c9869d-x7k2p.a"}, true},
		{"podman container name", api.PodRequest{ID: "a", NetNS: ns, PodName: "happy_turing"}, true},
		{"upper-case names", api.PodRequest{ID: "a", NetNS: ns, PodNamespace: "Default", PodName: "MyDB"}, true},
		{"long namespace", api.PodRequest{ID: "a", NetNS: ns, PodNamespace: strings.Repeat("a", 254)}, false},
		{"253 byte namespace", api.PodRequest{ID: "a", NetNS: ns, PodNamespace: strings.Repeat("a", 253)}, true},
		{"slash pod name", api.PodRequest{ID: "a", NetNS: ns, PodName: "a/b"}, false},
		{"space pod name", api.PodRequest{ID: "a", NetNS: ns, PodName: "a b"}, false},
		{"dash-started pod name", api.PodRequest{ID: "a", NetNS: ns, PodName: "-web"}, false},
		{"cni attachment", api.PodRequest{ID: "a", NetNS: ns, ContainerID: "0123abc", Network: "tapswitch", MAC: &vswitch.MAC{2, 0, 0, 0, 0, 1}}, true},
		{"slash container id", api.PodRequest{ID: "a", NetNS: ns, ContainerID: "a/b"}, false},
		{"space network", api.PodRequest{ID: "a", NetNS: ns, Network: "my net"}, false},
		{"multicast mac", api.PodRequest{ID: "a", NetNS: ns, MAC: &vswitch.MAC{1, 0, 0x5e, 0, 0, 1}}, false},
		{"zero mac", api.PodRequest{ID: "a", NetNS: ns, MAC: &vswitch.MAC{}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := validateRequest(&tt.req)
			if (err == nil) != tt.ok {
				t.Fatalf("validateRequest(%+v) = %v, want ok=%v", tt.req, err, tt.ok)
			}
			if err != nil && !errors.Is(err, ErrInvalid) {
				t.Errorf("error %v does not wrap ErrInvalid", err)
			}
		})
	}
}

func TestPodMACStableAndLocal(t *testing.T) {
	m1, m2 := podMAC("pod-a", "eth0"), podMAC("pod-a", "eth0")
	if m1 != m2 {
		t.Fatalf("podMAC not stable: %v, %v", m1, m2)
	}
	if podMAC("pod-a", "eth1") == m1 || podMAC("pod-b", "eth0") == m1 {
		t.Errorf("podMAC does not depend on id and ifname")
	}
	for _, id := range []string{"a", "b", "c", "d", "e", "f", "g", "h"} {
		m := podMAC(id, "eth0")
		if m[0]&1 != 0 || m[0]&2 == 0 {
			t.Errorf("podMAC(%s) = %v, want unicast and locally administered", id, m)
		}
	}
}

func TestStateRoundTripAndCorruption(t *testing.T) {
	dir := t.TempDir()
	s, err := openState(filepath.Join(dir, "pods.json"))
	if err != nil {
		t.Fatal(err)
	}
	if pods, err := s.load(); err != nil || len(pods) != 0 {
		t.Fatalf("load of a new state = %v, %v; want empty", pods, err)
	}
	want := []savedPod{
		{Pod: api.Pod{ID: "a", NetNS: "/x", IfName: "eth0", MAC: podMAC("a", "eth0"), MTU: 1500}},
		{Pod: api.Pod{ID: "b", NetNS: "/y", IfName: "eth0", MAC: podMAC("b", "eth0"), MTU: 1500}, State: podDeleting},
	}
	if err := s.save(want); err != nil {
		t.Fatal(err)
	}
	got, err := s.load()
	if err != nil || len(got) != 2 || got[0].ID != "a" || got[0].MAC != want[0].MAC || got[0].State != podReady || got[1].State != podDeleting {
		t.Fatalf("load = %+v, %v; want %+v", got, err, want)
	}
	// A second daemon on the same folder is refused.
	if _, err := openState(filepath.Join(dir, "pods.json")); err == nil {
		t.Error("second openState on a locked folder succeeded")
	}
	if err := os.WriteFile(filepath.Join(dir, "pods.json"), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.load(); err == nil {
		t.Error("load of a corrupt file succeeded; want an error naming it")
	}
	s.close()
}
