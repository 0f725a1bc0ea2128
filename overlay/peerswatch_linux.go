package overlay

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// WatcherOptions configure a Watcher. Path and Apply are required.
type WatcherOptions struct {
	Path string // the peers file
	Self Node   // this node, as ParsePeers takes it

	// Apply gets the file's peers when NewWatcher starts and again after
	// every change to the set. It gets a slice of its own. It runs on the
	// watcher's goroutine, one call at a time, and must not call Close.
	Apply func([]Node)
	// OnError gets each new reason the file cannot be used after the start:
	// it cannot be read (it went away) or does not parse. The last set given
	// to Apply stays in force. It runs as Apply does. Nil logs at Warn.
	OnError func(error)

	Logger *slog.Logger  // nil discards
	Quiet  time.Duration // how long a burst of events must pause before the re-read; 0 means 100 ms
	Resync time.Duration // re-read this often whatever inotify says; 0 means 30 s
}

// Watcher keeps a peers file's set of peers applied while the file
// changes. It watches the file's directory with inotify(7), so it sees the
// file written in place, replaced by rename (editors, kubectl cp), and a
// ConfigMap volume's update, where the file is a symlink through ..data and
// the kubelet swaps ..data by rename. A burst of events leads to one
// re-read once they pause (Quiet). Every Resync it re-reads in any case, for
// what inotify cannot see: a file reached through a symlink into another
// directory, or a directory that was removed and came back.
//
// A Watcher owns one goroutine, watchLoop, which does the reading and
// calls Apply and OnError. Close stops and waits for it.
type Watcher struct {
	opts WatcherOptions
	log  *slog.Logger
	dir  string
	base string // the file's name in dir

	inotify   *os.File      // non-blocking, so Close interrupts a Read
	done      chan struct{} // closed when watchLoop returns
	closeOnce sync.Once

	// Owned by watchLoop once NewWatcher returns.
	watching bool     // the directory's watch is in place
	applied  []Node   // the set Apply last got
	sum      [32]byte // SHA-256 of the content last read
	readErr  string   // text of the last read error reported; "" after a good read
	broken   bool     // the content last read did not parse
}

// Defaults of WatcherOptions.
const (
	defaultQuiet  = 100 * time.Millisecond
	defaultResync = 30 * time.Second
	maxBurst      = 10 // a burst that never pauses is cut after maxBurst*Quiet
)

// configMapData is the symlink a ConfigMap volume swaps by rename on an
// update; the files are symlinks through it (kubelet's atomic_writer.go).
const configMapData = "..data"

// watchMask: the events of the directory that can change what the file's
// path reads. IN_MODIFY is left out: a writer's IN_CLOSE_WRITE follows.
const watchMask = unix.IN_CLOSE_WRITE | unix.IN_MOVED_TO | unix.IN_MOVED_FROM |
	unix.IN_CREATE | unix.IN_DELETE | unix.IN_DELETE_SELF | unix.IN_ONLYDIR

// NewWatcher reads and parses the file, calls Apply with its peers, and
// starts watching. A file that is missing or does not parse at the start
// is an error, and nothing is started.
func NewWatcher(o WatcherOptions) (*Watcher, error) {
	if o.Path == "" || o.Apply == nil {
		return nil, errors.New("overlay: watch peers: Path and Apply are required")
	}
	if o.Quiet <= 0 {
		o.Quiet = defaultQuiet
	}
	if o.Resync <= 0 {
		o.Resync = defaultResync
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	path := filepath.Clean(o.Path)
	w := &Watcher{
		opts: o,
		log:  log.With("peers_file", path),
		dir:  filepath.Dir(path),
		base: filepath.Base(path),
		done: make(chan struct{}),
	}
	w.opts.Path = path

	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("overlay: watch peers: inotify_init1: %w", err)
	}
	w.inotify = os.NewFile(uintptr(fd), "inotify")
	// The watch goes in before the first read, so no change falls between.
	if err := w.ensureWatch(); err != nil {
		w.inotify.Close()
		return nil, err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		w.inotify.Close()
		return nil, fmt.Errorf("overlay: %w", err)
	}
	peers, err := parsePeers(data, o.Self)
	if err != nil {
		w.inotify.Close()
		return nil, fmt.Errorf("overlay: peers file %s: %w", path, err)
	}
	w.sum = sha256.Sum256(data)
	w.applied = peers
	o.Apply(cloneNodes(peers))
	w.log.Info("watching peers file", "peers", len(peers))
	go w.watchLoop()
	return w, nil
}

// Close stops the watcher and waits for its goroutine. Apply and OnError
// are not called after Close returns. It is safe to call more than once.
func (w *Watcher) Close() error {
	var err error
	w.closeOnce.Do(func() { err = w.inotify.Close() }) // wakes a blocked Read
	<-w.done
	return err
}

// ensureWatch adds the directory's watch unless it is in place. It holds
// the descriptor through SyscallConn, so a concurrent Close cannot hand
// its number to someone else meanwhile.
func (w *Watcher) ensureWatch() error {
	if w.watching {
		return nil
	}
	rc, err := w.inotify.SyscallConn()
	if err != nil {
		return err
	}
	var addErr error
	if err := rc.Control(func(fd uintptr) {
		_, addErr = unix.InotifyAddWatch(int(fd), w.dir, watchMask)
	}); err != nil {
		return err
	}
	if addErr != nil {
		return fmt.Errorf("overlay: watch peers: inotify_add_watch %s: %w", w.dir, addErr)
	}
	w.watching = true
	return nil
}

