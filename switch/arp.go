package vswitch

import (
	"encoding/binary"
	"net/netip"
	"sync"
	"sync/atomic"
)

// ARP packet layout for Ethernet and IPv4 (RFC 826).
const (
	arpLen       = 28
	arpOpRequest = 1
	arpOpReply   = 2
	arpHTEther   = 1
)

// ARP is a view of an ARP packet for Ethernet/IPv4, the payload of an
// Ethernet frame of type EtherTypeARP.
type ARP []byte

func (a ARP) HType() uint16 { return binary.BigEndian.Uint16(a[0:2]) }
func (a ARP) PType() uint16 { return binary.BigEndian.Uint16(a[2:4]) }
func (a ARP) HLen() uint8   { return a[4] }
func (a ARP) PLen() uint8   { return a[5] }
func (a ARP) Op() uint16    { return binary.BigEndian.Uint16(a[6:8]) }
func (a ARP) SHA() MAC      { return MAC(a[8:14]) }
func (a ARP) SPA() netip.Addr {
	return netip.AddrFrom4([4]byte(a[14:18]))
}
func (a ARP) THA() MAC { return MAC(a[18:24]) }
func (a ARP) TPA() netip.Addr {
	return netip.AddrFrom4([4]byte(a[24:28]))
}

// ethernetIPv4 reports whether a is long enough and describes Ethernet and
// IPv4 addresses, the only kind the responder answers.
func (a ARP) ethernetIPv4() bool {
	return len(a) >= arpLen && a.HType() == arpHTEther && a.PType() == EtherTypeIP4 &&
		a.HLen() == 6 && a.PLen() == 4
}

// Binding ties an IP address to the MAC and port of the pod that owns it.
type Binding struct {
	IP   netip.Addr
	MAC  MAC
	Port PortID
}

// bindings is the table the ARP responder answers from. Reads are lock-free
// (an atomic pointer to an immutable map); writes copy the map, which is
// fine because bindings change only when pods come and go.
type bindings struct {
	mu sync.Mutex // serializes writers
	m  atomic.Pointer[map[netip.Addr]Binding]
}

func (b *bindings) lookup(ip netip.Addr) (Binding, bool) {
	m := b.m.Load()
	if m == nil {
		return Binding{}, false
	}
	v, ok := (*m)[ip]
	return v, ok
}

// update copies the table, lets fn change the copy and publishes it.
func (b *bindings) update(fn func(map[netip.Addr]Binding)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	next := make(map[netip.Addr]Binding)
	if cur := b.m.Load(); cur != nil {
		for k, v := range *cur {
			next[k] = v
		}
	}
	fn(next)
	b.m.Store(&next)
}

func (b *bindings) list() []Binding {
	m := b.m.Load()
	if m == nil {
		return nil
	}
	out := make([]Binding, 0, len(*m))
	for _, v := range *m {
		out = append(out, v)
	}
	return out
}

// arpReplyTo returns the binding that answers the ARP request in frame e
// arriving on port in, or false if the switch should not answer: it is not
// a request, the target is unknown, or the target lives on the asking port
// itself (the pod is probing its own address; let it hear no answer).
// Gratuitous ARP (sender address equals target address) is never answered.
func (b *bindings) arpReplyTo(e Ether, in PortID) (Binding, bool) {
	a := ARP(e.Payload())
	if !a.ethernetIPv4() || a.Op() != arpOpRequest {
		return Binding{}, false
	}
	tpa := a.TPA()
	if a.SPA() == tpa {
		return Binding{}, false
	}
	bd, ok := b.lookup(tpa)
	if !ok || bd.Port == in {
		return Binding{}, false
	}
	return bd, true
}

// WriteARPReply writes into dst the Ethernet frame that answers the request
// req on behalf of bd, and returns its length (42 bytes: no padding, which
// a TAP does not need). dst must hold at least 42 bytes.
func WriteARPReply(dst []byte, req Ether, bd Binding) int {
	a := ARP(req.Payload())
	out := Ether(dst[:EtherHdrLen+arpLen])
	out.SetDst(a.SHA())
	out.SetSrc(bd.MAC)
	out.SetType(EtherTypeARP)
	r := ARP(out.Payload())
	binary.BigEndian.PutUint16(r[0:2], arpHTEther)
	binary.BigEndian.PutUint16(r[2:4], EtherTypeIP4)
	r[4], r[5] = 6, 4
	binary.BigEndian.PutUint16(r[6:8], arpOpReply)
	copy(r[8:14], bd.MAC[:])
	ip := bd.IP.As4()
	copy(r[14:18], ip[:])
	copy(r[18:24], a[8:14])  // target hardware address: the asker
	copy(r[24:28], a[14:18]) // target protocol address: the asker's
	return EtherHdrLen + arpLen
}
