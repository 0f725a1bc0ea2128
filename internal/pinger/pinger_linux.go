// Package pinger sends ICMP echo requests from inside a network namespace,
// so tests and tools need no ping binary. It uses a raw socket created in
// the namespace (root only).
package pinger

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"tapswitch/internal/netnsutil"
	vswitch "tapswitch/switch"
)

// Result counts what one Ping call sent and got back.
type Result struct {
	Sent, Received int
	RTTs           []time.Duration
}

// ICMP message types (RFC 792, RFC 4443).
const (
	echoRequest4 = 8
	echoReply4   = 0
	echoRequest6 = 128
	echoReply6   = 129
)

// Ping sends count echo requests to dst from inside the netns at nsPath,
// each waiting up to timeout for its reply, and returns what came back.
// Missing replies are not an error; a socket failure is.
func Ping(nsPath string, dst netip.Addr, count int, timeout time.Duration) (Result, error) {
	family, proto := unix.AF_INET, unix.IPPROTO_ICMP
	if dst.Is6() && !dst.Is4In6() {
		family, proto = unix.AF_INET6, unix.IPPROTO_ICMPV6
	}
	var fd int
	err := netnsutil.Do(nsPath, func() error {
		var err error
		fd, err = unix.Socket(family, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
		return err
	})
	if err != nil {
		return Result{}, fmt.Errorf("ping: socket in %s: %w", nsPath, err)
	}
	defer unix.Close(fd)

	var sa unix.Sockaddr
	if family == unix.AF_INET {
		sa = &unix.SockaddrInet4{Addr: dst.Unmap().As4()}
	} else {
		sa = &unix.SockaddrInet6{Addr: dst.As16()}
	}
	id := uint16(os.Getpid()) ^ uint16(time.Now().UnixNano())
	var res Result
	buf := make([]byte, 1500)
	for seq := range count {
		req := echo(family, id, uint16(seq))
		start := time.Now()
		if err := unix.Sendto(fd, req, 0, sa); err != nil {
			return res, fmt.Errorf("ping %s: send: %w", dst, err)
		}
		res.Sent++
		ok, err := awaitReply(fd, buf, family, dst, id, uint16(seq), start.Add(timeout))
		if err != nil {
			return res, fmt.Errorf("ping %s: %w", dst, err)
		}
		if ok {
			res.Received++
			res.RTTs = append(res.RTTs, time.Since(start))
		}
	}
	return res, nil
}

// echo builds an echo request with a 16-byte payload.
func echo(family int, id, seq uint16) []byte {
	b := make([]byte, 8+16)
	b[0] = echoRequest4
	if family == unix.AF_INET6 {
		b[0] = echoRequest6 // the kernel fills in the ICMPv6 checksum
	}
	binary.BigEndian.PutUint16(b[4:], id)
	binary.BigEndian.PutUint16(b[6:], seq)
	copy(b[8:], "tapswitch-pinger")
	if family == unix.AF_INET {
		binary.BigEndian.PutUint16(b[2:], ^vswitch.Checksum(b, 0))
	}
	return b
}

// awaitReply reads until the matching echo reply arrives or the deadline
// passes. A raw IPv4 socket hands over the IP header too; IPv6 does not.
func awaitReply(fd int, buf []byte, family int, dst netip.Addr, id, seq uint16, deadline time.Time) (bool, error) {
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return false, nil
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(pfd, int(left.Milliseconds())+1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("poll: %w", err)
		}
		if n == 0 {
			continue
		}
		n, from, err := unix.Recvfrom(fd, buf, unix.MSG_DONTWAIT)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("receive: %w", err)
		}
		if !fromAddr(from, dst) {
			continue
		}
		msg, reply := buf[:n], byte(echoReply6)
		if family == unix.AF_INET {
			if n < 20 {
				continue
			}
			msg, reply = msg[int(msg[0]&0x0f)*4:], echoReply4
		}
		if len(msg) >= 8 && msg[0] == reply &&
			binary.BigEndian.Uint16(msg[4:]) == id && binary.BigEndian.Uint16(msg[6:]) == seq {
			return true, nil
		}
	}
}

func fromAddr(sa unix.Sockaddr, want netip.Addr) bool {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrFrom4(a.Addr) == want.Unmap()
	case *unix.SockaddrInet6:
		return netip.AddrFrom16(a.Addr) == want
	}
	return false
}
