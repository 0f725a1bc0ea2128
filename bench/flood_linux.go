package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"tapswitch/daemon"
	"tapswitch/daemon/api"
	"tapswitch/internal/netnsutil"
)

// floodResult is the cost of flooding broadcast frames from one pod to
// every other port of the switch.
type floodResult struct {
	Skipped  string  `json:"skipped,omitempty"` // why it was not measured
	Ports    int     `json:"ports"`
	Sent     int     `json:"sent"`      // broadcasts the sender's socket sent
	SwitchRx uint64  `json:"switch_rx"` // frames the switch read from the sender's port
	Copies   uint64  `json:"copies"`    // frames written to the other ports
	Drops    uint64  `json:"drops"`     // frames the switch dropped, all ports
	Seconds  float64 `json:"seconds"`
	// CPU of the daemon during the flood, less its idle rate just before.
	CPUSeconds    float64 `json:"cpu_s"`
	IdleCPUPerSec float64 `json:"idle_cpu_s_per_s"`
	// Frames the switch wrote per second just before, while nothing was
	// sent; subtracted from Copies.
	IdleCopiesPerSec float64 `json:"idle_copies_per_s"`
	CPUUsPerFrame    float64 `json:"cpu_us_per_frame"` // per frame read from the sender
	CPUNsPerCopy     float64 `json:"cpu_ns_per_copy"`
	CopiesPerSec     float64 `json:"copies_per_s"`
	FramesReadRate   float64 `json:"frames_per_s"`
}

// floodPort is the UDP port the broadcasts go to: discard (RFC 863). No
// pod listens, and no ICMP error answers a broadcast (RFC 1122 3.2.2).
const floodPort = 9

// daemonPorts are the ports the daemon makes itself: its gateway (the
// netstack port's default name, which the daemon keeps) and its host port.
// The harness runs the daemon inside a node namespace of its own, so a
// broadcast reaching them stays in the harness's namespaces: the gateway
// forwards no broadcast, and tsw0 is the node namespace's.
var daemonPorts = []string{"netstack", daemon.DefaultHostPort}

// measureFlood sends n UDP broadcasts, rate per second, from the first
// pod's namespace to its subnet's broadcast address; the switch floods
// each to every other port. It measures only if every port of the switch
// is one of pods or one of daemonPorts, so the broadcasts reach nothing
// but the harness's own namespaces; otherwise it says why in Skipped.
func measureFlood(ctx context.Context, c *api.Client, pid int, pods []api.Pod, n, rate int) (floodResult, error) {
	var res floodResult
	ours := make(map[string]bool, len(pods)+len(daemonPorts))
	for _, p := range pods {
		ours[p.Port] = true
	}
	for _, name := range daemonPorts {
		ours[name] = true
	}
	st0, err := c.Stats(ctx)
	if err != nil {
		return res, err
	}
	res.Ports = len(st0.Ports)
	for _, ps := range st0.Ports {
		if !ours[ps.Name] {
			res.Skipped = fmt.Sprintf("port %q is neither one of the bench's pods nor the daemon's own, so a broadcast could leave them", ps.Name)
			return res, nil
		}
	}
	sender := pods[0]
	fd, dst, err := broadcastSocket(sender)
	if err != nil {
		return res, err
	}
	defer unix.Close(fd)

	if err := quietPods(ctx, c, pods); err != nil {
		return res, err
	}
	if err := measureIdle(ctx, c, pid, &res); err != nil {
		return res, err
	}
	st0, err = c.Stats(ctx)
	if err != nil {
		return res, err
	}
	cpu0, err := processCPU(pid)
	if err != nil {
		return res, err
	}
	start := time.Now()
	payload := make([]byte, 18) // a 60-byte frame, Ethernet's minimum
	for i := range n {
		// Paced, so the figure is the cost at a load the switch carries
		// rather than the sender's TAP queue overflowing.
		due := start.Add(time.Duration(i) * time.Second / time.Duration(rate))
		if ahead := time.Until(due); ahead > time.Millisecond {
			time.Sleep(ahead)
		}
		err := unix.Sendto(fd, payload, 0, dst)
		if err != nil && !errors.Is(err, unix.ENOBUFS) && !errors.Is(err, unix.EAGAIN) {
			return res, fmt.Errorf("flood: send: %w", err)
		}
		if err == nil {
			res.Sent++
		}
	}
	st1, end, err := waitQuiet(ctx, c, sender.Port)
	if err != nil {
		return res, err
	}
	cpu1, err := processCPU(pid)
	if err != nil {
		return res, err
	}
	res.Seconds = end.Sub(start).Seconds()
	res.SwitchRx, res.Copies, res.Drops = floodCounts(st0, st1, sender.Port)
	res.Copies -= min(res.Copies, uint64(res.IdleCopiesPerSec*res.Seconds))
	res.CPUSeconds = max((cpu1-cpu0).Seconds()-res.IdleCPUPerSec*res.Seconds, 0)
	if res.SwitchRx == 0 || res.Copies == 0 {
		return res, fmt.Errorf("flood: the switch read %d frames from %s and wrote %d copies", res.SwitchRx, sender.ID, res.Copies)
	}
	res.CPUUsPerFrame = res.CPUSeconds / float64(res.SwitchRx) * 1e6
	res.CPUNsPerCopy = res.CPUSeconds / float64(res.Copies) * 1e9
	res.CopiesPerSec = float64(res.Copies) / res.Seconds
	res.FramesReadRate = float64(res.SwitchRx) / res.Seconds
	return res, nil
}

