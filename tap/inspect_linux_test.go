package tap

import (
	"errors"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"tapswitch/internal/testutil"
	vswitch "tapswitch/switch"
)

// TestInspect checks Inspect reports what Create made: MAC, MTU, link
// state, addresses, default routes and the egress limit's qdisc.
func TestInspect(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNetNS(t)
	x := 1 + rand.IntN(250)
	cfg := Config{
		NetNS:    ns,
		MAC:      tapMAC,
		MTU:      1400,
		Addrs:    []netip.Prefix{netip.PrefixFrom(testSubnet(x, 2), 24), netip.MustParsePrefix("fd00:77::2/64")},
		Gateways: []netip.Addr{testSubnet(x, 1), netip.MustParseAddr("fd00:77::1")},
		// Kubelet's "no burst limit" at a low rate: the bucket's fill
		// time must not overflow.
		Egress: vswitch.Limit{Rate: 10_000_000, Burst: 1<<31 - 1},
	}
	p := create(t, cfg)
	defer p.Close()
	l, err := Inspect(ns, "eth0")
	if err != nil {
		t.Fatal(err)
	}
	if !l.TAP || l.MAC != tapMAC || l.MTU != 1400 || !l.Up {
		t.Errorf("Inspect = %+v, want an up multiqueue tap with mac %s, mtu 1400", l, tapMAC)
	}
	for _, a := range cfg.Addrs {
		if !slices.Contains(l.Addrs, a) {
			t.Errorf("addresses %v lack %s", l.Addrs, a)
		}
	}
	for _, gw := range cfg.Gateways {
		if !slices.Contains(l.Gateways, gw) {
			t.Errorf("default routes via %v lack %s", l.Gateways, gw)
		}
	}
	if l.EgressRate != cfg.Egress.Rate {
		t.Errorf("egress rate %d, want %d", l.EgressRate, cfg.Egress.Rate)
	}

	if _, err := Inspect(ns, "eth9"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Inspect of a missing device = %v, want ErrNotFound", err)
	}
}
