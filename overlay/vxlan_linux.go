package overlay

import (
	"fmt"
	"net/netip"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	vswitch "tapswitch/switch"
)

// socketBufSize is the socket receive and send buffer size asked for.
const socketBufSize = 4 << 20

// maxBatch is the most datagrams one sendmmsg or recvmmsg call carries.
const maxBatch = 64

// NewVXLAN opens the port's UDP socket in the calling thread's network
// namespace (run it inside netnsutil.Do for another one) and binds it to
// opts.Local. The port starts with no remote VTEPs: it drops everything
// until SetVTEPs.
func NewVXLAN(opts VXLANOptions) (*VXLAN, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	fd, err := openSocket(o.Local)
	if err != nil {
		return nil, fmt.Errorf("overlay: %s: %w", o.Name, err)
	}
	p := newVXLAN(o)
	p.f = os.NewFile(uintptr(fd), "vxlan:"+o.Name) // non-blocking, so in the netpoller
	p.rc, _ = p.f.SyscallConn()                    // fails only on a nil *os.File
	p.log.Info("port open", "local", o.Local.String(), "vni", o.VNI, "vtep_mac", o.VTEPMAC.String(), "mtu", o.MTU)
	return p, nil
}

// openSocket returns a non-blocking UDP socket bound to local.
func openSocket(local netip.AddrPort) (int, error) {
	family := unix.AF_INET
	if local.Addr().Is6() {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	if err := setupSocket(fd, local); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

func setupSocket(fd int, local netip.AddrPort) error {
	var sa unix.Sockaddr
	if local.Addr().Is4() {
		// No DF, as a Linux VXLAN device sends by default: a smaller
		// underlay MTU fragments outer packets rather than losing them.
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DONT); err != nil {
			return fmt.Errorf("set IP_MTU_DISCOVER: %w", err)
		}
		sa = &unix.SockaddrInet4{Port: int(local.Port()), Addr: local.Addr().As4()}
	} else {
		// One family per port: no IPv4-mapped peers on an IPv6 socket.
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
			return fmt.Errorf("set IPV6_V6ONLY: %w", err)
		}
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MTU_DISCOVER, unix.IPV6_PMTUDISC_DONT); err != nil {
			return fmt.Errorf("set IPV6_MTU_DISCOVER: %w", err)
		}
		sa = &unix.SockaddrInet6{Port: int(local.Port()), Addr: local.Addr().As16()}
	}
	// Room for bursts: a full receive buffer drops datagrams in the
	// kernel, before we can count them. Forcing needs CAP_NET_ADMIN;
	// without it the size is capped at net.core.[rw]mem_max.
	for _, o := range [][2]int{{unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}, {unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}} {
		if unix.SetsockoptInt(fd, unix.SOL_SOCKET, o[0], socketBufSize) != nil {
			unix.SetsockoptInt(fd, unix.SOL_SOCKET, o[1], socketBufSize) // best effort
		}
	}
	// Take GRO batches of datagrams whole (gro_linux.go). Kernels
	// before 5.0 lack UDP_GRO and deliver datagrams one by one: best
	// effort.
	unix.SetsockoptInt(fd, unix.IPPROTO_UDP, unix.UDP_GRO, 1)
	if err := unix.Bind(fd, sa); err != nil {
		return fmt.Errorf("bind udp %v: %w", local, err)
	}
	return nil
}

// sockaddr is a socket address in the kernel's layout (struct sockaddr_in
// or sockaddr_in6, which is large enough for both), for the msg_name of
// sendmmsg and recvmmsg.
type sockaddr struct {
	raw unix.RawSockaddrInet6
	len uint32
}

func newSockaddr(a netip.Addr, port uint16) sockaddr {
	var sa sockaddr
	if a.Is4() {
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(&sa.raw))
		sa4.Family = unix.AF_INET
		putPort(&sa4.Port, port)
		sa4.Addr = a.As4()
		sa.len = unix.SizeofSockaddrInet4
		return sa
	}
	sa.raw.Family = unix.AF_INET6
	putPort(&sa.raw.Port, port)
	sa.raw.Addr = a.As16()
	sa.len = unix.SizeofSockaddrInet6
	return sa
}

// putPort stores port in network byte order, as sin_port holds it.
func putPort(dst *uint16, port uint16) {
	b := (*[2]byte)(unsafe.Pointer(dst))
	b[0], b[1] = byte(port>>8), byte(port)
}

