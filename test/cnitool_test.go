package test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"tapswitch/internal/testutil"
)

// cnitoolScriptTimeout bounds one run of cnitool.sh; a run takes a few
// seconds, and the daemon, plugin and tapswitchctl run under the race
// detector.
const cnitoolScriptTimeout = 3 * time.Minute

// TestCNIToolLifecycle runs cnitool.sh: the CNI lifecycle as a user drives
// it by hand, with the plugin and conflist staged by make install and
// cnitool run on a node namespace (see the script's header for what it
// checks). It runs with the conflist as shipped, and with cniVersion 1.1.0,
// the first version for which libcni sends STATUS and GC to the plugin.
func TestCNIToolLifecycle(t *testing.T) {
	testutil.RequireRoot(t)
	tools := cniTools(t, "cnitool")
	for _, tc := range []struct {
		name       string
		cniVersion string // "" keeps the shipped conflist's
	}{
		{"shipped-conflist", ""},
		{"cniVersion-1.1.0", "1.1.0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			runCNIToolScript(t, filepath.Join(tools, "cnitool"), tc.cniVersion)
		})
	}
}

// runCNIToolScript runs cnitool.sh with the binaries this package built,
// logging its output line by line, and fails t unless it exits 0. On
// timeout the script's process group gets SIGTERM, so its trap removes what
// it made; the namespaces carry this process's tsw-test-PID- prefix, so a
// leftover is also caught here and by TestMain.
func runCNIToolScript(t *testing.T, cnitool, cniVersion string) {
	prefix := fmt.Sprintf("tsw-test-%d-cnitool", os.Getpid())
	ctx, cancel := context.WithTimeout(context.Background(), cnitoolScriptTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "cnitool.sh")
	cmd.Env = append(os.Environ(),
		"TAPSWITCH_BIN="+binDir,
		"CNITOOL="+cnitool,
		"CNI_VERSION="+cniVersion,
		"NETNS_PREFIX="+prefix,
	)
	log := &testutil.LineLog{T: t}
	cmd.Stdout, cmd.Stderr = log, log
	// The script, the daemon and every tool it runs share a process
	// group: SIGTERM to the group stops whatever is running and lets the
	// script's trap clean up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
	cmd.WaitDelay = 30 * time.Second
	err := cmd.Run()
	log.Flush()
	switch {
	case ctx.Err() != nil && cmd.Process != nil:
		// The trap had its time; stop anything left so that nothing
		// keeps running after the test.
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		t.Errorf("cnitool.sh did not finish within %v (%v); its output is above", cnitoolScriptTimeout, err)
	case err != nil:
		t.Errorf("cnitool.sh: %v; its output is above", err)
	}
	if left := namespacesWithPrefix(prefix); len(left) > 0 {
		t.Errorf("cnitool.sh left namespaces behind: %v", left)
	}
}
