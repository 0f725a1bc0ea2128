package daemon

import (
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckClusterCIDRs(t *testing.T) {
	pfx := func(ss ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, s := range ss {
			out = append(out, netip.MustParsePrefix(s))
		}
		return out
	}
	tests := []struct {
		pods, cluster []netip.Prefix
		want          string // "" for no error, else part of the error
	}{
		{pfx("10.244.1.0/24"), pfx("10.244.0.0/16"), ""},
		{pfx("10.244.1.0/24"), pfx("10.244.1.0/24"), ""},
		{pfx("10.244.1.0/24", "fd00:244:0:1::/64"), pfx("10.244.0.0/16", "fd00:244::/48"), ""},
		{pfx("10.244.1.0/24"), pfx("10.244.1.0/25"), "do not contain pod cidr 10.244.1.0/24"},
		{pfx("10.244.1.0/24"), pfx("10.0.0.0/24"), "do not contain"},
		{pfx("10.244.1.0/24", "fd00:244:1::/64"), pfx("10.244.0.0/16"), "do not contain pod cidr fd00:244:1::/64"},
		{pfx("10.244.1.0/24"), pfx("10.244.0.1/16"), "not a network prefix"},
		{pfx("10.244.1.0/24"), pfx("::ffff:10.0.0.0/104"), "not a network prefix"},
	}
	for _, tt := range tests {
		err := CheckClusterCIDRs(tt.pods, tt.cluster)
		if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("CheckClusterCIDRs(%v, %v) = %v, want %q", tt.pods, tt.cluster, err, tt.want)
		}
	}
}

// TestRouteModeOptions: route mode's bad input is refused before the
// daemon touches anything, so this runs in the test's own namespace.
func TestRouteModeOptions(t *testing.T) {
	dir := t.TempDir()
	base := Options{PodCIDR: testCIDR, StateDir: filepath.Join(dir, "state"), Socket: filepath.Join(dir, "sock")}
	tests := []struct {
		name string
		edit func(*Options)
		want string
	}{
		{"no host port", func(o *Options) {}, "route mode needs the host port"},
		{"bad mode", func(o *Options) { o.Egress = "nat" }, `egress: "nat": want route or proxy`},
		{"cluster cidr", func(o *Options) {
			o.Egress, o.HostPort = EgressProxy, ""
			o.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("192.168.0.0/16")}
		}, "do not contain pod cidr"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := base
			tt.edit(&o)
			d, err := New(o)
			if err == nil {
				d.Close()
				t.Fatalf("New = nil error, want %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New = %v, want %q", err, tt.want)
			}
		})
	}
}