// addrOf returns the address in a received msg_name, or false.
func addrOf(raw *unix.RawSockaddrInet6, n uint32) (netip.Addr, bool) {
	switch {
	case raw.Family == unix.AF_INET && n >= unix.SizeofSockaddrInet4:
		return netip.AddrFrom4((*unix.RawSockaddrInet4)(unsafe.Pointer(raw)).Addr), true
	case raw.Family == unix.AF_INET6 && n >= unix.SizeofSockaddrInet6:
		return netip.AddrFrom16(raw.Addr), true
	}
	return netip.Addr{}, false
}

// sendmmsg and recvmmsg call the syscalls of those names; x/sys/unix has
// the struct (Mmsghdr) but no wrappers. The socket is non-blocking, and
// MSG_DONTWAIT says so again.
func sendmmsg(fd uintptr, msgs []unix.Mmsghdr) (int, unix.Errno) {
	n, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&msgs[0])), uintptr(len(msgs)), unix.MSG_DONTWAIT, 0, 0)
	return int(n), errno
}

func recvmmsg(fd uintptr, msgs []unix.Mmsghdr) (int, unix.Errno) {
	n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&msgs[0])), uintptr(len(msgs)), unix.MSG_DONTWAIT, 0, 0)
	return int(n), errno
}

// reader is the state of the one ReadBatch in progress. It lives in the
// port, and read is bound once, so a ReadBatch does not allocate.
//
// Each message of a recvmmsg has two buffers: a pool frame, where an
// ordinary datagram lands, and behind it a region of over, where the rest
// of a GRO batch lands (gro_linux.go). Messages received but not yet
// handed over, because a GRO batch filled the caller's frames, wait in
// msgs[next:got] for the next ReadBatch.
type reader struct {
	p    *VXLAN
	read func(fd uintptr) bool // r.readFrames

	frames []*vswitch.Frame // the caller's batch
	n      int              // frames filled so far
	err    error            // receive error, other than EAGAIN

	msgs  [maxBatch]unix.Mmsghdr
	iovs  [maxBatch][2]unix.Iovec // the frame, then the message's region of over
	names [maxBatch]unix.RawSockaddrInet6
	ctrl  [maxBatch][groCtrlWords]uint64 // control messages, 8-byte aligned as cmsghdr wants
	spare [maxBatch]*vswitch.Frame       // pool frames not yet filled, kept for the next read
	over  []byte                         // maxBatch regions of groOverflow bytes

	got   int            // messages the last recvmmsg returned
	next  int            // first of them not yet handed over or dropped
	off   int            // bytes of GRO batch msgs[next] already split off
	piece *vswitch.Frame // a pool frame for the next GRO piece, kept if it was dropped
}

func (r *reader) init(p *VXLAN) {
	r.p = p
	r.read = r.readFrames
	r.over = make([]byte, maxBatch*groOverflow)
	for i := range r.msgs {
		h := &r.msgs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&r.names[i]))
		h.Iov = &r.iovs[i][0]
		h.SetIovlen(2)
		h.Control = (*byte)(unsafe.Pointer(&r.ctrl[i]))
		r.iovs[i][1].Base = &r.over[i*groOverflow]
		r.iovs[i][1].SetLen(groOverflow)
	}
}

// ReadBatch waits until a datagram arrives, then receives up to
// len(frames) datagrams that are ready and returns the inner frames of
// those it accepts, in frames from the port's pool, each addressed to the
// router's MAC; ownership of frames[:n] passes to the caller. A GRO batch
// of datagrams counts as its datagrams; those that do not fit wait for the
// next call. Others are dropped and counted. q must be 0. After Close it
// returns an error wrapping vswitch.ErrClosed.
func (p *VXLAN) ReadBatch(q int, frames []*vswitch.Frame) (int, error) {
	if q != 0 {
		return 0, fmt.Errorf("overlay: read %s: no queue %d", p.name, q)
	}
	if len(frames) == 0 {
		return 0, nil
	}
	r := &p.r
	r.frames, r.n, r.err = frames, 0, nil
	err := p.rc.Read(r.read)
	n, rerr := r.n, r.err
	r.frames, r.err = nil, nil
	switch {
	case n > 0:
		// An error after some frames recurs on the next call.
		return n, nil
	case p.closed.Load():
		return 0, fmt.Errorf("overlay: read %s: %w", p.name, vswitch.ErrClosed)
	case err == nil:
		err = rerr
	}
	return 0, fmt.Errorf("overlay: read %s: %w", p.name, err)
}

