package ipam

import (
	"bufio"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// crashChildEnv, when set, makes the test binary run crashChild on the
// store it names instead of the tests.
const crashChildEnv = "IPAM_CRASH_CHILD_STORE"

func TestMain(m *testing.M) {
	if path := os.Getenv(crashChildEnv); path != "" {
		crashChild(path, os.Getenv("IPAM_CRASH_RUN"))
	}
	os.Exit(m.Run())
}

func crashConfig() Config {
	return Config{V4: pfx("10.244.0.0/24"), V6: pfx("fd00::/120")} // 252 and 253 pods
}

// crashChild allocates and releases in a loop until it is killed. It
// writes one line to stdout per event, each with one write(2), so a line
// is either whole or missing:
//
//	"A id ips"  after Allocate returned
//	"r id"      before Release is called
//	"R id"      after Release returned
//
// It keeps about 50 leases, releasing the oldest, so the range wraps.
func crashChild(path, run string) {
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	b, err := OpenBolt(path, 5*time.Second)
	if err != nil {
		fail(err)
	}
	a, err := New(crashConfig(), b, nil)
	if err != nil {
		fail(err)
	}
	held := a.List()
	slices.SortFunc(held, func(x, y Lease) int { return x.Since.Compare(y.Since) })
	var live []Key
	for _, l := range held {
		live = append(live, l.Key)
	}
	fmt.Println("ready")
	for i := 0; ; i++ {
		k := Key{ContainerID: fmt.Sprintf("run%s-%d", run, i), IfName: "eth0"}
		l, err := a.Allocate(k)
		if err != nil {
			fail(err)
		}
		fmt.Printf("A %s %s\n", k.ContainerID, ips(l))
		live = append(live, k)
		for len(live) > 50 {
			k := live[0]
			live = live[1:]
			fmt.Printf("r %s\n", k.ContainerID)
			if _, _, err := a.Release(k); err != nil {
				fail(err)
			}
			fmt.Printf("R %s\n", k.ContainerID)
		}
	}
}

// crashBook is what the parent learned from the children's output.
type crashBook struct {
	held      map[string]string // container ID → addresses: must be in the store
	releasing map[string]string // Release called, not known to have returned: either
	allocs    int

	// Kills that landed inside a call: the store settles each.
	unannounced      int // Allocate committed, not reported
	releaseCommitted int // Release committed, not reported
	releaseLost      int // Release called, not committed
}

// TestCrashSafety kills a child allocating on a Bolt store with SIGKILL at
// random points, many times. After each kill the store must open, hold no
// address twice, hold every lease the child was told was committed and
// none it was told was released.
func TestCrashSafety(t *testing.T) {
	if testing.Short() {
		t.Skip("re-executes the test binary 50 times")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "ipam.db")
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rnd := rand.New(rand.NewPCG(seed, 0))
	book := &crashBook{held: map[string]string{}, releasing: map[string]string{}}

	const runs = 50
	for run := range runs {
		delay := time.Duration(5+rnd.IntN(76)) * time.Millisecond
		lines, err := runCrashChild(exe, path, run, delay)
		if err != nil {
			t.Fatalf("run %d: %v", run, err)
		}
		book.apply(lines)
		checkCrashStore(t, run, path, book)
	}
	t.Logf("%d runs, %d allocations confirmed, %d leases left; kills inside a call: %d after an Allocate committed, %d after a Release committed, %d before a Release committed",
		runs, book.allocs, len(book.held), book.unannounced, book.releaseCommitted, book.releaseLost)
}

// runCrashChild starts a child, kills it delay after it is ready and
// returns its whole lines.
func runCrashChild(exe, path string, run int, delay time.Duration) ([]string, error) {
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+path, fmt.Sprintf("IPAM_CRASH_RUN=%d", run))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	r := bufio.NewReader(out)
	ready, err := r.ReadString('\n')
	if err != nil || ready != "ready\n" {
		cmd.Process.Kill()
		cmd.Wait()
		return nil, fmt.Errorf("child did not start: %q %v: %s", ready, err, stderr.String())
	}
	time.Sleep(delay)
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		return nil, err
	}
	rest, err := io.ReadAll(r) // EOF once the child is dead
	if err != nil {
		return nil, err
	}
	werr := cmd.Wait()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() {
		return nil, fmt.Errorf("child ended by itself (%v): %s", werr, stderr.String())
	}
	text := string(rest)
	if i := strings.LastIndexByte(text, '\n'); i >= 0 {
		text = text[:i] // drop a partial last line
	} else {
		text = ""
	}
	if text == "" {
		return nil, nil
	}
	return strings.Split(text, "\n"), nil
}

// apply records a child's lines.
func (b *crashBook) apply(lines []string) {
	for _, line := range lines {
		f := strings.Fields(line)
		switch f[0] {
		case "A":
			b.held[f[1]] = f[2]
			b.allocs++
		case "r":
			b.releasing[f[1]] = b.held[f[1]]
			delete(b.held, f[1])
		case "R":
			delete(b.releasing, f[1])
		}
	}
}

// checkCrashStore opens the store after a kill and compares it with book,
// then settles the leases whose fate the child could not report.
func checkCrashStore(t *testing.T, run int, path string, book *crashBook) {
	t.Helper()
	b, err := OpenBolt(path, 5*time.Second)
	if err != nil {
		t.Fatalf("run %d: reopen: %v", run, err)
	}
	defer b.Close()
	a, err := New(crashConfig(), b, nil) // refuses duplicate addresses
	if err != nil {
		t.Fatalf("run %d: load after kill: %v", run, err)
	}
	stored := map[string]string{}
	seen := map[string]string{}
	for _, l := range a.List() {
		stored[l.Key.ContainerID] = ips(l)
		for _, p := range l.IPs {
			if other, dup := seen[p.Addr().String()]; dup {
				t.Fatalf("run %d: %s leased to %s and %s", run, p.Addr(), other, l.Key)
			}
			seen[p.Addr().String()] = l.Key.ContainerID
		}
	}
	for id, want := range book.held {
		if got, ok := stored[id]; !ok || got != want {
			t.Fatalf("run %d: confirmed lease %s = %s lost (store has %q)", run, id, want, got)
		}
	}
	unknown := 0
	for id, got := range stored {
		switch want, releasing := book.releasing[id]; {
		case releasing && got != want:
			t.Fatalf("run %d: lease %s changed from %s to %s", run, id, want, got)
		case releasing: // the Release did not commit: still held
			book.held[id] = got
			book.releaseLost++
		case book.held[id] == "":
			unknown++ // committed before the kill, never printed
			book.held[id] = got
			book.unannounced++
		}
	}
	if unknown > 1 {
		t.Fatalf("run %d: %d unannounced leases in the store, but at most one Allocate was in flight", run, unknown)
	}
	for id := range book.releasing {
		if _, ok := stored[id]; !ok {
			book.releaseCommitted++
		}
	}
	clear(book.releasing)
}
