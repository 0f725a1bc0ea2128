package nodenet

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/knftables"
)

// dualStack is a config with hostPorts of every listen kind in both
// families.
func dualStack() Config {
	ap := netip.MustParseAddrPort
	return Config{
		HostPort:     "tsw0",
		PodCIDRs:     []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:10:244:1::/64")},
		ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/48"), netip.MustParsePrefix("10.250.0.0/16")},
		HostPorts: []HostPort{
			{Proto: "tcp", Listen: ap("0.0.0.0:8080"), Target: ap("10.244.1.5:80")},
			{Proto: "udp", Listen: ap("192.168.1.10:5353"), Target: ap("10.244.1.5:53")},
			{Proto: "tcp", Listen: ap("127.0.0.1:9090"), Target: ap("10.244.1.6:9000")},
			{Proto: "tcp", Listen: ap("[::]:8080"), Target: ap("[fd00:10:244:1::5]:80")},
			{Proto: "udp", Listen: ap("[2001:db8::10]:5353"), Target: ap("[fd00:10:244:1::5]:53")},
		},
	}
}

// sysctlTree returns a directory laid out like /proc/sys with the sysctls
// nodenet writes, all 0, and the host port device devs.
func sysctlTree(t *testing.T, devs ...string) string {
	t.Helper()
	root := t.TempDir()
	files := []string{"net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"}
	for _, dev := range devs {
		files = append(files, filepath.Join("net/ipv4/conf", dev, "route_localnet"))
	}
	for _, f := range files {
		path := filepath.Join(root, f)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte("0\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// newFake returns Rules over a fake nft and a sysctl tree with tsw0.
func newFake(t *testing.T) (*Rules, *knftables.Fake, string) {
	t.Helper()
	fake := knftables.NewFake(knftables.InetFamily, DefaultTable)
	dir := sysctlTree(t, "tsw0")
	r, err := New(Options{NFT: fake, SysctlDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	return r, fake, dir
}

// goldenDualStack is what Sync writes for dualStack(), as the fake dumps
// it: chains and rules sorted by chain name, rules in order.
const goldenDualStack = `add table inet tapswitch { comment "tapswitchd route mode: pod masquerade and hostPorts; rewritten whole by the daemon" ; }
add chain inet tapswitch localnet_guard { type filter hook prerouting priority -300 ; }
add chain inet tapswitch output { type nat hook output priority -100 ; }
add chain inet tapswitch postrouting { type nat hook postrouting priority 100 ; }
add chain inet tapswitch prerouting { type nat hook prerouting priority -100 ; }
add rule inet tapswitch localnet_guard iifname "tsw0" ip daddr 127.0.0.0/8 drop comment "drop loopback destinations from the host port"
add rule inet tapswitch localnet_guard iifname "tsw0" ip saddr 127.0.0.0/8 drop comment "drop loopback sources from the host port"
add rule inet tapswitch output meta nfproto ipv4 fib daddr type local tcp dport 8080 dnat ip to 10.244.1.5:80 comment "hostPort tcp 0.0.0.0:8080 to 10.244.1.5:80"
add rule inet tapswitch output ip daddr 192.168.1.10 fib daddr type local udp dport 5353 dnat ip to 10.244.1.5:53 comment "hostPort udp 192.168.1.10:5353 to 10.244.1.5:53"
add rule inet tapswitch output ip daddr 127.0.0.1 tcp dport 9090 dnat ip to 10.244.1.6:9000 comment "hostPort tcp 127.0.0.1:9090 to 10.244.1.6:9000"
add rule inet tapswitch output ip6 daddr != ::1 fib daddr type local tcp dport 8080 dnat ip6 to [fd00:10:244:1::5]:80 comment "hostPort tcp [::]:8080 to [fd00:10:244:1::5]:80"
add rule inet tapswitch output ip6 daddr 2001:db8::10 fib daddr type local udp dport 5353 dnat ip6 to [fd00:10:244:1::5]:53 comment "hostPort udp [2001:db8::10]:5353 to [fd00:10:244:1::5]:53"
add rule inet tapswitch postrouting ip saddr 10.244.1.0/24 ip daddr != { 10.244.0.0/16, 10.250.0.0/16 } masquerade comment "masquerade 10.244.1.0/24 leaving the cluster"
add rule inet tapswitch postrouting ip6 saddr fd00:10:244:1::/64 ip6 daddr != fd00:10:244::/48 masquerade comment "masquerade fd00:10:244:1::/64 leaving the cluster"
add rule inet tapswitch postrouting ip saddr 10.244.1.5 ip daddr 10.244.1.5 tcp dport 80 masquerade comment "hairpin tcp 10.244.1.5:80"
add rule inet tapswitch postrouting ip saddr 10.244.1.5 ip daddr 10.244.1.5 udp dport 53 masquerade comment "hairpin udp 10.244.1.5:53"
add rule inet tapswitch postrouting ip6 saddr fd00:10:244:1::5 ip6 daddr fd00:10:244:1::5 tcp dport 80 masquerade comment "hairpin tcp [fd00:10:244:1::5]:80"
add rule inet tapswitch postrouting ip6 saddr fd00:10:244:1::5 ip6 daddr fd00:10:244:1::5 udp dport 53 masquerade comment "hairpin udp [fd00:10:244:1::5]:53"
add rule inet tapswitch postrouting ip saddr 127.0.0.0/8 oifname "tsw0" masquerade comment "masquerade node loopback to hostPorts"
add rule inet tapswitch prerouting meta nfproto ipv4 fib daddr type local tcp dport 8080 dnat ip to 10.244.1.5:80 comment "hostPort tcp 0.0.0.0:8080 to 10.244.1.5:80"
add rule inet tapswitch prerouting ip daddr 192.168.1.10 fib daddr type local udp dport 5353 dnat ip to 10.244.1.5:53 comment "hostPort udp 192.168.1.10:5353 to 10.244.1.5:53"
add rule inet tapswitch prerouting ip6 daddr != ::1 fib daddr type local tcp dport 8080 dnat ip6 to [fd00:10:244:1::5]:80 comment "hostPort tcp [::]:8080 to [fd00:10:244:1::5]:80"
add rule inet tapswitch prerouting ip6 daddr 2001:db8::10 fib daddr type local udp dport 5353 dnat ip6 to [fd00:10:244:1::5]:53 comment "hostPort udp [2001:db8::10]:5353 to [fd00:10:244:1::5]:53"
`

func TestSyncDualStack(t *testing.T) {
	r, fake, dir := newFake(t)
	if err := r.Sync(context.Background(), dualStack()); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	if got := fake.Dump(); got != goldenDualStack {
		t.Errorf("Sync wrote\n%s\nwant\n%s", got, goldenDualStack)
	}
	readSysctl(t, dir, "net/ipv4/conf/tsw0/route_localnet", "1")
	// Forwarding is EnableForwarding's job, not Sync's.
	readSysctl(t, dir, "net/ipv4/ip_forward", "0")
}

// readSysctl fails t unless the file name under root holds want.
func readSysctl(t *testing.T, root, name, want string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, name))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(b)); got != want {
		t.Errorf("%s = %q, want %q", name, got, want)
	}
}

func TestSyncWithoutLoopbackLeavesRouteLocalnet(t *testing.T) {
	fake := knftables.NewFake(knftables.InetFamily, DefaultTable)
	dir := sysctlTree(t) // no tsw0: Sync must not need it
	r, err := New(Options{NFT: fake, SysctlDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	cfg := dualStack()
	cfg.HostPorts = []HostPort{
		{Proto: "tcp", Listen: netip.MustParseAddrPort("192.168.1.10:80"), Target: netip.MustParseAddrPort("10.244.1.5:80")},
		{Proto: "tcp", Listen: netip.MustParseAddrPort("[::]:80"), Target: netip.MustParseAddrPort("[fd00:10:244:1::5]:80")},
	}
	if err := r.Sync(context.Background(), cfg); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	if dump := fake.Dump(); strings.Contains(dump, "127.0.0.0/8 oifname") {
		t.Errorf("Sync wrote a loopback masquerade without a loopback hostPort:\n%s", dump)
	}
}

func TestSyncMissingDevice(t *testing.T) {
	fake := knftables.NewFake(knftables.InetFamily, DefaultTable)
	r, err := New(Options{NFT: fake, SysctlDir: sysctlTree(t)})
	if err != nil {
		t.Fatal(err)
	}
	err = r.Sync(context.Background(), dualStack())
	if err == nil || !strings.Contains(err.Error(), "device tsw0 does not exist") {
		t.Fatalf("Sync without tsw0 = %v, want an error naming tsw0", err)
	}
	if fake.LastTransaction != nil {
		t.Errorf("Sync ran a transaction after failing: %s", fake.LastTransaction)
	}
}

func TestSyncReplaces(t *testing.T) {
	ctx := context.Background()
	r, fake, _ := newFake(t)
	if err := r.Sync(ctx, dualStack()); err != nil {
		t.Fatal(err)
	}
	onlyOurTable(t, fake.LastTransaction)
	second := Config{
		HostPort:     "tsw0",
		PodCIDRs:     []netip.Prefix{netip.MustParsePrefix("10.10.2.0/24")},
		ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.10.0.0/16")},
	}
	if err := r.Sync(ctx, second); err != nil {
		t.Fatal(err)
	}
	const want = `add table inet tapswitch { comment "tapswitchd route mode: pod masquerade and hostPorts; rewritten whole by the daemon" ; }
add chain inet tapswitch localnet_guard { type filter hook prerouting priority -300 ; }
add chain inet tapswitch output { type nat hook output priority -100 ; }
add chain inet tapswitch postrouting { type nat hook postrouting priority 100 ; }
add chain inet tapswitch prerouting { type nat hook prerouting priority -100 ; }
add rule inet tapswitch localnet_guard iifname "tsw0" ip daddr 127.0.0.0/8 drop comment "drop loopback destinations from the host port"
add rule inet tapswitch localnet_guard iifname "tsw0" ip saddr 127.0.0.0/8 drop comment "drop loopback sources from the host port"
add rule inet tapswitch postrouting ip saddr 10.10.2.0/24 ip daddr != 10.10.0.0/16 masquerade comment "masquerade 10.10.2.0/24 leaving the cluster"
`
	if got := fake.Dump(); got != want {
		t.Errorf("second Sync left\n%s\nwant\n%s", got, want)
	}
	onlyOurTable(t, fake.LastTransaction)
	if err := r.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	onlyOurTable(t, fake.LastTransaction)
	if got := fake.Dump(); got != "" {
		t.Errorf("Delete left\n%s", got)
	}
	if err := r.Delete(ctx); err != nil {
		t.Errorf("Delete with no table: %v", err)
	}
}

// onlyOurTable fails t unless every command of tx names table inet
// tapswitch. (The fake cannot hold other tables beside its default one;
// the tests in a network namespace check that others stay as they are.)
func onlyOurTable(t *testing.T, tx *knftables.Transaction) {
	t.Helper()
	for _, line := range strings.Split(strings.TrimSpace(tx.String()), "\n") {
		if f := strings.Fields(line); len(f) < 4 || f[2] != "inet" || f[3] != "tapswitch" {
			t.Errorf("transaction command %q is not about table inet tapswitch", line)
		}
	}
}

func TestSyncInvalid(t *testing.T) {
	ap := netip.MustParseAddrPort
	pfx := netip.MustParsePrefix
	hp := func(proto, listen, target string) func(*Config) {
		return func(c *Config) {
			h := HostPort{Proto: proto, Target: ap(target)}
			if listen != "" {
				h.Listen = ap(listen)
			}
			c.HostPorts = append(c.HostPorts, h)
		}
	}
	tests := []struct {
		name   string
		change func(*Config)
		want   string
	}{
		{"no device", func(c *Config) { c.HostPort = "" }, `host port device name "": empty`},
		{"device name with slash", func(c *Config) { c.HostPort = "a/b" }, `host port device name "a/b"`},
		{"device name too long", func(c *Config) { c.HostPort = "tapswitch-host-port" }, "longer than 15 bytes"},
		{"pod CIDR outside cluster", func(c *Config) { c.PodCIDRs = append(c.PodCIDRs, pfx("10.99.0.0/24")) }, "pod CIDR 10.99.0.0/24 is not inside any cluster CIDR"},
		{"pod CIDR wider than cluster", func(c *Config) { c.PodCIDRs = []netip.Prefix{pfx("10.0.0.0/8")} }, "pod CIDR 10.0.0.0/8 is not inside any cluster CIDR"},
		{"pod CIDR without cluster CIDR of its family", func(c *Config) { c.ClusterCIDRs = c.ClusterCIDRs[:1] }, "pod CIDR fd00:10:244:1::/64 is not inside"},
		{"pod CIDR host bits", func(c *Config) { c.PodCIDRs = []netip.Prefix{pfx("10.244.1.1/24")} }, "host bits set (the network is 10.244.1.0/24)"},
		{"invalid pod CIDR", func(c *Config) { c.PodCIDRs = append(c.PodCIDRs, netip.Prefix{}) }, "pod CIDR invalid Prefix: not a valid prefix"},
		{"4in6 cluster CIDR", func(c *Config) { c.ClusterCIDRs = append(c.ClusterCIDRs, pfx("::ffff:10.0.0.0/104")) }, "IPv4-mapped"},
		{"unknown proto", hp("sctp", "0.0.0.0:80", "10.244.1.5:80"), `unknown proto "sctp"`},
		{"upper-case proto", hp("TCP", "0.0.0.0:80", "10.244.1.5:80"), `unknown proto "TCP"`},
		{"IPv6 loopback listen", hp("tcp", "[::1]:80", "[fd00:10:244:1::5]:80"), "IPv6 loopback listen"},
		{"zone", hp("tcp", "[fe80::1%eth0]:80", "[fd00:10:244:1::5]:80"), "zone"},
		{"4in6 listen", hp("tcp", "[::ffff:10.0.0.1]:80", "10.244.1.5:80"), "IPv4-mapped"},
		{"listen port 0", hp("tcp", "0.0.0.0:0", "10.244.1.5:80"), "port 0"},
		{"target port 0", hp("tcp", "0.0.0.0:80", "10.244.1.5:0"), "port 0"},
		{"no listen", hp("tcp", "", "10.244.1.5:80"), "no listen address"},
		{"family mismatch", hp("tcp", "0.0.0.0:80", "[fd00:10:244:1::5]:80"), "different families"},
		{"multicast listen", hp("udp", "224.0.0.251:5353", "10.244.1.5:53"), "multicast"},
		{"target outside pod CIDRs", hp("tcp", "0.0.0.0:80", "10.244.2.5:80"), "target is not inside a pod CIDR"},
		{"duplicate", func(c *Config) {
			hp("tcp", "0.0.0.0:80", "10.244.1.5:80")(c)
			hp("tcp", "0.0.0.0:80", "10.244.1.6:80")(c)
		}, "hostPort tcp 0.0.0.0:80 to 10.244.1.6:80: listens where hostPort tcp 0.0.0.0:80 to 10.244.1.5:80 does"},
		{"specific under unspecified", func(c *Config) {
			hp("udp", "0.0.0.0:53", "10.244.1.5:53")(c)
			hp("udp", "127.0.0.1:53", "10.244.1.6:53")(c)
		}, "listens where"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, fake, _ := newFake(t)
			cfg := dualStack()
			cfg.HostPorts = nil
			tt.change(&cfg)
			err := r.Sync(context.Background(), cfg)
			if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Sync = %v, want ErrInvalidConfig with %q", err, tt.want)
			}
			if fake.LastTransaction != nil {
				t.Errorf("Sync ran a transaction for an invalid config: %s", fake.LastTransaction)
			}
		})
	}
}

func TestValidCorners(t *testing.T) {
	ap := netip.MustParseAddrPort
	cfg := dualStack()
	cfg.HostPorts = append(cfg.HostPorts,
		// Same port, other proto, other family or other address: no overlap.
		HostPort{Proto: "udp", Listen: ap("0.0.0.0:8080"), Target: ap("10.244.1.5:80")},
		HostPort{Proto: "udp", Listen: ap("192.168.1.11:5353"), Target: ap("10.244.1.5:53")},
		HostPort{Proto: "tcp", Listen: ap("127.0.0.2:9090"), Target: ap("10.244.1.6:9000")},
	)
	if err := cfg.validate(); err != nil {
		t.Errorf("validate: %v", err)
	}
	var zero Config
	zero.HostPort = "tsw0"
	if err := zero.validate(); err != nil {
		t.Errorf("validate(no CIDRs) = %v", err)
	}
}

func TestInvalidErrorsJoined(t *testing.T) {
	cfg := dualStack()
	cfg.HostPort = ""
	cfg.HostPorts[0].Proto = "icmp"
	err := cfg.validate()
	if err == nil || !strings.Contains(err.Error(), "empty") || !strings.Contains(err.Error(), `unknown proto "icmp"`) {
		t.Errorf("validate = %v, want both problems", err)
	}
}

// change is a hand-made change to the fake's table.
type change func(t *testing.T, fake *knftables.Fake, tx *knftables.Transaction)

// ruleAt returns the i-th rule of chain in the fake's table.
func ruleAt(t *testing.T, fake *knftables.Fake, chain string, i int) *knftables.Rule {
	t.Helper()
	fake.RLock()
	defer fake.RUnlock()
	rules := fake.Table.Chains[chain].Rules
	if i >= len(rules) {
		t.Fatalf("chain %s has %d rules, want more than %d", chain, len(rules), i)
	}
	return rules[i]
}

func TestDrifted(t *testing.T) {
	tests := []struct {
		name   string
		change change
		want   bool
	}{
		{"unchanged", func(*testing.T, *knftables.Fake, *knftables.Transaction) {}, false},
		{"table deleted", func(_ *testing.T, _ *knftables.Fake, tx *knftables.Transaction) {
			tx.Delete(&knftables.Table{})
		}, true},
		{"rule deleted", func(t *testing.T, fake *knftables.Fake, tx *knftables.Transaction) {
			tx.Delete(&knftables.Rule{Chain: chainPrerouting, Handle: ruleAt(t, fake, chainPrerouting, 1).Handle})
		}, true},
		{"rule added", func(_ *testing.T, _ *knftables.Fake, tx *knftables.Transaction) {
			tx.Add(&knftables.Rule{Chain: chainPostrouting, Rule: "ip saddr 10.9.9.9 accept"})
		}, true},
		{"rule added with a copied comment", func(t *testing.T, fake *knftables.Fake, tx *knftables.Transaction) {
			r := ruleAt(t, fake, chainOutput, 0)
			tx.Insert(&knftables.Rule{Chain: chainOutput, Rule: "accept", Comment: r.Comment})
		}, true},
		{"rule replaced", func(t *testing.T, fake *knftables.Fake, tx *knftables.Transaction) {
			r := ruleAt(t, fake, chainPostrouting, 0)
			tx.Replace(&knftables.Rule{Chain: chainPostrouting, Handle: r.Handle, Rule: "accept"})
		}, true},
		{"rule deleted and added again", func(t *testing.T, fake *knftables.Fake, tx *knftables.Transaction) {
			r := *ruleAt(t, fake, chainGuard, 1)
			tx.Delete(&knftables.Rule{Chain: chainGuard, Handle: r.Handle})
			r.Handle = nil
			tx.Add(&r)
		}, true},
		{"chain deleted", func(_ *testing.T, _ *knftables.Fake, tx *knftables.Transaction) {
			tx.Delete(&knftables.Chain{Name: chainGuard})
		}, true},
		{"chain added", func(_ *testing.T, _ *knftables.Fake, tx *knftables.Transaction) {
			tx.Add(&knftables.Chain{Name: "extra"})
		}, true},
		{"set added", func(_ *testing.T, _ *knftables.Fake, tx *knftables.Transaction) {
			tx.Add(&knftables.Set{Name: "extra", Type: "ipv4_addr"})
		}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			r, fake, _ := newFake(t)
			if err := r.Sync(ctx, dualStack()); err != nil {
				t.Fatal(err)
			}
			tx := fake.NewTransaction()
			tt.change(t, fake, tx)
			if err := fake.Run(ctx, tx); err != nil {
				t.Fatalf("changing the table: %v", err)
			}
			if got, err := r.Drifted(ctx); got != tt.want || err != nil {
				t.Fatalf("Drifted = %v, %v; want %v, nil", got, err, tt.want)
			}
			if err := r.Sync(ctx, dualStack()); err != nil {
				t.Fatal(err)
			}
			if got, err := r.Drifted(ctx); got || err != nil {
				t.Errorf("Drifted after Sync = %v, %v; want false, nil", got, err)
			}
			if !strings.Contains(fake.Dump(), goldenDualStack) {
				t.Errorf("Sync after the change left\n%s\nwant it to contain\n%s", fake.Dump(), goldenDualStack)
			}
		})
	}
}

func TestDriftedWithoutSync(t *testing.T) {
	ctx := context.Background()
	r, fake, _ := newFake(t)
	if got, err := r.Drifted(ctx); got || err != nil {
		t.Errorf("Drifted with no table and no Sync = %v, %v; want false, nil", got, err)
	}
	// A table left by an earlier run of the daemon is drift.
	tx := fake.NewTransaction()
	tx.Add(&knftables.Table{})
	if err := fake.Run(ctx, tx); err != nil {
		t.Fatal(err)
	}
	if got, err := r.Drifted(ctx); !got || err != nil {
		t.Errorf("Drifted with a table before Sync = %v, %v; want true, nil", got, err)
	}
	if err := r.Sync(ctx, dualStack()); err != nil {
		t.Fatal(err)
	}
	if err := r.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if got, err := r.Drifted(ctx); got || err != nil {
		t.Errorf("Drifted after Delete = %v, %v; want false, nil", got, err)
	}
}

func TestNewWithoutNFT(t *testing.T) {
	t.Setenv("PATH", t.TempDir()) // knftables finds nft with exec.LookPath
	_, err := New(Options{})
	if !errors.Is(err, exec.ErrNotFound) || !strings.Contains(err.Error(), "install the nftables package") {
		t.Errorf("New without nft = %v, want exec.ErrNotFound saying to install nftables", err)
	}
}

func TestNewTableName(t *testing.T) {
	for _, name := range []string{"tap switch", "1st", "a\"b", strings.Repeat("a", 65)} {
		if _, err := New(Options{Table: name, NFT: knftables.NewFake(knftables.InetFamily, "x")}); err == nil {
			t.Errorf("New(Table: %q) succeeded, want an error", name)
		}
	}
	r, err := New(Options{Table: "tsw_2-b", NFT: knftables.NewFake(knftables.InetFamily, "tsw_2-b")})
	if err != nil || r.table != "tsw_2-b" {
		t.Errorf("New(Table: tsw_2-b) = %v, %v", r, err)
	}
}
