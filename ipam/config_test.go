package ipam

import (
	"slices"
	"strings"
	"testing"
)

func TestParseReserve(t *testing.T) {
	tests := []struct {
		in      string
		want    []Range
		wantErr string
	}{
		{in: "", want: nil},
		{in: "   ", want: nil},
		{in: "10.244.0.10", want: []Range{{addr("10.244.0.10"), addr("10.244.0.10")}}},
		{in: "10.244.0.16/28", want: []Range{{addr("10.244.0.16"), addr("10.244.0.31")}}},
		{in: "10.244.0.20-10.244.0.29", want: []Range{{addr("10.244.0.20"), addr("10.244.0.29")}}},
		{in: " 10.244.0.10 , 10.244.0.20 - 10.244.0.29,fd00::5", want: []Range{
			{addr("10.244.0.10"), addr("10.244.0.10")},
			{addr("10.244.0.20"), addr("10.244.0.29")},
			{addr("fd00::5"), addr("fd00::5")},
		}},
		{in: "fd00::/120", want: []Range{{addr("fd00::"), addr("fd00::ff")}}},
		{in: "10.244.0.17/28", wantErr: `ipam: reserve "10.244.0.17/28": cidr has host bits set (did you mean 10.244.0.16/28?)`},
		{in: "10.244.0.29-10.244.0.20", wantErr: "last address is before first"},
		{in: "10.244.0.1-fd00::1", wantErr: "mixes IPv4 and IPv6"},
		{in: "fe80::1%eth0", wantErr: "zone"},
		{in: "10.244.0.1,,10.244.0.2", wantErr: "empty item"},
		{in: "10.244.0.1,", wantErr: "empty item"},
		{in: "10.244.0.300", wantErr: `ipam: reserve "10.244.0.300"`},
		{in: "10.244.0.1-", wantErr: `ipam: reserve "10.244.0.1-"`},
	}
	for _, tt := range tests {
		got, err := ParseReserve(tt.in)
		switch {
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("ParseReserve(%q) = %v, %v; want error containing %q", tt.in, got, err, tt.wantErr)
		case tt.wantErr == "" && (err != nil || !slices.Equal(got, tt.want)):
			t.Errorf("ParseReserve(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}

func TestGatewayHost(t *testing.T) {
	tests := []struct{ cidr, gateway, host string }{
		{"10.244.0.0/24", "10.244.0.1", "10.244.0.254"},
		{"10.244.0.0/29", "10.244.0.1", "10.244.0.6"},
		{"10.244.0.5/24", "10.244.0.1", "10.244.0.254"}, // masked first
		{"fd00:10:244::/64", "fd00:10:244::1", "fd00:10:244::ffff:ffff:ffff:ffff"},
		{"fd00::/125", "fd00::1", "fd00::7"},
	}
	for _, tt := range tests {
		if g := Gateway(pfx(tt.cidr)); g != addr(tt.gateway) {
			t.Errorf("Gateway(%s) = %s, want %s", tt.cidr, g, tt.gateway)
		}
		if h := Host(pfx(tt.cidr)); h != addr(tt.host) {
			t.Errorf("Host(%s) = %s, want %s", tt.cidr, h, tt.host)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string // "" for valid
	}{
		{"ipv4", Config{V4: pfx("10.244.0.0/24")}, ""},
		{"dual-stack", Config{V4: pfx("10.244.0.0/24"), V6: pfx("fd00::/64")}, ""},
		{"smallest", Config{V4: pfx("10.244.0.0/29"), V6: pfx("fd00::/125")}, ""},
		{"missing", Config{}, "ipam: missing IPv4 pod cidr"},
		{"host bits", Config{V4: pfx("10.244.0.5/24")}, "ipam: cidr 10.244.0.5/24 has host bits set (did you mean 10.244.0.0/24?)"},
		{"host bits v6", Config{V4: pfx("10.244.0.0/24"), V6: pfx("fd00::1/64")}, "did you mean fd00::/64?"},
		{"v6 as v4", Config{V4: pfx("fd00::/64")}, "ipam: cidr fd00::/64 is not IPv4"},
		{"v4 as v6", Config{V4: pfx("10.244.0.0/24"), V6: pfx("10.245.0.0/24")}, "is not IPv6"},
		{"mapped v6", Config{V4: pfx("10.244.0.0/24"), V6: pfx("::ffff:0.0.0.0/96")}, "is not IPv6"},
		{"too small", Config{V4: pfx("10.244.0.0/30")}, "too small: need /29 or larger"},
		{"too small v6", Config{V4: pfx("10.244.0.0/24"), V6: pfx("fd00::/126")}, "need /125 or larger"},
		{"reserve inside", Config{V4: pfx("10.244.0.0/24"), Reserve: []Range{{addr("10.244.0.10"), addr("10.244.0.20")}}}, ""},
		{"reserve outside", Config{V4: pfx("10.244.0.0/24"), Reserve: []Range{{addr("10.244.0.10"), addr("10.244.1.20")}}}, "ipam: reserve 10.244.0.10-10.244.1.20 is not inside 10.244.0.0/24"},
		{"reserve v6 without v6", Config{V4: pfx("10.244.0.0/24"), Reserve: []Range{{addr("fd00::1"), addr("fd00::1")}}}, "is not inside"},
		{"reserve reversed", Config{V4: pfx("10.244.0.0/24"), Reserve: []Range{{addr("10.244.0.9"), addr("10.244.0.1")}}}, "last address is before first"},
	}
	for _, tt := range tests {
		err := tt.cfg.Validate()
		if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("%s: Validate() = %v, want %q", tt.name, err, tt.wantErr)
		}
	}
}
