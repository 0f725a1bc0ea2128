// Package netnsutil enters network namespaces named by a path, for the
// packages that create devices inside pods (tap) and the daemon.
//
// Model. A network namespace belongs to an OS thread, not to a goroutine.
// Do runs its function on a fresh goroutine locked to its own thread, so
// the caller's thread never changes namespace. If that thread cannot be
// switched back, it stays locked and the Go runtime ends it together with
// the goroutine: a thread in the wrong namespace never runs other code.
// Do blocks until the function returns; it owns no goroutine after that.
package netnsutil

import (
	"errors"
	"fmt"
	"io/fs"
	"runtime"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ErrNotNetNS says a path names a file that is not a network namespace,
// such as a stale /var/run/netns entry whose mount is gone.
var ErrNotNetNS = errors.New("not a network namespace")

// Gone reports whether err, from Open or Do, says there is no network
// namespace at the path: no such file, or a file that is not (or no
// longer) a namespace. Nothing can be inside such a namespace.
func Gone(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, ErrNotNetNS)
}

// Open returns a handle to the network namespace at path, such as
// /var/run/netns/NAME or /proc/PID/ns/net; the caller closes it. Errors are
// *fs.PathError with Op "netns", so a missing namespace reads
// "netns /var/run/netns/x: no such file or directory" and matches
// fs.ErrNotExist.
func Open(path string) (netns.NsHandle, error) {
	h, err := netns.GetFromPath(path)
	if err != nil {
		return netns.None(), &fs.PathError{Op: "netns", Path: path, Err: err}
	}
	// NS_GET_NSTYPE (linux/nsfs.h) fails with ENOTTY on files that are not
	// namespaces, such as a stale /var/run/netns entry whose mount is gone.
	typ, err := unix.IoctlRetInt(int(h), unix.NS_GET_NSTYPE)
	if err != nil || typ != unix.CLONE_NEWNET {
		h.Close()
		return netns.None(), &fs.PathError{Op: "netns", Path: path, Err: ErrNotNetNS}
	}
	return h, nil
}

// Do runs fn on an OS thread that is inside the network namespace at path,
// and returns fn's error. Only fn's own thread is inside the namespace:
// goroutines fn starts are not. Sockets and devices fn opens stay in the
// namespace after Do returns. fn must not panic.
func Do(path string, fn func() error) error {
	target, err := Open(path)
	if err != nil {
		return err
	}
	defer target.Close()
	errc := make(chan error, 1)
	go func() { errc <- runIn(path, target, fn) }()
	return <-errc
}

// runIn switches the calling goroutine's thread into target, runs fn and
// switches back. It is the body of Do's goroutine.
func runIn(path string, target netns.NsHandle, fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("netns: get current: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(target); err != nil {
		// setns failed, so the thread is where it was.
		runtime.UnlockOSThread()
		return &fs.PathError{Op: "netns", Path: path, Err: fmt.Errorf("enter: %w", err)}
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		// Leave the thread locked: it exits with this goroutine.
		return errors.Join(ferr, &fs.PathError{Op: "netns", Path: path, Err: fmt.Errorf("leave: %w", err)})
	}
	runtime.UnlockOSThread()
	return ferr
}
