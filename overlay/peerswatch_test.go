//go:build linux

package overlay

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"tapswitch/internal/testutil"
)

// onlyB is goodPeers without node-c.
var onlyB = "[\n" +
	peerLine("node-a", "192.168.1.10", "0e:00:00:00:00:0a", `"10.244.0.0/24", "fd00:10:244::/64"`) + ",\n" +
	peerLine("node-b", "192.168.1.11", "0e:00:00:00:00:0b", `"10.244.1.0/24", "fd00:10:244:1::/64"`) + "\n]\n"

// watchRig runs a Watcher and turns its calls and log lines into channels
// the test waits on.
type watchRig struct {
	t       *testing.T
	path    string
	w       *Watcher
	applied chan []Node
	errs    chan error
	logs    chan string
}

// startWatcher writes content to path (unless it is "") and starts a
// Watcher on it, which the test's cleanup closes.
func startWatcher(t *testing.T, path, content string, opts WatcherOptions) *watchRig {
	t.Helper()
	if content != "" {
		writeFile(t, path, content)
	}
	r := &watchRig{
		t:       t,
		path:    path,
		applied: make(chan []Node, 16),
		errs:    make(chan error, 16),
		logs:    make(chan string, 256),
	}
	opts.Path = path
	opts.Self = testSelf
	opts.Apply = func(nodes []Node) {
		select {
		case r.applied <- nodes:
		default:
			t.Error("Apply called more often than the test reads")
		}
	}
	opts.OnError = func(err error) {
		select {
		case r.errs <- err:
		default:
			t.Error("OnError called more often than the test reads")
		}
	}
	opts.Logger = slog.New(chanHandler{r.logs})
	w, err := NewWatcher(opts)
	if err != nil {
		t.Fatalf("NewWatcher: %v", err)
	}
	r.w = w
	t.Cleanup(func() { w.Close() })
	return r
}

// wantApply waits for the next call of Apply and checks its peers.
func (r *watchRig) wantApply(want []Node) {
	r.t.Helper()
	select {
	case got := <-r.applied:
		if !reflect.DeepEqual(got, want) {
			r.t.Fatalf("Apply(%+v), want Apply(%+v)", got, want)
		}
	case err := <-r.errs:
		r.t.Fatalf("OnError(%v), want Apply(%+v)", err, want)
	case <-time.After(10 * time.Second):
		r.t.Fatalf("no Apply(%+v) within 10 s", want)
	}
}

// wantError waits for the next call of OnError and checks its message
// holds want.
func (r *watchRig) wantError(want string) error {
	r.t.Helper()
	select {
	case err := <-r.errs:
		if !strings.Contains(err.Error(), want) {
			r.t.Fatalf("OnError(%v), want an error holding %q", err, want)
		}
		return err
	case got := <-r.applied:
		r.t.Fatalf("Apply(%+v), want OnError(... %s ...)", got, want)
	case <-time.After(10 * time.Second):
		r.t.Fatalf("no OnError(... %s ...) within 10 s", want)
	}
	return nil
}

// wantLog waits for a log line with the message msg, skipping others.
func (r *watchRig) wantLog(msg string) {
	r.t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case got := <-r.logs:
			if got == msg {
				return
			}
		case <-timeout:
			r.t.Fatalf("no log line %q within 10 s", msg)
		}
	}
}

// noCalls checks that Apply and OnError have not been called since the
// test last looked.
func (r *watchRig) noCalls() {
	r.t.Helper()
	select {
	case got := <-r.applied:
		r.t.Errorf("Apply(%+v), want no call", got)
	case err := <-r.errs:
		r.t.Errorf("OnError(%v), want no call", err)
	default:
	}
}

// chanHandler is a slog.Handler that sends each record's message to a
// channel, dropping it when the channel is full.
type chanHandler struct{ msgs chan<- string }

