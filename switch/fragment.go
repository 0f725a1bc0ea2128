package vswitch

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// IPv4 fragmentation, for a router forwarding a packet larger than the
// next hop's MTU (RFC 791 section 3.2, RFC 1812 4.2.2.7). IPv6 routers never
// fragment (RFC 8200 section 5); they send packet too big instead.

// ErrCannotFragment is wrapped by every error FragmentIPv4 returns: the
// caller drops the packet. A router checks DF itself before it calls, to
// answer with ICMPFragNeeded instead.
var ErrCannotFragment = errors.New("cannot fragment")

// The reasons, fixed values so that a pod sending garbage costs no
// allocation.
var (
	errFragDF      = fmt.Errorf("%w: don't fragment set", ErrCannotFragment)
	errFragGSO     = fmt.Errorf("%w: gso super-frame", ErrCannotFragment)
	errFragMTU     = fmt.Errorf("%w: mtu below 68 bytes", ErrCannotFragment)
	errFragNotIPv4 = fmt.Errorf("%w: not an ipv4 frame", ErrCannotFragment)
	errFragInvalid = fmt.Errorf("%w: bad ipv4 header or length", ErrCannotFragment)
	errFragCsum    = fmt.Errorf("%w: checksum offsets do not fit the frame", ErrCannotFragment)
	errFragOptions = fmt.Errorf("%w: bad ipv4 options", ErrCannotFragment)
	errFragOffset  = fmt.Errorf("%w: fragment offset past 65535", ErrCannotFragment)
	errFragTooBig  = fmt.Errorf("%w: fragment larger than the pools' buffers", ErrCannotFragment)
)

const (
	ipv4MaxHdrLen = 60 // IHL is four bits of 32-bit words

	// IPv4 option types (RFC 791): the end of the list and a one-byte
	// filler; every other option has a length byte.
	ipv4OptEnd = 0
	ipv4OptNOP = 1
	// ipv4OptCopied is the flag of an option that every fragment carries.
	ipv4OptCopied = 0x80
)

// FragmentIPv4 cuts the IPv4 packet in frame f into fragments whose IP
// packets fit mtu, each in a new frame from pools with f's Ethernet header,
// appends them to dst and returns it. The fragments are the caller's and
// complete (Offload zero). f stays the caller's, not released, but it may
// change: if f.Offload.NeedsCsum is set and f holds a valid IPv4 packet,
// FragmentIPv4 first completes the checksum in f itself (CompleteChecksum),
// which clears NeedsCsum even if an error follows. Ethernet padding after
// the IP packet is not copied.
//
// A packet that already fits mtu is appended as one copy, DF or not, so the
// caller has one path for both cases. Otherwise each fragment carries a
// multiple of 8 payload bytes but the last; its offset is f's own offset
// plus its position, so a fragment can be cut again, and MF is set on all
// but the last, and on the last too if f had it. The first fragment carries
// all of f's options; the others carry only those with the copied flag,
// padded with end-of-options to a multiple of 4 bytes (RFC 791). The
// identification, TTL and every other header field are f's; total length,
// IHL and header checksum are each fragment's own.
//
// Errors wrap ErrCannotFragment: f is a GSO super-frame, mtu is below 68
// (RFC 791: every link carries 68 bytes), f does not hold a valid IPv4
// packet or has malformed options, DF is set, the checksum could not be
// completed, a fragment's offset would pass 65535, or a fragment does not
// fit the pools' buffers. On error dst comes back as it
// was passed, and every frame taken from pools has been released.
//
// FragmentIPv4 allocates nothing once the pools are warm and dst has room.
func FragmentIPv4(dst []*Frame, f *Frame, mtu int, pools *Pools) ([]*Frame, error) {
	if f.Offload.GSOType != GSONone {
		return dst, errFragGSO
	}
	if mtu < ipv4MinMTU {
		return dst, errFragMTU
	}
	b := f.Bytes()
	if len(b) < EtherHdrLen || Ether(b).Type() != EtherTypeIP4 {
		return dst, errFragNotIPv4
	}
	if !IPv4(b[EtherHdrLen:]).Valid(false) {
		return dst, errFragInvalid
	}
	if f.Offload.NeedsCsum && !CompleteChecksum(f) {
		return dst, errFragCsum
	}
	ip := IPv4(b[EtherHdrLen:])
	ip = ip[:ip.TotalLen()]
	if len(ip) <= mtu {
		c := pools.Get(EtherHdrLen + len(ip))
		if c == nil {
			return dst, errFragTooBig
		}
		c.SetLen(copy(c.ReadBuf(0), b[:EtherHdrLen+len(ip)]))
		c.Offload = Offload{}
		return append(dst, c), nil
	}
	if ip.DF() {
		return dst, errFragDF
	}
	if ip.FragOffset()+len(ip)-ip.HeaderLen() > 0xffff {
		return dst, errFragOffset
	}
	// The header of every fragment after the first: the fixed header and
	// the copied options. IHL is at most 15 words, so it fits the stack.
	var later [ipv4MaxHdrLen]byte
	hl, ok := laterHeader(later[:], ip)
	if !ok {
		return dst, errFragOptions
	}
	return cutIPv4(dst, b[:EtherHdrLen], ip, later[:hl], mtu, pools)
}

