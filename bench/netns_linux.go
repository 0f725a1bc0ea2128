package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// netnsDir is where ip-netns(8) keeps named namespaces.
const netnsDir = "/var/run/netns"

// pod is one end of a measurement: an interface with an address inside a
// network namespace the harness created.
type pod struct {
	ns     string       // namespace name, tswb-PID-...
	path   string       // /var/run/netns/NAME
	ifname string       // eth0
	ip     netip.Prefix // its IPv4 address and prefix
}

// nsPrefix starts the name of every namespace this process creates, so
// they are unique and a leftover one names its creator.
func nsPrefix() string { return fmt.Sprintf("tswb-%d-", os.Getpid()) }

// addNetNS creates the namespace nsPrefix()+suffix and registers its
// removal. It returns the namespace's name and path.
func addNetNS(ctx context.Context, cl *cleanups, suffix string) (name, path string, err error) {
	name = nsPrefix() + suffix
	if err := ipCmd(ctx, "netns", "add", name); err != nil {
		return "", "", err
	}
	cl.add("netns "+name, func() error { return deleteNetNS(name) })
	return name, filepath.Join(netnsDir, name), nil
}

// addNodeNS creates a namespace that plays a node, as addNetNS does, with
// its loopback up as a node's is.
func addNodeNS(ctx context.Context, cl *cleanups, suffix string) (name, path string, err error) {
	if name, path, err = addNetNS(ctx, cl, suffix); err != nil {
		return "", "", err
	}
	return name, path, ipCmd(ctx, "-n", name, "link", "set", "lo", "up")
}

// deleteNetNS removes a namespace and with it every device inside it.
// It runs during clean-up, so it does not take the (maybe cancelled)
// context of the run.
func deleteNetNS(name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return ipCmd(ctx, "netns", "delete", name)
}

// leftoverNetNS lists namespaces of this process that still exist.
func leftoverNetNS() []string {
	entries, _ := os.ReadDir(netnsDir)
	var left []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), nsPrefix()) {
			left = append(left, e.Name())
		}
	}
	return left
}

// ipCmd runs ip(8) with args; its output is in the error when it fails.
func ipCmd(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// nsCommand returns a command that runs name with args inside the
// namespace ns. The command gets its own process group, so a Ctrl-C at
// the terminal reaches only the harness, which then stops it in order.
func nsCommand(ctx context.Context, ns, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns, name}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// linkAddr4 returns the first IPv4 address, with its prefix, of ifname
// inside the namespace ns.
func linkAddr4(ctx context.Context, ns, ifname string) (netip.Prefix, error) {
	out, err := exec.CommandContext(ctx, "ip", "-n", ns, "-j", "-4", "addr", "show", "dev", ifname).Output()
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("ip -n %s addr show %s: %w", ns, ifname, err)
	}
	var links []struct {
		AddrInfo []struct {
			Local     string `json:"local"`
			PrefixLen int    `json:"prefixlen"`
		} `json:"addr_info"`
	}
	if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 || len(links[0].AddrInfo) == 0 {
		return netip.Prefix{}, fmt.Errorf("ip -n %s addr show %s: no IPv4 address in %q", ns, ifname, out)
	}
	a := links[0].AddrInfo[0]
	return netip.ParsePrefix(fmt.Sprintf("%s/%d", a.Local, a.PrefixLen))
}

// linkMTU returns the MTU of ifname inside the namespace ns.
func linkMTU(ctx context.Context, ns, ifname string) (int, error) {
	out, err := exec.CommandContext(ctx, "ip", "-n", ns, "-j", "link", "show", "dev", ifname).Output()
	if err != nil {
		return 0, fmt.Errorf("ip -n %s link show %s: %w", ns, ifname, err)
	}
	var links []struct {
		MTU int `json:"mtu"`
	}
	if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 {
		return 0, fmt.Errorf("ip -n %s link show %s: unexpected output %q", ns, ifname, out)
	}
	return links[0].MTU, nil
}
