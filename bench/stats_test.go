package main

import (
	"maps"
	"net/netip"
	"slices"
	"testing"
	"time"
)

// Tests of the harness's pure helpers; they need no root.

func TestPercentile(t *testing.T) {
	ds := []time.Duration{5, 1, 4, 2, 3, 10, 9, 8, 7, 6}
	tests := []struct {
		p    float64
		want time.Duration
	}{{0, 1}, {10, 1}, {50, 5}, {51, 6}, {99, 10}, {100, 10}}
	for _, tt := range tests {
		if got := percentile(ds, tt.p); got != tt.want {
			t.Errorf("percentile(1..10, %v) = %v, want %v", tt.p, got, tt.want)
		}
	}
	if got := percentile(nil, 50); got != 0 {
		t.Errorf("percentile(nil, 50) = %v, want 0", got)
	}
}

func TestMedian(t *testing.T) {
	tests := []struct {
		xs   []float64
		want float64
	}{{nil, 0}, {[]float64{3}, 3}, {[]float64{3, 1, 2}, 2}, {[]float64{4, 1, 3, 2}, 2.5}}
	for _, tt := range tests {
		if got := median(tt.xs); got != tt.want {
			t.Errorf("median(%v) = %v, want %v", tt.xs, got, tt.want)
		}
	}
}

func TestAddresses(t *testing.T) {
	tests := []struct{ prefix, last string }{
		{"10.253.4.7/23", "10.253.5.255"},
		{"10.253.2.3/24", "10.253.2.255"},
		{"192.168.0.1/30", "192.168.0.3"},
	}
	for _, tt := range tests {
		if got := lastAddr(netip.MustParsePrefix(tt.prefix)); got.String() != tt.last {
			t.Errorf("lastAddr(%s) = %s, want %s", tt.prefix, got, tt.last)
		}
	}
	if got := hostInSubnet(kernelSubnet, 3).String(); got != "10.253.1.3/24" {
		t.Errorf("hostInSubnet(%s, 3) = %s, want 10.253.1.3/24", kernelSubnet, got)
	}
}

func TestBenchLine(t *testing.T) {
	tests := []struct {
		line, sub, ns string
	}{
		{"BenchmarkFDBLookup/hit-2         \t 2286403\t        52.41 ns/op\t       0 B/op\t       0 allocs/op", "hit", "52.41"},
		{"BenchmarkFDBLookup/miss    50000000    20.1 ns/op", "miss", "20.1"},
		{"BenchmarkFlood/2ports-2  100  30 ns/op", "", ""},
	}
	for _, tt := range tests {
		m := benchLine.FindStringSubmatch(tt.line)
		switch {
		case tt.sub == "" && m != nil:
			t.Errorf("benchLine matched %q: %q", tt.line, m)
		case tt.sub != "" && (m == nil || m[1] != tt.sub || m[2] != tt.ns):
			t.Errorf("benchLine on %q = %q, want %s and %s", tt.line, m, tt.sub, tt.ns)
		}
	}
}

func TestNewResultsRatios(t *testing.T) {
	k := &variant{name: "kernel"}
	ts := &variant{name: "tapswitch"}
	for _, x := range []float64{10, 12, 11} {
		k.add("tcp1_gbps", x)
		ts.add("tcp1_gbps", x/2)
	}
	k.add("rtt_us", 10)
	ts.add("rtt_us", 25)
	ts.add("switch_cpu_s_per_gb", 0.3)
	res := newResults(k, ts, nil, env{}, options{rounds: 3, duration: time.Second}, cniRun{})
	if got := res.Ratios["tcp1_gbps"]; got != 0.5 {
		t.Errorf("ratio tcp1_gbps = %v, want 0.5 (medians 5.5/11)", got)
	}
	if got := res.Ratios["rtt_us"]; got != 2.5 {
		t.Errorf("ratio rtt_us = %v, want 2.5", got)
	}
	if _, ok := res.Ratios["switch_cpu_s_per_gb"]; ok {
		t.Errorf("ratio switch_cpu_s_per_gb present, want none: the kernel has no switch process")
	}
	if _, ok := res.Variants[proxyVariant]; ok {
		t.Errorf("variants.%s present without a proxy variant", proxyVariant)
	}
}

func TestNewResultsProxyRatios(t *testing.T) {
	k := &variant{name: "kernel"}
	ts := &variant{name: "tapswitch"}
	px := &variant{name: proxyVariant, outsideOnly: true}
	for key, x := range map[string][3]float64{ // kernel, tapswitch, proxy
		"tcp1_gbps":       {10, 8, 0},
		"egress_tcp_gbps": {10, 8, 4},
		"egress_rr_us":    {20, 30, 50},
	} {
		k.add(key, x[0])
		ts.add(key, x[1])
		if x[2] > 0 {
			px.add(key, x[2])
		}
	}
	res := newResults(k, ts, px, env{}, options{rounds: 1, duration: time.Second}, cniRun{})
	want := map[string]float64{
		"tcp1_gbps": 0.8, "egress_tcp_gbps": 0.8, "egress_rr_us": 1.5,
		"proxy_egress_tcp_gbps": 0.4, "proxy_egress_rr_us": 2.5,
	}
	for key, w := range want {
		if got := res.Ratios[key]; got != w {
			t.Errorf("ratios.%s = %v, want %v", key, got, w)
		}
	}
	if _, ok := res.Ratios["proxy_tcp1_gbps"]; ok {
		t.Errorf("ratios.proxy_tcp1_gbps present, want only the proxy figures of the way out")
	}
	if got := res.Variants[proxyVariant]["egress_tcp_gbps"]; got != 4 {
		t.Errorf("variants.%s.egress_tcp_gbps = %v, want 4", proxyVariant, got)
	}
	if !slices.Contains(res.Meta.LowerIsBetter, "proxy_egress_rr_us") {
		t.Errorf("lower_is_better %v lacks proxy_egress_rr_us", res.Meta.LowerIsBetter)
	}
}

// TestTargets: a ratio at its bound meets the target; beyond it, for a
// lower-is-better figure above it, does not; a figure not taken has no
// verdict.
func TestTargets(t *testing.T) {
	k := &variant{name: "kernel"}
	ts := &variant{name: "tapswitch"}
	k.add("egress_tcp_gbps", 10)
	ts.add("egress_tcp_gbps", 9) // 0.9: met
	k.add("egress_rr_us", 20)
	ts.add("egress_rr_us", 41) // 2.05: not met
	res := newResults(k, ts, nil, env{}, options{rounds: 1, duration: time.Second}, cniRun{})
	got := map[string]bool{}
	for _, tg := range res.Targets {
		got[tg.Figure] = tg.Met
	}
	want := map[string]bool{"egress_tcp_gbps": true, "egress_rr_us": false}
	if !maps.Equal(got, want) {
		t.Errorf("targets met = %v, want %v (node_tcp_gbps not taken, so not judged)", got, want)
	}
}
