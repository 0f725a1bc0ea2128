// Package testutil holds helpers for tests that need privileges or check
// for leaks, and wait for a condition: RequireRoot, NewNetNS,
// CheckGoroutines and WaitFor. It starts no
// goroutines; NewNetNS runs the ip(8) command.
package testutil

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// RequireRoot skips t, saying why, unless the test runs as root. When the
// environment variable CI is set it fails t instead, so a CI job that lost
// its privileges does not pass by skipping everything.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	const why = "needs root to create network namespaces and devices"
	if os.Getenv("CI") != "" {
		t.Fatal(why + " (CI is set, so not skipping)")
	}
	t.Skip(why)
}

// netnsDir is where ip-netns(8) keeps named namespaces.
const netnsDir = "/var/run/netns"

// NewNetNS creates a network namespace with a unique name
// (tsw-test-PID-RANDOM) and returns its path, /var/run/netns/NAME. Its
// cleanup, which deletes the namespace and checks the name is gone, is
// registered before NewNetNS returns, so it runs after every cleanup the
// test registers later for things made inside the namespace. A test may
// delete the namespace itself, as a runtime does when a pod goes; the
// cleanup then finds nothing to do.
func NewNetNS(t testing.TB) string {
	t.Helper()
	var rnd [4]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("tsw-test-%d-%s", os.Getpid(), hex.EncodeToString(rnd[:]))
	path := filepath.Join(netnsDir, name)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, strings.TrimSpace(string(out)))
	}
	t.Cleanup(func() {
		if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
			return // the test deleted it
		}
		if out, err := exec.Command("ip", "netns", "delete", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns delete %s: %v: %s", name, err, strings.TrimSpace(string(out)))
		}
		if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("netns %s left behind (stat: %v)", path, err)
		}
	})
	return path
}

// CheckGoroutines records how many goroutines run now and registers a
// cleanup that fails t if more still run a few seconds later, printing
// their stacks. Tests that use it must not run in parallel with others.
func CheckGoroutines(t testing.TB) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() { WaitGoroutines(t, before) })
}

// WaitGoroutines fails t, printing every stack, unless the number of
// goroutines comes down to before within a few seconds.
func WaitGoroutines(t testing.TB, before int) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Errorf("goroutines leaked: %d running, %d before\n%s",
				runtime.NumGoroutine(), before, buf)
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// WaitFor polls cond every few milliseconds until it holds, and fails t
// naming what it waited for if that takes more than 10 s.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
