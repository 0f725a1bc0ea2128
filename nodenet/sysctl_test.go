package nodenet

import (
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

func TestEnableForwardingTree(t *testing.T) {
	dir := sysctlTree(t)
	changed, err := enableForwarding(dir, true)
	want := []string{"net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"}
	if err != nil || !slices.Equal(changed, want) {
		t.Fatalf("enableForwarding = %q, %v; want %q, nil", changed, err, want)
	}
	readSysctl(t, dir, "net/ipv4/ip_forward", "1")
	readSysctl(t, dir, "net/ipv6/conf/all/forwarding", "1")
	if changed, err := enableForwarding(dir, true); err != nil || len(changed) != 0 {
		t.Errorf("second enableForwarding = %q, %v; want nothing changed", changed, err)
	}
}

func TestEnableForwardingV4Only(t *testing.T) {
	dir := sysctlTree(t)
	if err := os.RemoveAll(filepath.Join(dir, "net/ipv6")); err != nil {
		t.Fatal(err)
	}
	changed, err := enableForwarding(dir, false)
	if err != nil || !slices.Equal(changed, []string{"net.ipv4.ip_forward"}) {
		t.Fatalf("enableForwarding(v4) = %q, %v", changed, err)
	}
	_, err = enableForwarding(dir, true)
	if err == nil || !strings.Contains(err.Error(), "IPv6 turned off") ||
		!strings.Contains(err.Error(), filepath.Join(dir, "net/ipv6/conf/all/forwarding")) {
		t.Errorf("enableForwarding(v6) without IPv6 = %v, want an error naming the file and saying IPv6 is off", err)
	}
}

func TestEnsureRouteLocalnet(t *testing.T) {
	dir := sysctlTree(t, "eth0.100")
	changed, err := ensureRouteLocalnet(dir, "eth0.100")
	if err != nil || !changed {
		t.Fatalf("ensureRouteLocalnet = %v, %v; want true, nil", changed, err)
	}
	readSysctl(t, dir, "net/ipv4/conf/eth0.100/route_localnet", "1")
	if changed, err := ensureRouteLocalnet(dir, "eth0.100"); changed || err != nil {
		t.Errorf("second ensureRouteLocalnet = %v, %v; want false, nil", changed, err)
	}
	if _, err := ensureRouteLocalnet(dir, "tsw0"); err == nil || !strings.Contains(err.Error(), "device tsw0 does not exist") {
		t.Errorf("ensureRouteLocalnet(missing device) = %v", err)
	}
}

func TestSysctlError(t *testing.T) {
	name := []string{"net", "ipv4", "conf", "eth0.100", "route_localnet"}
	path := "/proc/sys/net/ipv4/conf/eth0.100/route_localnet"
	tests := []struct {
		errno syscall.Errno
		want  string
	}{
		{syscall.EROFS, "set net.ipv4.conf.eth0/100.route_localnet=1: open " + path + ": read-only file system; the daemon needs write access to /proc/sys, e.g. a privileged container"},
		{syscall.EACCES, "needs CAP_NET_ADMIN"},
		{syscall.EPERM, "needs CAP_NET_ADMIN"},
		{syscall.ENOENT, "no such sysctl"},
		{syscall.EIO, "route_localnet=1: open " + path + ": input/output error"},
	}
	for _, tt := range tests {
		err := sysctlError(name, &fs.PathError{Op: "open", Path: path, Err: tt.errno})
		if !strings.Contains(err.Error(), tt.want) {
			t.Errorf("sysctlError(%v) = %q, want it to contain %q", tt.errno, err, tt.want)
		}
	}
}
