package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"tapswitch/internal/netnsutil"
)

// UDP request/response: the client in one pod sends a small datagram, the
// server in the other echoes it, and the client sends the next only when
// the answer is back. Both ends use blocking syscalls on sockets created
// inside their pods' namespaces, so the figure is the path between the
// pods plus two thread wake-ups, without Go's network poller.

const (
	rrPort    = 7007
	rrSize    = 32 // payload bytes
	rrWarmup  = 50 // exchanges not counted
	rrTimeout = time.Second
)

// requestResponse makes warm-up plus n exchanges from client to server and
// returns the round-trip time of each of the last n that got an answer. It
// fails if more than a tenth went unanswered.
func requestResponse(ctx context.Context, client, server pod, n int) ([]time.Duration, error) {
	dst := &unix.SockaddrInet4{Port: rrPort, Addr: server.ip.Addr().As4()}
	srv, err := udpSocket(server.path, func(fd int) error { return unix.Bind(fd, dst) })
	if err != nil {
		return nil, fmt.Errorf("request/response server: %w", err)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go echoLoop(srv, stop, done)
	defer func() {
		close(stop)
		// Wakes a blocked recvfrom even on an unconnected UDP socket
		// (inet_shutdown's answer is ENOTCONN, the wake-up happens).
		unix.Shutdown(srv, unix.SHUT_RD)
		<-done
		unix.Close(srv)
	}()

	cli, err := udpSocket(client.path, func(fd int) error { return unix.Connect(fd, dst) })
	if err != nil {
		return nil, fmt.Errorf("request/response client: %w", err)
	}
	defer unix.Close(cli)

	rtts := make([]time.Duration, 0, n)
	lost := 0
	req, resp := make([]byte, rrSize), make([]byte, 2*rrSize)
	for i := range rrWarmup + n {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		binary.BigEndian.PutUint64(req, uint64(i))
		start := time.Now()
		if _, err := unix.Write(cli, req); err != nil {
			return nil, fmt.Errorf("request/response: send: %w", err)
		}
		ok, err := awaitEcho(cli, resp, uint64(i))
		if err != nil {
			return nil, err
		}
		rtt := time.Since(start)
		switch {
		case i < rrWarmup:
		case ok:
			rtts = append(rtts, rtt)
		default:
			lost++
		}
	}
	if lost > n/10 {
		return nil, fmt.Errorf("request/response: %d of %d exchanges unanswered", lost, n)
	}
	return rtts, nil
}

// awaitEcho reads until the echo of request seq arrives (true) or the
// socket's receive timeout passes (false). Late echoes of earlier
// requests are skipped.
func awaitEcho(fd int, buf []byte, seq uint64) (bool, error) {
	for {
		m, err := unix.Read(fd, buf)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			return false, nil
		case err != nil:
			return false, fmt.Errorf("request/response: receive: %w", err)
		}
		if m == rrSize && binary.BigEndian.Uint64(buf) == seq {
			return true, nil
		}
	}
}

// echoLoop sends every datagram on fd back to where it came from until
// stop is closed, then closes done. Its caller wakes it with shutdown(2);
// the socket's receive timeout bounds the wait anyway.
func echoLoop(fd int, stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	buf := make([]byte, 2048)
	for {
		select {
		case <-stop:
			return
		default:
		}
		m, from, err := unix.Recvfrom(fd, buf, 0)
		if err != nil || from == nil {
			continue // timeout or EINTR: look at stop again
		}
		unix.Sendto(fd, buf[:m], 0, from)
	}
}

// udpSocket creates a blocking UDP socket inside the namespace at nsPath,
// with a receive timeout of rrTimeout, and lets setup bind or connect it
// there. The socket stays in that namespace.
func udpSocket(nsPath string, setup func(fd int) error) (int, error) {
	fd := -1
	err := netnsutil.Do(nsPath, func() error {
		var err error
		if fd, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err != nil {
			return err
		}
		tv := unix.NsecToTimeval(rrTimeout.Nanoseconds())
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return err
		}
		return setup(fd)
	})
	if err != nil {
		if fd >= 0 {
			unix.Close(fd)
		}
		return -1, fmt.Errorf("udp socket in %s: %w", nsPath, err)
	}
	return fd, nil
}