func (h chanHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h chanHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h chanHandler) WithGroup(string) slog.Handler            { return h }
func (h chanHandler) Handle(_ context.Context, r slog.Record) error {
	select {
	case h.msgs <- r.Message:
	default:
	}
	return nil
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// replaceFile writes content to a temporary file beside path and renames
// it over path, as editors and kubectl cp do.
func replaceFile(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	writeFile(t, tmp, content)
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestWatchPeersInPlace(t *testing.T) {
	testutil.CheckGoroutines(t)
	path := filepath.Join(t.TempDir(), "peers.json")
	r := startWatcher(t, path, goodPeers, WatcherOptions{})
	r.wantApply([]Node{nodeB, nodeC}) // before NewWatcher returned

	writeFile(t, path, onlyB)
	r.wantApply([]Node{nodeB})
	writeFile(t, path, goodPeers)
	r.wantApply([]Node{nodeB, nodeC})
}

func TestWatchPeersRename(t *testing.T) {
	testutil.CheckGoroutines(t)
	path := filepath.Join(t.TempDir(), "peers.json")
	r := startWatcher(t, path, goodPeers, WatcherOptions{})
	r.wantApply([]Node{nodeB, nodeC})

	replaceFile(t, path, onlyB)
	r.wantApply([]Node{nodeB})
}

// TestWatchPeersBroken: a file that does not parse is reported and leaves
// the last set in force; the next good one is applied.
func TestWatchPeersBroken(t *testing.T) {
	testutil.CheckGoroutines(t)
	path := filepath.Join(t.TempDir(), "peers.json")
	r := startWatcher(t, path, goodPeers, WatcherOptions{})
	r.wantApply([]Node{nodeB, nodeC})

	writeFile(t, path, "[\n  {\"name\": \"node-b\",}\n]")
	r.wantError("overlay: peers file " + path + `: line 2 column 21: invalid character '}'`)
	writeFile(t, path, withEntry(peerLine("node-b", "192.168.1.11", "01:00:5e:00:00:01", `"10.244.1.0/24"`)))
	err := r.wantError(`line 3: entry 1 "node-b": vtep_mac 01:00:5e:00:00:01: multicast`)
	var ee *EntryError
	if !errors.As(err, &ee) || ee.Line != 3 || ee.Index != 1 || ee.Name != "node-b" {
		t.Errorf("OnError(%#v), want an *EntryError for line 3, entry 1, node-b", err)
	}
	r.noCalls()

	writeFile(t, path, onlyB)
	r.wantApply([]Node{nodeB})
	r.wantLog("peers file good again")
}

// TestWatchPeersBrokenThenSame: a broken file fixed back to the set in
// force is no change, so Apply is not called again.
func TestWatchPeersBrokenThenSame(t *testing.T) {
	testutil.CheckGoroutines(t)
	path := filepath.Join(t.TempDir(), "peers.json")
	r := startWatcher(t, path, goodPeers, WatcherOptions{})
	r.wantApply([]Node{nodeB, nodeC})

	writeFile(t, path, "[")
	r.wantError("unexpected end of JSON input")
	writeFile(t, path, goodPeers)
	r.wantLog("peers file good again")
	r.wantLog("peers file rewritten, peers unchanged")
	r.noCalls()
}

// TestWatchPeersUnchanged: rewriting the same content, or content that
// says the same in another form, does not call Apply.
func TestWatchPeersUnchanged(t *testing.T) {
	testutil.CheckGoroutines(t)
	path := filepath.Join(t.TempDir(), "peers.json")
	r := startWatcher(t, path, goodPeers, WatcherOptions{})
	r.wantApply([]Node{nodeB, nodeC})

	writeFile(t, path, goodPeers)
	r.wantLog("peers file unchanged")
	r.noCalls()

	// The same nodes, reordered, with pod CIDRs reordered, on one line.
	same := "[" + peerLine("node-c", "192.168.1.12", "0e:00:00:00:00:0c", `"10.244.2.0/24"`) + "," +
		peerLine("node-b", "192.168.1.11", "0e:00:00:00:00:0b", `"fd00:10:244:1::/64", "10.244.1.0/24"`) + "]"
	replaceFile(t, path, same)
	r.wantLog("peers file rewritten, peers unchanged")
	r.noCalls()
}

// TestWatchPeersConfigMap updates the file as the kubelet updates a
// ConfigMap volume: peers.json -> ..data/peers.json, ..data -> a
// timestamped directory, and an update swaps ..data by renaming a new
// symlink over it and then removes the old directory.
func TestWatchPeersConfigMap(t *testing.T) {
	testutil.CheckGoroutines(t)
	dir := t.TempDir()
	version := func(name, content string) {
		t.Helper()
		if err := os.Mkdir(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dir, name, "peers.json"), content)
	}
	version("..2024_01_01_00_00_00.1", goodPeers)
	if err := os.Symlink("..2024_01_01_00_00_00.1", filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "peers.json")
	if err := os.Symlink("..data/peers.json", path); err != nil {
		t.Fatal(err)
	}
	r := startWatcher(t, path, "", WatcherOptions{})
	r.wantApply([]Node{nodeB, nodeC})

	version("..2024_01_01_00_01_00.2", onlyB)
	if err := os.Symlink("..2024_01_01_00_01_00.2", filepath.Join(dir, "..data_tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(dir, "..2024_01_01_00_00_00.1")); err != nil {
		t.Fatal(err)
	}
	r.wantApply([]Node{nodeB})
}

// TestWatchPeersRemoved: a file that goes away leaves the last set in
// force and is reported once; when it comes back it is applied.
func TestWatchPeersRemoved(t *testing.T) {
	testutil.CheckGoroutines(t)
	path := filepath.Join(t.TempDir(), "peers.json")
	r := startWatcher(t, path, goodPeers, WatcherOptions{})
	r.wantApply([]Node{nodeB, nodeC})

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := r.wantError("no such file"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("OnError(%v), want an error that is os.ErrNotExist", err)
	}
	replaceFile(t, path, onlyB)
	r.wantApply([]Node{nodeB})
}

// TestWatchPeersResync: a file reached through a symlink into another
// directory changes where inotify does not look; the resync finds it.
func TestWatchPeersResync(t *testing.T) {
	testutil.CheckGoroutines(t)
	real := filepath.Join(t.TempDir(), "peers.json")
	writeFile(t, real, goodPeers)
	path := filepath.Join(t.TempDir(), "peers.json")
	if err := os.Symlink(real, path); err != nil {
		t.Fatal(err)
	}
	r := startWatcher(t, path, "", WatcherOptions{Resync: 50 * time.Millisecond})
	r.wantApply([]Node{nodeB, nodeC})

	writeFile(t, real, onlyB)
	r.wantApply([]Node{nodeB})
}

func TestWatchPeersStartErrors(t *testing.T) {
	testutil.CheckGoroutines(t)
	dir := t.TempDir()
	apply := func([]Node) { t.Error("Apply called, want an error from NewWatcher") }

	_, err := NewWatcher(WatcherOptions{Path: filepath.Join(dir, "peers.json"), Self: testSelf, Apply: apply})
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("NewWatcher(missing file) error = %v, want os.ErrNotExist", err)
	}
	_, err = NewWatcher(WatcherOptions{Path: filepath.Join(dir, "nodir", "peers.json"), Self: testSelf, Apply: apply})
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("NewWatcher(missing directory) error = %v, want os.ErrNotExist", err)
	}
	path := filepath.Join(dir, "peers.json")
	writeFile(t, path, withEntry(`{"name": "node-b"}`))
	_, err = NewWatcher(WatcherOptions{Path: path, Self: testSelf, Apply: apply})
	if want := "overlay: peers file " + path + `: line 3: entry 1 "node-b": address: missing`; err == nil || err.Error() != want {
		t.Errorf("NewWatcher(broken file) error = %v, want %s", err, want)
	}
	if _, err := NewWatcher(WatcherOptions{Path: path}); err == nil {
		t.Error("NewWatcher without Apply: no error")
	}
}

// TestWatchPeersClose: Close stops the goroutine (CheckGoroutines counts
// it), may be called twice, and no call comes after it.
func TestWatchPeersClose(t *testing.T) {
	testutil.CheckGoroutines(t)
	path := filepath.Join(t.TempDir(), "peers.json")
	r := startWatcher(t, path, goodPeers, WatcherOptions{})
	r.wantApply([]Node{nodeB, nodeC})

	if err := r.w.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	r.w.Close()
	writeFile(t, path, onlyB)
	r.noCalls()
}
