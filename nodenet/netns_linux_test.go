package nodenet

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"tapswitch/internal/netnsutil"
	"tapswitch/internal/testutil"
)

// These tests run the real nft inside a network namespace of their own.
// nft is a child process, and a child inherits the namespace of the thread
// that starts it: netnsutil.Do's thread. Each test checks with
// `ip netns exec` that the rules are in its namespace and with plain nft
// that the root namespace has no such table.

// testNS is a throwaway network namespace.
type testNS struct {
	path, name string
}

// newTestNS creates a namespace, with a TAP device named tsw0 when
// withDevice is set (this kernel may lack the dummy module).
func newTestNS(t *testing.T, withDevice bool) testNS {
	t.Helper()
	testutil.RequireRoot(t)
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs the nft command (Debian package nftables)")
	}
	path := testutil.NewNetNS(t)
	ns := testNS{path: path, name: filepath.Base(path)}
	if withDevice {
		mustRun(t, "ip", "-n", ns.name, "tuntap", "add", "dev", "tsw0", "mode", "tap")
	}
	return ns
}

// do runs fn inside ns and fails t on its error.
func (ns testNS) do(t *testing.T, what string, fn func() error) {
	t.Helper()
	if err := netnsutil.Do(ns.path, fn); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// nft runs nft inside ns and returns its output; it fails t if nft fails.
func (ns testNS) nft(t *testing.T, args ...string) string {
	t.Helper()
	return mustRun(t, append([]string{"ip", "netns", "exec", ns.name, "nft"}, args...)...)
}

// mustRun runs a command and returns its combined output; it fails t if
// the command fails.
func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// rootHasNoTable fails t if the root namespace has a table named table.
func rootHasNoTable(t *testing.T, table string) {
	t.Helper()
	out := mustRun(t, "nft", "list", "tables")
	if strings.Contains(out, " "+table+"\n") {
		t.Errorf("the root namespace has table %s:\n%s", table, out)
	}
}

// handleOf returns the handle of the only rule in chain of table inet
// tapswitch whose listing contains text.
func (ns testNS) handleOf(t *testing.T, chain, text string) string {
	t.Helper()
	re := regexp.MustCompile(`# handle (\d+)$`)
	var handles []string
	for _, line := range strings.Split(ns.nft(t, "-a", "list", "chain", "inet", "tapswitch", chain), "\n") {
		if m := re.FindStringSubmatch(line); m != nil && strings.Contains(line, text) {
			handles = append(handles, m[1])
		}
	}
	if len(handles) != 1 {
		t.Fatalf("%d rules in chain %s contain %q, want 1", len(handles), chain, text)
	}
	return handles[0]
}

// liveRules are lines `nft list table inet tapswitch` shows for
// dualStack(), as nft prints them back.
var liveRules = []string{
	`type filter hook prerouting priority raw; policy accept;`,
	`iifname "tsw0" ip daddr 127.0.0.0/8 drop comment "drop loopback destinations from the host port"`,
	`type nat hook prerouting priority dstnat; policy accept;`,
	`meta nfproto ipv4 fib daddr type local tcp dport 8080 dnat ip to 10.244.1.5:80 comment "hostPort tcp 0.0.0.0:8080 to 10.244.1.5:80"`,
	`ip daddr 192.168.1.10 fib daddr type local udp dport 5353 dnat ip to 10.244.1.5:53 comment "hostPort udp 192.168.1.10:5353 to 10.244.1.5:53"`,
	`ip daddr 127.0.0.1 tcp dport 9090 dnat ip to 10.244.1.6:9000 comment "hostPort tcp 127.0.0.1:9090 to 10.244.1.6:9000"`,
	`ip6 daddr != ::1 fib daddr type local tcp dport 8080 dnat ip6 to [fd00:10:244:1::5]:80 comment "hostPort tcp [::]:8080 to [fd00:10:244:1::5]:80"`,
	`ip6 daddr 2001:db8::10 fib daddr type local udp dport 5353 dnat ip6 to [fd00:10:244:1::5]:53`,
	`ip saddr 10.244.1.0/24 ip daddr != { 10.244.0.0/16, 10.250.0.0/16 } masquerade comment "masquerade 10.244.1.0/24 leaving the cluster"`,
	`ip6 saddr fd00:10:244:1::/64 ip6 daddr != fd00:10:244::/48 masquerade`,
	`ip saddr 10.244.1.5 ip daddr 10.244.1.5 tcp dport 80 masquerade comment "hairpin tcp 10.244.1.5:80"`,
	`ip saddr 127.0.0.0/8 oifname "tsw0" masquerade comment "masquerade node loopback to hostPorts"`,
}

// checkLive fails t unless table inet tapswitch in ns shows every line of
// liveRules.
func (ns testNS) checkLive(t *testing.T) {
	t.Helper()
	out := ns.nft(t, "list", "table", "inet", "tapswitch")
	for _, line := range liveRules {
		if !strings.Contains(out, line) {
			t.Errorf("nft list table inet tapswitch lacks %q; it shows\n%s", line, out)
		}
	}
}

func TestNetNSSync(t *testing.T) {
	ns := newTestNS(t, true)
	ctx := context.Background()
	// Someone else's table, which Sync and Delete must leave as it is.
	mustRun(t, "ip", "netns", "exec", ns.name, "nft", "add table inet other; "+
		"add chain inet other c { type filter hook input priority 0 ; }; "+
		`add rule inet other c tcp dport 22 accept comment "keep"`)
	other := ns.nft(t, "list", "table", "inet", "other")

	var r *Rules
	drifted := func(want bool, when string) {
		t.Helper()
		var got bool
		ns.do(t, "Drifted "+when, func() (err error) { got, err = r.Drifted(ctx); return err })
		if got != want {
			t.Fatalf("Drifted %s = %v, want %v", when, got, want)
		}
	}
	sync := func(when string) {
		t.Helper()
		ns.do(t, "Sync "+when, func() error { return r.Sync(ctx, dualStack()) })
	}
	ns.do(t, "New", func() (err error) { r, err = New(Options{}); return err })
	sync("first")
	ns.checkLive(t)
	rootHasNoTable(t, "tapswitch")
	if got := mustRun(t, "ip", "netns", "exec", ns.name, "cat", "/proc/sys/net/ipv4/conf/tsw0/route_localnet"); strings.TrimSpace(got) != "1" {
		t.Errorf("route_localnet on tsw0 = %q, want 1", got)
	}
	drifted(false, "after Sync")
	sync("again")
	drifted(false, "after a second Sync")

	h := ns.handleOf(t, "prerouting", "dport 8080 dnat ip to")
	ns.nft(t, "delete", "rule", "inet", "tapswitch", "prerouting", "handle", h)
	drifted(true, "after deleting a rule")
	sync("after deleting a rule")
	drifted(false, "after Sync restored the rule")
	ns.checkLive(t)

	ns.nft(t, "add", "rule", "inet", "tapswitch", "postrouting", "ip", "saddr", "10.9.9.9", "accept")
	drifted(true, "after adding a rule")
	sync("after adding a rule")

	h = ns.handleOf(t, "postrouting", "masquerade 10.244.1.0/24")
	ns.nft(t, "replace", "rule", "inet", "tapswitch", "postrouting", "handle", h, "ip", "saddr", "10.244.1.0/24", "accept")
	drifted(true, "after replacing a rule")
	sync("after replacing a rule")

	ns.nft(t, "delete", "chain", "inet", "tapswitch", "localnet_guard")
	drifted(true, "after deleting a chain")
	sync("after deleting a chain")

	ns.nft(t, "delete", "table", "inet", "tapswitch")
	drifted(true, "after deleting the table")
	sync("after deleting the table")
	drifted(false, "after Sync re-created the table")
	ns.checkLive(t)

	ns.do(t, "Delete", func() error { return r.Delete(ctx) })
	if out, err := exec.Command("ip", "netns", "exec", ns.name, "nft", "list", "table", "inet", "tapswitch").CombinedOutput(); err == nil {
		t.Errorf("table inet tapswitch still there after Delete:\n%s", out)
	}
	drifted(false, "after Delete")
	ns.do(t, "Delete with no table", func() error { return r.Delete(ctx) })
	if got := ns.nft(t, "list", "table", "inet", "other"); got != other {
		t.Errorf("table inet other changed from\n%s\nto\n%s", other, got)
	}
	rootHasNoTable(t, "other")
}

func TestNetNSSyncMissingDevice(t *testing.T) {
	ns := newTestNS(t, false)
	err := netnsutil.Do(ns.path, func() error {
		r, err := New(Options{})
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		return r.Sync(context.Background(), dualStack())
	})
	if err == nil || !strings.Contains(err.Error(), "device tsw0 does not exist") {
		t.Fatalf("Sync without tsw0 = %v, want an error naming tsw0", err)
	}
	if out := ns.nft(t, "list", "tables"); strings.Contains(out, "tapswitch") {
		t.Errorf("Sync that failed left a table:\n%s", out)
	}
}

func TestNetNSEnableForwarding(t *testing.T) {
	ns := newTestNS(t, false)
	root := []string{"/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"}
	read := func() []string {
		var vals []string
		for _, f := range root {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			vals = append(vals, strings.TrimSpace(string(b)))
		}
		return vals
	}
	before := read()
	var changed, again []string
	ns.do(t, "EnableForwarding", func() (err error) { changed, err = EnableForwarding(true); return err })
	want := []string{"net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"}
	if !slices.Equal(changed, want) {
		t.Errorf("EnableForwarding changed %q, want %q", changed, want)
	}
	for _, f := range root {
		if got := mustRun(t, "ip", "netns", "exec", ns.name, "cat", f); strings.TrimSpace(got) != "1" {
			t.Errorf("%s in the namespace = %q, want 1", f, got)
		}
	}
	ns.do(t, "EnableForwarding again", func() (err error) { again, err = EnableForwarding(true); return err })
	if len(again) != 0 {
		t.Errorf("second EnableForwarding changed %q, want nothing", again)
	}
	if after := read(); !slices.Equal(after, before) {
		t.Errorf("root namespace forwarding went from %q to %q", before, after)
	}
}