// broadcastSocket returns a UDP socket inside p's namespace that may send
// to the broadcast address of p's subnet, and that address.
func broadcastSocket(p api.Pod) (int, unix.Sockaddr, error) {
	if len(p.IPs) == 0 || !p.IPs[0].Addr().Is4() {
		return -1, nil, fmt.Errorf("flood: pod %s has no IPv4 address", p.ID)
	}
	dst := &unix.SockaddrInet4{Port: floodPort, Addr: lastAddr(p.IPs[0]).As4()}
	fd := -1
	err := netnsutil.Do(p.NetNS, func() error {
		var err error
		if fd, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err != nil {
			return err
		}
		return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_BROADCAST, 1)
	})
	if err != nil {
		if fd >= 0 {
			unix.Close(fd)
		}
		return -1, nil, fmt.Errorf("flood: socket in %s: %w", p.NetNS, err)
	}
	return fd, dst, nil
}

// lastAddr returns the broadcast address of an IPv4 prefix.
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	for i := range 4 {
		a[i] |= byte(host >> (24 - 8*i))
	}
	return netip.AddrFrom4(a)
}

// quietPods turns IPv6 off on the pods' interfaces and waits until the
// switch hears nothing more: pods that just came up keep sending router
// solicitations and MLD reports for a while, which the switch floods to
// every port too and which would blur the figure. The pods' attaches were
// measured before, with IPv6 on, as a real pod has it.
func quietPods(ctx context.Context, c *api.Client, pods []api.Pod) error {
	for _, p := range pods {
		ns := filepath.Base(p.NetNS)
		// Written by a shell inside the pod's namespace: /proc/sys/net is
		// the namespace's own there. The root namespace is not touched.
		err := exec.CommandContext(ctx, "ip", "netns", "exec", ns, "sh", "-c",
			`echo 1 > "/proc/sys/net/ipv6/conf/$1/disable_ipv6"`, "sh", p.IfName).Run()
		if err != nil {
			return fmt.Errorf("flood: turn IPv6 off in %s: %w", ns, err)
		}
	}
	// Something that keeps talking is measured by measureIdle and
	// subtracted instead.
	if _, _, err := waitQuiet(ctx, c, ""); err != nil && !errors.Is(err, errNotQuiet) {
		return err
	}
	return nil
}

// measureIdle sets res's idle rates: the daemon's CPU time and the frames
// the switch writes per second over one second while nothing is sent.
func measureIdle(ctx context.Context, c *api.Client, pid int, res *floodResult) error {
	const d = time.Second
	st0, err := c.Stats(ctx)
	if err != nil {
		return err
	}
	c0, err := processCPU(pid)
	if err != nil {
		return err
	}
	time.Sleep(d)
	c1, err := processCPU(pid)
	if err != nil {
		return err
	}
	st1, err := c.Stats(ctx)
	if err != nil {
		return err
	}
	_, copies, _ := floodCounts(st0, st1, "")
	res.IdleCPUPerSec = (c1 - c0).Seconds() / d.Seconds()
	res.IdleCopiesPerSec = float64(copies) / d.Seconds()
	return nil
}

// errNotQuiet means frames kept coming for 30 s.
var errNotQuiet = errors.New("flood: the switch's counters did not settle in 30s")

// waitQuiet polls the switch's counters until the frames received from the
// port named sender, or from every port if sender is "", stop growing. It
// returns the last snapshot and when they last grew.
func waitQuiet(ctx context.Context, c *api.Client, sender string) (api.Stats, time.Time, error) {
	var last uint64
	lastChange := time.Now()
	deadline := lastChange.Add(30 * time.Second)
	for {
		st, err := c.Stats(ctx)
		if err != nil {
			return st, lastChange, err
		}
		rx := received(st, sender)
		if rx != last {
			last, lastChange = rx, time.Now()
		} else if time.Since(lastChange) > 300*time.Millisecond {
			return st, lastChange, nil
		}
		if time.Now().After(deadline) {
			return st, lastChange, errNotQuiet
		}
		select {
		case <-ctx.Done():
			return st, lastChange, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// received returns the frames received from the named port, or from all
// ports if name is "".
func received(st api.Stats, name string) uint64 {
	var n uint64
	for _, ps := range st.Ports {
		if name == "" || ps.Name == name {
			n += ps.RxFrames
		}
	}
	return n
}

// floodCounts returns, between two snapshots, the frames read from the
// sender's port, the frames written to the other ports and the drops of
// all ports.
func floodCounts(before, after api.Stats, sender string) (rx, copies, drops uint64) {
	prev := make(map[string][3]uint64, len(before.Ports))
	for _, ps := range before.Ports {
		prev[ps.Name] = [3]uint64{ps.RxFrames, ps.TxFrames, ps.TotalDrops()}
	}
	for _, ps := range after.Ports {
		p := prev[ps.Name]
		if ps.Name == sender {
			rx += ps.RxFrames - p[0]
		} else {
			copies += ps.TxFrames - p[1]
		}
		drops += ps.TotalDrops() - p[2]
	}
	return rx, copies, drops
}
