package netstack

import (
	"net"
	"os"
	"syscall"
	"unsafe"
)

// hostConn is the host side of a flow.
type hostConn struct {
	net.Conn
	// raw reaches the socket to wait for data without a buffer (see
	// awaitData); nil when Conn has no file descriptor.
	raw  syscall.RawConn
	peek [1]byte // awaitData's target, here so it never moves
}

func newHostConn(c net.Conn) *hostConn {
	h := &hostConn{Conn: c}
	if sc, ok := c.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			h.raw = raw
		}
	}
	return h
}

// closeWrite passes a FIN to the far side. A Conn without CloseWrite
// cannot half-close; the far side then sees the end when the flow ends.
func (h *hostConn) closeWrite() {
	if cw, ok := h.Conn.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}

// abort closes the socket so that the far side gets a RST instead of a FIN:
// SO_LINGER with a zero timeout (socket(7)). It may be called more than
// once and from any goroutine.
func (h *hostConn) abort() {
	if l, ok := h.Conn.(interface{ SetLinger(int) error }); ok {
		l.SetLinger(0)
	}
	h.Conn.Close()
}

// awaitData blocks until the host socket has data, the end of the stream
// or an error to read, without holding a buffer, so an idle flow costs no
// memory for one. It peeks at one byte (recv(2) with MSG_PEEK and
// MSG_DONTWAIT) and otherwise waits in the runtime's poller.
//
// A socket error the peek finds, such as ECONNRESET, is returned: the
// kernel reports it only once (sock_error clears sk_err), so a Read after
// the peek would see a plain end of stream. Without a file descriptor
// awaitData returns at once and the caller's Read does the waiting.
func (h *hostConn) awaitData() error {
	if h.raw == nil {
		return nil
	}
	var sockErr error
	err := h.raw.Read(func(fd uintptr) bool {
		for {
			_, _, errno := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd,
				uintptr(unsafe.Pointer(&h.peek[0])), 1, syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
			switch errno {
			case 0:
				return true
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				return false
			default:
				sockErr = os.NewSyscallError("recvfrom", errno)
				return true
			}
		}
	})
	if err != nil {
		return err
	}
	return sockErr
}
