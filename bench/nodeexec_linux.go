package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
	"golang.org/x/sys/unix"
)

// nodeExec is libcni's invoke.Exec for plugins that must run inside a
// namespace that plays the node. A runtime on a real node runs in the
// host's namespace and execs the plugin directly; here the plugin is
// started from an OS thread that has entered the node namespace, so the
// process is born in it (a child takes the namespaces of the thread that
// forks it), without a wrapper such as ip netns exec whose own start-up
// would be timed along. The plugins need no /sys of the node (they use
// netlink and /proc/sys, which follow the process's namespace).
//
// runLoop owns that thread; stop ends it, and the thread with it.
// ExecPlugin is called by one goroutine at a time (libcni's calls run one
// after another), which also reads runs.
type nodeExec struct {
	node string    // namespace name
	w    io.Writer // gets what a plugin wrote to stderr
	reqs chan func()
	quit chan struct{}
	done chan struct{} // closed when runLoop has returned
	// runs holds how long each plugin process ran, start to exit.
	runs []time.Duration
}

var _ invoke.Exec = (*nodeExec)(nil)

// startNodeExec starts the runner thread inside the namespace node.
func startNodeExec(node string, w io.Writer) (*nodeExec, error) {
	e := &nodeExec{node: node, w: w, reqs: make(chan func()), quit: make(chan struct{}), done: make(chan struct{})}
	entered := make(chan error, 1)
	go e.runLoop(filepath.Join(netnsDir, node), entered)
	if err := <-entered; err != nil {
		<-e.done
		return nil, err
	}
	return e, nil
}

// runLoop locks itself to its thread, enters the namespace at path and
// runs what do hands it until stop. It never unlocks the thread: the
// runtime ends a thread whose goroutine exits locked, so no other
// goroutine ever runs in the node namespace.
func (e *nodeExec) runLoop(path string, entered chan<- error) {
	defer close(e.done)
	runtime.LockOSThread()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		entered <- fmt.Errorf("open netns %s: %w", path, err)
		return
	}
	err = unix.Setns(fd, unix.CLONE_NEWNET)
	unix.Close(fd)
	if err != nil {
		entered <- fmt.Errorf("enter netns %s: %w", path, err)
		return
	}
	entered <- nil
	for {
		select {
		case f := <-e.reqs:
			f()
		case <-e.quit:
			return
		}
	}
}

// do runs f on the runner's thread and waits for it.
func (e *nodeExec) do(f func()) error {
	finished := make(chan struct{})
	select {
	case e.reqs <- func() { defer close(finished); f() }:
	case <-e.done:
		return fmt.Errorf("the plugin runner in %s has stopped", e.node)
	}
	<-finished
	return nil
}

// stop ends the runner and its thread.
func (e *nodeExec) stop() error {
	close(e.quit)
	<-e.done
	return nil
}

// checkNetNS starts readlink /proc/self/ns/net through the runner and
// checks that it was born in the node namespace: no plugin runs before
// this holds, since the bridge plugin changes the namespace it runs in.
func (e *nodeExec) checkNetNS(ctx context.Context) error {
	var st unix.Stat_t
	path := filepath.Join(netnsDir, e.node)
	if err := unix.Stat(path, &st); err != nil {
		return fmt.Errorf("stat %s: %w", path, err)
	}
	want := fmt.Sprintf("net:[%d]", st.Ino)
	cmd := exec.CommandContext(ctx, "readlink", "/proc/self/ns/net")
	var out []byte
	var err error
	if derr := e.do(func() { out, err = cmd.Output() }); derr != nil {
		return derr
	}
	if err != nil {
		return fmt.Errorf("readlink /proc/self/ns/net from the runner in %s: %w", e.node, err)
	}
	if got := strings.TrimSpace(string(out)); got != want {
		return fmt.Errorf("a process the runner in %s starts is in %s, want %s (the node's): refusing to run plugins", e.node, got, want)
	}
	return nil
}

// ExecPlugin runs the plugin with environ and stdinData, as libcni's
// RawExec does, but born in the node namespace and in a process group of
// its own, so a Ctrl-C reaches only the harness, which lets the call end
// and deletes the pods in order. It records how long the process ran.
func (e *nodeExec) ExecPlugin(ctx context.Context, pluginPath string, stdinData []byte, environ []string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, pluginPath)
	cmd.Env = environ
	cmd.Stdin = bytes.NewReader(stdinData)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// The bridge plugin runs host-local as a child: a timeout stops both.
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var took time.Duration
	var err error
	if derr := e.do(func() {
		start := time.Now()
		err = cmd.Run()
		took = time.Since(start)
	}); derr != nil {
		return nil, derr
	}
	if err != nil {
		return nil, pluginError(err, stdout.Bytes(), stderr.Bytes())
	}
	e.runs = append(e.runs, took)
	if stderr.Len() > 0 {
		fmt.Fprintf(e.w, "%s: %s\n", filepath.Base(pluginPath), bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.Bytes(), nil
}

// pluginError is a failed plugin's error: the CNI error it printed, with
// what it wrote to stderr, or what went wrong running it.
func pluginError(err error, stdout, stderr []byte) error {
	var e types.Error
	if len(stdout) > 0 && json.Unmarshal(stdout, &e) == nil && e.Msg != "" {
		if len(stderr) > 0 {
			e.Details = strings.TrimSpace(e.Details + "; stderr: " + string(bytes.TrimSpace(stderr)))
		}
		return &e
	}
	return &types.Error{Code: types.ErrInternal, Msg: fmt.Sprintf("plugin failed: %v", err),
		Details: fmt.Sprintf("stdout %q, stderr %q", bytes.TrimSpace(stdout), bytes.TrimSpace(stderr))}
}

// FindInPath finds the plugin as libcni's default exec does.
func (e *nodeExec) FindInPath(plugin string, paths []string) (string, error) {
	return invoke.FindInPath(plugin, paths)
}

// Decode decodes a VERSION answer as libcni's default exec does.
func (e *nodeExec) Decode(b []byte) (version.PluginInfo, error) {
	var d version.PluginDecoder
	return d.Decode(b)
}