// readFrames is the RawConn.Read callback: it hands over the messages left
// from the last call, then receives datagrams until the batch is full or
// the socket has no more. It returns false, so the netpoller waits, only
// while nothing was accepted yet.
func (r *reader) readFrames(fd uintptr) bool {
	for r.n < len(r.frames) {
		if r.next < r.got {
			r.drain()
			continue
		}
		want := min(len(r.frames)-r.n, maxBatch)
		for i := range want {
			if r.spare[i] == nil {
				r.spare[i] = r.p.pool.Get()
			}
			buf := r.spare[i].ReadBuf(hdrLen) // the inner frame lands at the frame's start
			r.iovs[i][0].Base = &buf[0]
			r.iovs[i][0].SetLen(len(buf))
			h := &r.msgs[i].Hdr
			h.Namelen = unix.SizeofSockaddrInet6
			h.SetControllen(groCtrlWords * 8)
			h.Flags = 0
			r.msgs[i].Len = 0
		}
		got, errno := recvmmsg(fd, r.msgs[:want])
		switch errno {
		case 0:
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return r.n > 0
		default:
			r.err = errno
			return true
		}
		if got <= 0 {
			return r.n > 0 // recvmmsg returns -1 (EAGAIN) rather than 0
		}
		r.got, r.next, r.off = got, 0, 0
		r.drain()
		if got < want && r.n > 0 {
			return true // the socket is drained
		}
	}
	return true
}

// drain hands over or drops the messages in msgs[next:got] while the
// caller's batch has room.
func (r *reader) drain() {
	t := r.p.vteps.Load()
	now := time.Now().UnixNano()
	for r.next < r.got && r.n < len(r.frames) {
		if r.accept(r.next, t, now) {
			r.next++
			r.off = 0
		}
	}
}

// accept checks message i of the last recvmmsg and either moves its frame
// into the caller's batch or counts the drop and keeps the buffer. A GRO
// batch goes to acceptGRO. It reports whether it is done with the message.
func (r *reader) accept(i int, t *vtepTable, now int64) bool {
	p, m := r.p, &r.msgs[i]
	var v *vtep
	if a, ok := addrOf(&r.names[i], m.Hdr.Namelen); ok {
		v = t.byAddr[a]
	}
	if seg := groSize(r.ctrl[i][:], int(m.Hdr.Controllen)); seg > 0 && seg < int(m.Len) {
		return r.acceptGRO(i, v, seg, now)
	}
	f := r.spare[i]
	buf := f.ReadBuf(hdrLen)
	reason := rxUnknownSource
	switch {
	case v == nil:
	case m.Hdr.Flags&unix.MSG_TRUNC != 0 || int(m.Len) > len(buf):
		reason = rxTooBig
	default:
		reason = checkPacket(buf[:m.Len], p.vni, p.vtepMAC, p.caps.MaxFrame)
	}
	if reason != accepted {
		p.drop(reason, 1)
		return true
	}
	r.handOver(f, int(m.Len), v, now)
	r.spare[i] = nil
	return true
}

// handOver puts f, which holds a checked VXLAN packet of pktLen bytes at
// ReadBuf(hdrLen), into the caller's batch as its inner frame.
func (r *reader) handOver(f *vswitch.Frame, pktLen int, v *vtep, now int64) {
	f.SetLen(pktLen - hdrLen)
	vswitch.Ether(f.Bytes()).SetDst(r.p.routerMAC)
	finishChecksum(f.Bytes()) // see checksum.go
	v.c.rxFrames.Add(1)
	v.c.rxBytes.Add(uint64(f.Len()))
	v.c.lastSeen.Store(now)
	r.frames[r.n] = f
	r.n++
}

// writer is the state of the one WriteBatch in progress, like reader's.
type writer struct {
	p     *VXLAN
	write func(fd uintptr) bool // w.sendFrames

	msgs  [maxBatch]unix.Mmsghdr
	iovs  [maxBatch]unix.Iovec
	to    [maxBatch]*vtep // destination of each message, for its counters
	lens  [maxBatch]int   // inner frame length of each message
	count int             // messages filled
	next  int             // first message not yet sent or dropped
}

func (w *writer) init(p *VXLAN) {
	w.p = p
	w.write = w.sendFrames
	for i := range w.msgs {
		w.msgs[i].Hdr.Iov = &w.iovs[i]
		w.msgs[i].Hdr.SetIovlen(1)
	}
}

