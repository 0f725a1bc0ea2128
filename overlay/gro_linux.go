package overlay

import (
	"unsafe"

	"golang.org/x/sys/unix"

	vswitch "tapswitch/switch"
)

// UDP GRO: the socket has UDP_GRO set (setupSocket), so the kernel may
// hand over several datagrams of one flow in one buffer: all gso_size
// bytes long but the last, which may be shorter, announced by a control
// message (level SOL_UDP, type UDP_GRO, an int holding gso_size; see
// udp_cmsg_recv in include/net/udp.h). Each datagram is one VXLAN packet;
// acceptGRO splits the buffer and copies each into a frame of its own.

// groMaxLen is the most a GRO batch holds: a UDP payload is less than
// 64 KiB.
const groMaxLen = 64 << 10

// groOverflow is the size of a message's second buffer, where a GRO batch
// goes on past its frame's buffer.
const groOverflow = groMaxLen - (vswitch.SmallBufSize - vswitch.Headroom + hdrLen)

// groCtrlWords is the size of a message's control buffer in 8-byte
// words: room for CMSG_SPACE(sizeof(int)) and one more of the same.
const groCtrlWords = 6

// groSize returns the segment size in the UDP_GRO control message among
// the n bytes of ctrl, or 0 if there is none.
func groSize(ctrl []uint64, n int) int {
	b := unsafe.Slice((*byte)(unsafe.Pointer(&ctrl[0])), len(ctrl)*8)[:min(n, len(ctrl)*8)]
	for len(b) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
		l := int(h.Len)
		if l < unix.SizeofCmsghdr || l > len(b) {
			return 0
		}
		if h.Level == unix.SOL_UDP && h.Type == unix.UDP_GRO && l >= unix.CmsgLen(4) {
			return int(*(*int32)(unsafe.Pointer(&b[unix.CmsgLen(0)])))
		}
		b = b[min(unix.CmsgSpace(l-unix.SizeofCmsghdr), len(b)):]
	}
	return 0
}

// acceptGRO splits message i, a GRO batch of datagrams of seg bytes from
// VTEP v (nil if unknown), from byte r.off on, while the caller's batch has
// room. Each datagram is copied into a frame of its own and checked as
// accept checks one. It reports whether it is done with the message.
func (r *reader) acceptGRO(i int, v *vtep, seg int, now int64) bool {
	p, m := r.p, &r.msgs[i]
	size := int(m.Len)
	head := r.spare[i].ReadBuf(hdrLen) // the batch's first bytes; the rest are in over
	rest := r.over[i*groOverflow : (i+1)*groOverflow]
	left := (size - r.off + seg - 1) / seg // datagrams not yet split off
	switch {
	case v == nil:
		p.drop(rxUnknownSource, left)
		return true
	case m.Hdr.Flags&unix.MSG_TRUNC != 0 || seg > len(head):
		p.drop(rxTooBig, left)
		return true
	}
	for r.off < size && r.n < len(r.frames) {
		end := min(r.off+seg, size)
		if r.piece == nil {
			r.piece = p.pool.Get()
		}
		pkt := r.piece.ReadBuf(hdrLen)[:end-r.off]
		c := 0
		if r.off < len(head) {
			c = copy(pkt, head[r.off:min(end, len(head))])
		}
		copy(pkt[c:], rest[max(r.off+c-len(head), 0):])
		r.off = end
		if reason := checkPacket(pkt, p.vni, p.vtepMAC, p.caps.MaxFrame); reason != accepted {
			p.drop(reason, 1)
			continue
		}
		r.handOver(r.piece, len(pkt), v, now)
		r.piece = nil
	}
	return r.off >= size
}
