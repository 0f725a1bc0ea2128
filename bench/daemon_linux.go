package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"tapswitch/daemon/api"
)

// daemonProc is a tapswitchd the harness started, with its own socket,
// state folder and log in a temporary folder.
type daemonProc struct {
	binDir string
	socket string
	log    string
	cmd    *exec.Cmd
	exited chan error // gets Wait's result once
}

// startDaemon starts bin/tapswitchd on podCIDR inside the namespace node,
// which plays the node, with its files in dir, registers its stop on cl
// and waits until its socket accepts connections. The daemon's host port
// (tsw0, with a route to podCIDR) and its egress sockets are the node
// namespace's, so the machine's root namespace gains no device or route.
// It forwards DNS nowhere (--dns none): nothing the harness measures asks.
// extra are more daemon flags, after the harness's own, such as
// "--egress", "proxy".
func startDaemon(ctx context.Context, cl *cleanups, binDir, dir, node string, podCIDR netip.Prefix, mtu int, extra ...string) (*daemonProc, error) {
	d := &daemonProc{
		binDir: binDir,
		socket: filepath.Join(dir, "tapswitchd.sock"),
		log:    filepath.Join(dir, "tapswitchd.log"),
		exited: make(chan error, 1),
	}
	// ip runs the daemon, so a missing binary would only show in the log.
	if _, err := os.Stat(filepath.Join(binDir, "tapswitchd")); err != nil {
		return nil, fmt.Errorf("tapswitchd (make build first?): %w", err)
	}
	logf, err := os.Create(d.log)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child has its own copy
	// ip netns exec enters the namespace and execs the daemon, so the
	// process the harness signals and meters is tapswitchd itself.
	args := []string{"netns", "exec", node, filepath.Join(binDir, "tapswitchd"),
		"--socket", d.socket, "--state-dir", filepath.Join(dir, "state"),
		"--pod-cidr", podCIDR.String(), "--mtu", fmt.Sprint(mtu), "--dns", "none", "--log-level", "warn"}
	d.cmd = exec.Command("ip", append(args, extra...)...)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	// Its own process group: a Ctrl-C reaches the harness, which detaches
	// the pods before it stops the daemon.
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start tapswitchd: %w", err)
	}
	go func() { d.exited <- d.cmd.Wait() }()
	cl.add("tapswitchd", d.stop)
	return d, d.waitReady(ctx)
}

// pid is the daemon's process ID, for its CPU time and memory.
func (d *daemonProc) pid() int { return d.cmd.Process.Pid }

// waitReady waits until the API socket accepts a connection.
func (d *daemonProc) waitReady(ctx context.Context) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := net.Dial("unix", d.socket); err == nil {
			c.Close()
			return nil
		}
		select {
		case err := <-d.exited:
			d.exited <- err
			return fmt.Errorf("tapswitchd exited at start: %v\n%s", err, d.logTail())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("tapswitchd did not listen on %s within 10s\n%s", d.socket, d.logTail())
		}
	}
}

// stop sends SIGTERM and waits for the daemon to exit, killing it after
// 15 s. TAPs of pods still attached persist; removing their namespaces
// removes them.
func (d *daemonProc) stop() error {
	select {
	case err := <-d.exited:
		d.exited <- err
		return fmt.Errorf("tapswitchd had exited during the run: %v\n%s", err, d.logTail())
	default:
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-d.exited:
		d.exited <- err
		if err != nil {
			return fmt.Errorf("tapswitchd exited with %v after SIGTERM\n%s", err, d.logTail())
		}
		return nil
	case <-time.After(15 * time.Second):
		d.cmd.Process.Kill()
		<-d.exited
		return errors.New("tapswitchd did not stop within 15s of SIGTERM; killed")
	}
}

// logTail returns the end of the daemon's log, for error messages.
func (d *daemonProc) logTail() string {
	b, _ := os.ReadFile(d.log)
	if len(b) > 4096 {
		b = b[len(b)-4096:]
	}
	return "tapswitchd log:\n" + string(b)
}

// attachedPod is the part of tapswitchctl's pod JSON the harness uses.
// Offloads and Queues are newer fields, nil when the daemon does not
// report them.
type attachedPod struct {
	ID       string         `json:"id"`
	IfName   string         `json:"ifname"`
	IPs      []netip.Prefix `json:"ips"`
	MTU      int            `json:"mtu"`
	Port     string         `json:"port"`
	Offloads *bool          `json:"offloads,omitempty"`
	Queues   *int           `json:"queues,omitempty"`
}

// addPod attaches the namespace at nsPath as pod id with tapswitchctl, as
// an operator would, and registers its detach on cl.
func (d *daemonProc) addPod(ctx context.Context, cl *cleanups, id, nsPath string) (attachedPod, error) {
	var p attachedPod
	out, err := d.ctl(ctx, "pod", "add", "--id", id, "--netns", nsPath, "-o", "json")
	if err != nil {
		return p, err
	}
	cl.add("pod "+id, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, err := d.ctl(ctx, "pod", "del", "--id", id)
		return err
	})
	if err := json.Unmarshal(out, &p); err != nil {
		return p, fmt.Errorf("tapswitchctl pod add: decode %q: %w", out, err)
	}
	if len(p.IPs) == 0 || !p.IPs[0].Addr().Is4() {
		return p, fmt.Errorf("tapswitchctl pod add: pod %s has no IPv4 address: %s", id, out)
	}
	return p, nil
}

// ctl runs tapswitchctl with args and the daemon's socket, and returns its
// standard output.
func (d *daemonProc) ctl(ctx context.Context, args ...string) ([]byte, error) {
	args = append(args, "--socket", d.socket)
	cmd := exec.CommandContext(ctx, filepath.Join(d.binDir, "tapswitchctl"), args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("tapswitchctl %v: %w: %s", args, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out, nil
}

// drops returns the switch's drops by reason, added up over every port.
func (d *daemonProc) drops(ctx context.Context) (map[string]uint64, error) {
	out, err := d.ctl(ctx, "stats", "-o", "json")
	if err != nil {
		return nil, err
	}
	var st api.Stats
	if err := json.Unmarshal(out, &st); err != nil {
		return nil, fmt.Errorf("tapswitchctl stats: decode: %w", err)
	}
	sum := make(map[string]uint64)
	for _, p := range st.Ports {
		for reason, n := range p.Drops {
			sum[reason] += n
		}
	}
	return sum, nil
}
