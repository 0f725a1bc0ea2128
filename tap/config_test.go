package tap

import (
	"net/netip"
	"strings"
	"testing"

	vswitch "tapswitch/switch"
)

func TestValidName(t *testing.T) {
	for _, tt := range []struct {
		name string
		ok   bool
	}{
		{"eth0", true},
		{"a", true},
		{"fifteen-chars15", true},
		{"sixteen-chars-16", false},
		{"", false},
		{".", false},
		{"..", false},
		{"eth/0", false},
		{"eth:0", false},
		{"eth 0", false},
		{"eth\t0", false},
		{"eth\x000", false},
		{"eth\u00a00", false}, // no-break space
	} {
		if err := ValidName(tt.name); (err == nil) != tt.ok {
			t.Errorf("ValidName(%q) = %v, want ok %v", tt.name, err, tt.ok)
		}
	}
}

func TestWithDefaults(t *testing.T) {
	mac := vswitch.MAC{2, 0, 0, 0, 0, 1}
	cfg, err := Config{NetNS: "/x", MAC: mac}.withDefaults(false)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Name != "eth0" || cfg.PortName != "eth0" || cfg.MTU != 1500 || cfg.Queues != 1 || cfg.Logger == nil {
		t.Errorf("withDefaults = %+v, want eth0, eth0, 1500, 1 queue, a logger", cfg)
	}
	if cfg, _ := (Config{NetNS: "/x", MAC: mac}).withDefaults(true); cfg.MTU != 0 {
		t.Errorf("withDefaults(open).MTU = %d, want 0 (the device's)", cfg.MTU)
	}

	for _, tt := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no netns", Config{MAC: mac}, "netns path required"},
		{"bad name", Config{NetNS: "/x", Name: "a/b", MAC: mac}, "invalid interface name"},
		{"no mac", Config{NetNS: "/x"}, "mac required"},
		{"multicast mac", Config{NetNS: "/x", MAC: vswitch.Broadcast}, "multicast"},
		{"small mtu", Config{NetNS: "/x", MAC: mac, MTU: 67}, "mtu 67"},
		{"big mtu", Config{NetNS: "/x", MAC: mac, MTU: 9202}, "mtu 9202"},
		{"queues", Config{NetNS: "/x", MAC: mac, Queues: 257}, "257 queues"},
		{"bad address", Config{NetNS: "/x", MAC: mac, Addrs: []netip.Prefix{{}}}, "bad address"},
		{"two v4 gateways", Config{NetNS: "/x", MAC: mac, Gateways: []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")}}, "at most one"},
		{"mapped gateway", Config{NetNS: "/x", MAC: mac, Gateways: []netip.Addr{netip.MustParseAddr("::ffff:10.0.0.1")}}, "gateway"},
	} {
		_, err := tt.cfg.withDefaults(false)
		if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), "tap: ") {
			t.Errorf("%s: withDefaults = %v, want an error with %q", tt.name, err, tt.want)
		}
	}
	if _, err := (Config{NetNS: "/x", MAC: mac, MTU: 9201}).withDefaults(false); err != nil {
		t.Errorf("MTU 9201: %v, want ok", err)
	}
	if _, err := (Config{NetNS: "/x", MAC: mac, MTU: 65535, Offloads: true}).withDefaults(false); err != nil {
		t.Errorf("MTU 65535 with offloads: %v, want ok", err)
	}
}

func TestOnSubnet(t *testing.T) {
	addrs := []netip.Prefix{netip.MustParsePrefix("10.244.0.2/24"), netip.MustParsePrefix("fd00::2/64")}
	for _, tt := range []struct {
		gw   string
		want bool
	}{
		{"10.244.0.1", true},
		{"10.244.1.1", false},
		{"fd00::1", true},
		{"fd01::1", false},
		{"fe80::1", true},
	} {
		if got := onSubnet(netip.MustParseAddr(tt.gw), addrs); got != tt.want {
			t.Errorf("onSubnet(%s) = %v, want %v", tt.gw, got, tt.want)
		}
	}
}