// cutIPv4 appends to dst the fragments of ip, each behind eth: the first
// with ip's own header, the others with later.
func cutIPv4(dst []*Frame, eth []byte, ip IPv4, later []byte, mtu int, pools *Pools) ([]*Frame, error) {
	n := len(dst)
	payload := ip[ip.HeaderLen():]
	hdr := []byte(ip[:ip.HeaderLen()])
	for off := 0; off < len(payload); {
		// mtu >= 68 and a header of at most 60 bytes leave room for
		// 8 payload bytes, the least a fragment may carry.
		end := min(off+((mtu-len(hdr))&^7), len(payload))
		fr := pools.Get(EtherHdrLen + len(hdr) + end - off)
		if fr == nil {
			for _, fr := range dst[n:] {
				fr.Release()
			}
			clear(dst[n:])
			return dst[:n], errFragTooBig
		}
		writeFragment(fr, eth, hdr, payload[off:end], ip.FragOffset()+off, end < len(payload) || ip.MF())
		dst = append(dst, fr)
		hdr, off = later, end
	}
	return dst, nil
}

// writeFragment fills fr with eth, the IP header hdr and chunk, the payload
// at offset off of the original datagram, and fixes the header up: total
// length, IHL, offset, MF and checksum.
func writeFragment(fr *Frame, eth, hdr, chunk []byte, off int, mf bool) {
	fr.SetLen(EtherHdrLen + len(hdr) + len(chunk))
	fr.Offload = Offload{}
	b := fr.Bytes()
	copy(b, eth)
	copy(b[EtherHdrLen:], hdr)
	copy(b[EtherHdrLen+len(hdr):], chunk)

	h := IPv4(b[EtherHdrLen:])
	h[0] = 4<<4 | byte(len(hdr)/4)
	binary.BigEndian.PutUint16(h[2:4], uint16(len(h)))
	// Keep the reserved flag as it came; DF is clear, or we would not
	// be fragmenting.
	flags := binary.BigEndian.Uint16(h[6:8]) &^ (ipv4FlagMF | ipv4FragOffset)
	if mf {
		flags |= ipv4FlagMF
	}
	binary.BigEndian.PutUint16(h[6:8], flags|uint16(off/8))
	h.SetChecksum(h.HeaderChecksum())
}

// laterHeader writes into dst the header of ip's fragments after the first
// (RFC 791 section 3.2, step 5 of the fragmentation procedure): the fixed
// 20 bytes, then only the options whose copied flag is set, padded with
// end-of-options to a multiple of 4. It returns the header's length, or
// false if the options run past the header or have a length below 2.
func laterHeader(dst []byte, ip IPv4) (int, bool) {
	copy(dst, ip[:IPv4MinHdrLen])
	n := IPv4MinHdrLen
	opts := ip[IPv4MinHdrLen:ip.HeaderLen()]
	for i := 0; i < len(opts); {
		t := opts[i]
		if t == ipv4OptEnd {
			break
		}
		if t == ipv4OptNOP {
			i++
			continue
		}
		if i+1 >= len(opts) {
			return 0, false
		}
		l := int(opts[i+1])
		if l < 2 || i+l > len(opts) {
			return 0, false
		}
		if t&ipv4OptCopied != 0 {
			n += copy(dst[n:], opts[i:i+l])
		}
		i += l
	}
	for n%4 != 0 {
		dst[n] = ipv4OptEnd
		n++
	}
	return n, true
}