// add fills the next message with f, encapsulated, for v.
func (w *writer) add(f *vswitch.Frame, v *vtep) {
	b := f.Prefixed(hdrLen)
	putHeader(b, w.p.vni)
	i := w.count
	w.iovs[i].Base = &b[0]
	w.iovs[i].SetLen(len(b))
	w.msgs[i].Hdr.Name = (*byte)(unsafe.Pointer(&v.sa.raw))
	w.msgs[i].Hdr.Namelen = v.sa.len
	w.to[i], w.lens[i] = v, f.Len()
	w.count++
}

// reset forgets the messages, so they hold no frame or table.
func (w *writer) reset() {
	for i := range w.count {
		w.iovs[i].Base = nil
		w.msgs[i].Hdr.Name = nil
		w.to[i] = nil
	}
	w.count, w.next = 0, 0
}

// WriteBatch encapsulates each frame for the remote VTEP of its
// destination MAC and sends it, many frames to a sendmmsg call. As
// vswitch.Port asks, it takes ownership of every frame and releases each
// one, sent or not. It never waits for the socket. A frame it cannot send
// (an unknown VTEP, a full send buffer, an error for that datagram) is
// dropped and counted by reason in Drops, and the batch goes on: so the
// count it returns is len(frames), the frames the port took, unless the
// port is closed, when it is the frames taken before. Calls must not
// overlap.
func (p *VXLAN) WriteBatch(frames []*vswitch.Frame) (int, error) {
	defer releaseFrames(frames)
	if p.closed.Load() {
		return 0, fmt.Errorf("overlay: write %s: %w", p.name, vswitch.ErrClosed)
	}
	t := p.vteps.Load()
	w := &p.w
	for done := 0; done < len(frames); {
		chunk := frames[done:min(done+maxBatch, len(frames))]
		for _, f := range chunk {
			if v := p.encapTo(t, f); v != nil {
				w.add(f, v)
			}
		}
		var err error
		if w.count > 0 {
			err = p.rc.Write(w.write)
		}
		w.reset()
		if err != nil {
			if p.closed.Load() {
				err = vswitch.ErrClosed
			}
			return done, fmt.Errorf("overlay: write %s: %w", p.name, err)
		}
		done += len(chunk)
	}
	return len(frames), nil
}

// encapTo returns the remote VTEP for f, with f's source MAC set to ours,
// or nil after counting why f cannot go.
func (p *VXLAN) encapTo(t *vtepTable, f *vswitch.Frame) *vtep {
	if f.Len() < vswitch.EtherHdrLen || f.Len() > p.caps.MaxFrame ||
		f.Offload.GSOType != vswitch.GSONone || f.Offload.NeedsCsum {
		p.drop(txBadFrame, 1)
		return nil
	}
	e := vswitch.Ether(f.Bytes())
	v := t.byMAC[e.Dst()]
	if v == nil {
		p.drop(txUnknownVTEP, 1)
		return nil
	}
	e.SetSrc(p.vtepMAC)
	return v
}

// sendFrames is the RawConn.Write callback. It always returns true: the
// netpoller never waits on a write. A full send buffer drops the rest of
// the batch; another error drops the one datagram it was for.
func (w *writer) sendFrames(fd uintptr) bool {
	p := w.p
	for w.next < w.count {
		n, errno := sendmmsg(fd, w.msgs[w.next:w.count])
		switch errno {
		case 0:
		case unix.EINTR:
			continue
		case unix.EAGAIN, unix.ENOBUFS:
			p.drop(txQueueFull, w.count-w.next)
			w.next = w.count
			return true
		default:
			p.drop(txError, 1)
			w.next++
			continue
		}
		if n <= 0 {
			// sendmmsg returns -1 and an error rather than 0; do
			// not spin if it ever did.
			p.drop(txError, w.count-w.next)
			w.next = w.count
			return true
		}
		for i := w.next; i < w.next+n; i++ {
			w.to[i].c.txFrames.Add(1)
			w.to[i].c.txBytes.Add(uint64(w.lens[i]))
		}
		w.next += n
	}
	return true
}

// Close closes the socket and wakes a blocked ReadBatch. Later calls
// return nil.
func (p *VXLAN) Close() error {
	if !p.closed.CompareAndSwap(false, true) {
		return nil
	}
	err := p.f.Close()
	p.log.Info("port closed")
	if err != nil {
		return fmt.Errorf("overlay: close %s: %w", p.name, err)
	}
	return nil
}
