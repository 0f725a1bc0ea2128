package cni

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"tapswitch/daemon/api"
)

// cniCode returns err's CNI error code, or fails the test.
func cniCode(t *testing.T, err error) uint {
	t.Helper()
	var te *types.Error
	if !errors.As(err, &te) {
		t.Fatalf("error %v (%T) is not a *types.Error", err, err)
	}
	return te.Code
}

func TestParseConfig(t *testing.T) {
	conf, err := parseConfig([]byte(`{"cniVersion":"1.1.0","name":"net","type":"tapswitch"}`))
	if err != nil {
		t.Fatal(err)
	}
	if conf.Socket != api.DefaultSocket {
		t.Errorf("socket = %q, want the default %q", conf.Socket, api.DefaultSocket)
	}
	conf, err = parseConfig([]byte(`{"cniVersion":"0.4.0","name":"net","type":"tapswitch","socket":"/tmp/s.sock",
		"runtimeConfig":{"mac":"02:00:00:00:00:01","portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]},
		"prevResult":{"cniVersion":"0.4.0","interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"version":"4","address":"10.0.0.2/24","interface":0}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	if conf.Socket != "/tmp/s.sock" || conf.RuntimeConfig.MAC != "02:00:00:00:00:01" || len(conf.RuntimeConfig.PortMappings) != 1 {
		t.Errorf("parsed %+v", conf)
	}
	if conf.PrevResult == nil {
		t.Error("prevResult was not parsed")
	}

	bad := []struct {
		name, conf string
		code       uint
	}{
		{"not json", `{`, types.ErrDecodingFailure},
		{"no name", `{"cniVersion":"1.1.0","type":"tapswitch"}`, types.ErrInvalidNetworkConfig},
		{"relative socket", `{"cniVersion":"1.1.0","name":"n","socket":"run/s.sock"}`, types.ErrInvalidNetworkConfig},
		{"bad prevResult", `{"cniVersion":"1.0.0","name":"n","prevResult":{"ips":"x"}}`, types.ErrDecodingFailure},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseConfig([]byte(tt.conf))
			if err == nil {
				t.Fatal("accepted")
			}
			if got := cniCode(t, err); got != tt.code {
				t.Errorf("code %d, want %d (%v)", got, tt.code, err)
			}
		})
	}
}

func TestParseArgs(t *testing.T) {
	a, err := parseArgs("IgnoreUnknown=1;K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-1;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1;MAC=02:00:00:00:00:05;OTHER=x")
	if err != nil {
		t.Fatal(err)
	}
	if a.K8S_POD_NAMESPACE != "kube-system" || a.K8S_POD_NAME != "coredns-1" || a.MAC != "02:00:00:00:00:05" {
		t.Errorf("parsed %+v", a)
	}
	if _, err := parseArgs(""); err != nil {
		t.Errorf("empty CNI_ARGS: %v", err)
	}
	_, err = parseArgs("K8S_POD_NAME=a;OTHER=x")
	if err == nil {
		t.Fatal("an unknown key without IgnoreUnknown was accepted")
	}
	if code := cniCode(t, err); code != types.ErrInvalidEnvironmentVariables || !strings.Contains(err.Error(), "CNI_ARGS") {
		t.Errorf("error %v (code %d), want code 4 naming CNI_ARGS", err, code)
	}
}

func TestParseMAC(t *testing.T) {
	m, err := parseMAC("02:AA:00:00:00:01")
	if err != nil || m == nil || m.String() != "02:aa:00:00:00:01" {
		t.Errorf("parseMAC = %v, %v", m, err)
	}
	if m, err := parseMAC(""); m != nil || err != nil {
		t.Errorf("parseMAC(\"\") = %v, %v; want none", m, err)
	}
	for _, s := range []string{"nope", "01:00:5e:00:00:01", "00:00:00:00:00:00", "00:00:00:00:fe:80:00:00:00:00:00:00:02:00:5e:10:00:00:00:01"} {
		if _, err := parseMAC(s); err == nil || cniCode(t, err) != types.ErrInvalidNetworkConfig {
			t.Errorf("parseMAC(%q) = %v, want code 7", s, err)
		}
	}
}

func TestForwardRequests(t *testing.T) {
	v4 := []netip.Prefix{netip.MustParsePrefix("10.0.0.5/24")}
	dual := append(v4, netip.MustParsePrefix("fd00::5/64"))
	got, err := forwardRequests("p", []PortMapping{
		{HostPort: 8080, ContainerPort: 80},
		{HostPort: 5353, ContainerPort: 53, Protocol: "UDP", HostIP: "127.0.0.1"},
	}, dual)
	if err != nil {
		t.Fatal(err)
	}
	want := []api.ForwardRequest{
		{Listen: "0.0.0.0:8080", Proto: "tcp", Pod: "p", Port: 80},
		{Listen: "[::]:8080", Proto: "tcp", Pod: "p", Port: 80},
		{Listen: "127.0.0.1:5353", Proto: "udp", Pod: "p", Port: 53},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("forwardRequests = %+v\nwant %+v", got, want)
	}
	if got, _ := forwardRequests("p", []PortMapping{{HostPort: 1, ContainerPort: 2}}, v4); len(got) != 1 || got[0].Listen != "0.0.0.0:1" {
		t.Errorf("IPv4-only pod: %+v, want one IPv4 listener", got)
	}

	bad := []PortMapping{
		{HostPort: 0, ContainerPort: 80},
		{HostPort: 65536, ContainerPort: 80},
		{HostPort: 80, ContainerPort: 0},
		{HostPort: 80, ContainerPort: 80, Protocol: "sctp"},
		{HostPort: 80, ContainerPort: 80, HostIP: "::1"}, // no IPv6 address
		{HostPort: 80, ContainerPort: 80, HostIP: "localhost"},
	}
	for _, m := range bad {
		if _, err := forwardRequests("p", []PortMapping{m}, v4); err == nil || cniCode(t, err) != types.ErrInvalidNetworkConfig {
			t.Errorf("mapping %+v: %v, want code 7", m, err)
		}
	}
}

func TestPodID(t *testing.T) {
	cid := strings.Repeat("ab", 32)
	if got := PodID(cid, "eth0"); got != cid+".eth0" {
		t.Errorf("PodID = %q", got)
	}
	long := strings.Repeat("c", 300)
	a, b := PodID(long, "eth0"), PodID(long, "net1")
	if len(a) > maxIDLen || !strings.HasPrefix(a, "cni-") || a == b {
		t.Errorf("PodID of a long id: %q and %q, want distinct hashed IDs", a, b)
	}
	if PodID(long, "eth0") != a {
		t.Error("PodID is not stable")
	}
	// Linux allows interface names a pod ID may not hold.
	for _, ifname := range []string{"net@1", "eth+0", "ö"} {
		id := PodID(cid, ifname)
		if !strings.HasPrefix(id, "cni-") || strings.ContainsFunc(id, notIDChar) {
			t.Errorf("PodID(%q) = %q, want a hashed ID", ifname, id)
		}
	}
}

func TestBandwidthRequest(t *testing.T) {
	conf, err := parseConfig([]byte(`{"cniVersion":"1.0.0","name":"n","type":"tapswitch",
		"runtimeConfig":{"bandwidth":{"ingressRate":1000000,"ingressBurst":4294967295,"egressRate":2000000,"egressBurst":80000}}}`))
	if err != nil {
		t.Fatal(err)
	}
	got := conf.RuntimeConfig.Bandwidth.request()
	want := &api.Bandwidth{IngressRate: 1e6, IngressBurst: 4294967295, EgressRate: 2e6, EgressBurst: 80000}
	if got == nil || *got != *want {
		t.Errorf("request() = %+v, want %+v", got, want)
	}
	var none *BandwidthEntry
	if none.request() != nil || (&BandwidthEntry{}).request() != nil {
		t.Error("no limits made a request")
	}
}
