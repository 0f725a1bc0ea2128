package main

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// env is what the numbers depend on besides the code: it goes into the
// results' meta object and above the table.
type env struct {
	Kernel   string `json:"kernel"`
	CPUs     int    `json:"cpus"`
	CPUModel string `json:"cpu_model"`
	Iperf3   string `json:"iperf3"`
	MTU      int    `json:"mtu"`
	// Offloads maps a variant to the offload features of its client pod's
	// interface, as ethtool -k shows them.
	Offloads map[string]map[string]string `json:"offloads"`
}

// offloadFeatures are the ethtool -k lines recorded for each pod.
var offloadFeatures = []string{
	"tx-checksumming", "rx-checksumming", "scatter-gather",
	"tcp-segmentation-offload", "generic-segmentation-offload",
	"generic-receive-offload",
}

// collectEnv records the machine and each variant's pod interface.
func collectEnv(ctx context.Context, variants []*variant) (env, error) {
	e := env{CPUs: runtime.NumCPU(), CPUModel: cpuModel(), Offloads: make(map[string]map[string]string)}
	var u unix.Utsname
	if err := unix.Uname(&u); err == nil {
		e.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	if out, err := exec.CommandContext(ctx, "iperf3", "--version").Output(); err == nil {
		e.Iperf3, _, _ = strings.Cut(string(out), "\n")
	}
	for _, v := range variants {
		mtu, err := linkMTU(ctx, v.client.ns, v.client.ifname)
		if err != nil {
			return e, err
		}
		e.MTU = mtu // the same for every variant: both are set to benchMTU
		e.Offloads[v.name] = offloads(ctx, v.client)
	}
	return e, nil
}

// offloads returns the offload features of p's interface, or one entry
// saying why they are unknown.
func offloads(ctx context.Context, p pod) map[string]string {
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", p.ns, "ethtool", "-k", p.ifname).Output()
	if err != nil {
		return map[string]string{"unknown": "ethtool -k failed (make deps installs ethtool): " + err.Error()}
	}
	m := make(map[string]string)
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && slices.Contains(offloadFeatures, k) {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}

// cpuModel returns the first "model name" of /proc/cpuinfo.
func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