// watchLoop reads inotify events until Close. Read deadlines are its
// timers: the end of a burst's quiet time and the next resync.
func (w *Watcher) watchLoop() {
	defer close(w.done)
	buf := make([]byte, 64<<10) // many events; one needs at most 16+NAME_MAX+1
	nextResync := time.Now().Add(w.opts.Resync)
	var due, cutoff time.Time // when the pending re-read runs, and its latest; zero when none
	for {
		wake := nextResync
		if !due.IsZero() && due.Before(wake) {
			wake = due
		}
		err := w.inotify.SetReadDeadline(wake)
		var n int
		if err == nil {
			n, err = w.inotify.Read(buf)
		}
		now := time.Now()
		switch {
		case err == nil:
			if w.relevant(buf[:n]) {
				if due.IsZero() {
					cutoff = now.Add(maxBurst * w.opts.Quiet)
				}
				due = now.Add(w.opts.Quiet)
				if due.After(cutoff) {
					due = cutoff
				}
			}
		case errors.Is(err, os.ErrDeadlineExceeded):
		case errors.Is(err, os.ErrClosed):
			return
		default:
			w.log.Error("reading inotify events failed; peers file no longer watched", "err", err)
			return
		}
		if !due.IsZero() && !now.Before(due) {
			due = time.Time{}
			w.reload()
		}
		if !now.Before(nextResync) {
			nextResync = now.Add(w.opts.Resync)
			wasWatching := w.watching
			if err := w.ensureWatch(); err != nil {
				w.log.Debug("peers file's directory still not watched", "err", err)
			} else if !wasWatching {
				w.log.Info("watching the peers file's directory again", "dir", w.dir)
			}
			w.reload()
		}
	}
}

// relevant reports whether the events in buf can have changed what the
// file's path reads: an event for its name or for a ConfigMap's ..data,
// lost events, or the loss of the directory's watch.
func (w *Watcher) relevant(buf []byte) bool {
	const hdrLen = unix.SizeofInotifyEvent // struct inotify_event, <sys/inotify.h>
	hit := false
	for len(buf) >= hdrLen {
		mask := binary.NativeEndian.Uint32(buf[4:8])
		nameLen := int(binary.NativeEndian.Uint32(buf[12:16]))
		if hdrLen+nameLen > len(buf) {
			break // the kernel writes whole events only
		}
		name := string(trimNUL(buf[hdrLen : hdrLen+nameLen]))
		buf = buf[hdrLen+nameLen:]
		switch {
		case mask&unix.IN_Q_OVERFLOW != 0:
			hit = true
		case mask&unix.IN_IGNORED != 0:
			// The directory went away or was unmounted.
			w.watching = false
			w.log.Warn("peers file's directory no longer watched; re-reading at each resync", "dir", w.dir)
			hit = true
		case name == w.base || name == configMapData:
			hit = true
		}
	}
	return hit
}

func trimNUL(b []byte) []byte {
	for len(b) > 0 && b[len(b)-1] == 0 {
		b = b[:len(b)-1]
	}
	return b
}

// reload reads the file and applies its peers if they differ from the
// last set applied. A file that cannot be read or parsed leaves that set
// in force; each new reason is reported once.
func (w *Watcher) reload() {
	data, err := os.ReadFile(w.opts.Path)
	if err != nil {
		w.sum = [32]byte{} // re-parse when it comes back, to log that
		if err.Error() != w.readErr {
			w.readErr = err.Error()
			w.report(fmt.Errorf("overlay: %w", err))
		}
		return
	}
	sum := sha256.Sum256(data)
	if sum == w.sum {
		w.log.Debug("peers file unchanged")
		return
	}
	w.sum = sum
	peers, err := parsePeers(data, w.opts.Self)
	if err != nil {
		w.broken = true
		w.report(fmt.Errorf("overlay: peers file %s: %w", w.opts.Path, err))
		return
	}
	if w.broken || w.readErr != "" {
		w.log.Info("peers file good again", "peers", len(peers))
	}
	w.broken, w.readErr = false, ""
	if sameNodes(peers, w.applied) {
		w.log.Debug("peers file rewritten, peers unchanged")
		return
	}
	w.log.Info("peers changed", "peers", len(peers))
	w.applied = peers
	w.opts.Apply(cloneNodes(peers))
}

func (w *Watcher) report(err error) {
	if w.opts.OnError != nil {
		w.opts.OnError(err)
		return
	}
	w.log.Warn("peers file not applied; keeping the last good peers", "err", err)
}

// sameNodes reports whether a and b describe the same nodes, in any order.
// Names are unique within each, as CheckNodes ensures.
func sameNodes(a, b []Node) bool {
	if len(a) != len(b) {
		return false
	}
	byName := make(map[string]Node, len(b))
	for _, m := range b {
		byName[m.Name] = m
	}
	for _, n := range a {
		m, ok := byName[n.Name]
		if !ok || m.Address != n.Address || m.VTEPMAC != n.VTEPMAC || !samePrefixes(m.PodCIDRs, n.PodCIDRs) {
			return false
		}
	}
	return true
}

// cloneNodes copies nodes deeply, so Apply may keep or change its slice.
func cloneNodes(nodes []Node) []Node {
	c := slices.Clone(nodes)
	for i := range c {
		c[i].PodCIDRs = slices.Clone(c[i].PodCIDRs)
	}
	return c
}
