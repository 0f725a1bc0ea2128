package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
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
	// Offloads maps an interface to its offload features, as ethtool -k
	// shows them: under each variant's name its client pod's interface,
	// and under "VARIANT ROLE" the interfaces of its way out (the egress
	// pod when it is another, the node's interface on the pod network and
	// the node's end of the world veth).
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
	first := ""
	for _, v := range variants {
		for _, it := range recordedLinks(v) {
			mtu, err := linkMTU(ctx, it.link.ns, it.link.ifname)
			if err != nil {
				return e, err
			}
			// Every one is set to benchMTU; a difference would make
			// the variants' figures incomparable.
			if first != "" && mtu != e.MTU {
				return e, fmt.Errorf("MTU of %s (%s) is %d, of %s %d: want the same everywhere", it.key, it.link.ifname, mtu, first, e.MTU)
			}
			first, e.MTU = it.key, mtu
			e.Offloads[it.key] = offloads(ctx, it.link)
		}
	}
	return e, nil
}

// recordedLink is an interface whose MTU and offloads collectEnv records,
// under key.
type recordedLink struct {
	key  string
	link pod
}

// recordedLinks lists v's interfaces that carry the measured traffic and
// whose offloads change the figures.
func recordedLinks(v *variant) []recordedLink {
	links := []recordedLink{{v.name, v.client}}
	o := v.outside
	if o.pod.ns != v.client.ns {
		links = append(links, recordedLink{v.name + " egress pod", o.pod})
	}
	return append(links,
		recordedLink{v.name + " node " + o.node.ifname, o.node},
		recordedLink{v.name + " node " + worldVeth + " veth", pod{ns: o.node.ns, ifname: worldVeth}},
	)
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
