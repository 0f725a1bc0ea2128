package vswitch

import (
	"encoding/binary"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// hostFlows keeps the flows whose replies must pass the node's kernel.
//
// A pod reaches a Service address through the gateway, which routes it to
// the node (the host port); the node's kube-proxy rewrites the destination
// to a backend pod and sends the packet back into the switch, through the
// host port, with the client pod's address as its source. If the backend
// is a pod of this node, its reply is addressed to the client pod, in its
// own subnet, and the switch would deliver it straight there: the client
// would get an answer from the backend's address, not the Service's, and
// reset it. The node must see the reply to translate it back — which a
// Linux bridge arranges with br_netfilter. The switch does it with this
// table: every IP frame the host port sends with a local pod's source
// address records its reverse flow (addresses, protocol, ports), and
// frames of a recorded flow that are headed for a local pod, switched or
// routed, go to the host port instead. Open vSwitch based plugins mark
// such connections in conntrack the same way.
//
// Entries live while the flow has traffic either way: a TCP flow a day
// without a packet (two minutes once a FIN or RST passed), other
// protocols 30 seconds, conntrack's time for an unanswered UDP flow (a DNS
// query is one flow). The table is bounded: a new flow into a full table
// takes the place of the longest idle of a few sampled ones, counted as
// evicted. IPv4 fragments after the first carry no ports; a UDP flow
// also records its address pair, which they match.
//
// Lookups take a read lock only when the table has entries, so pod-to-pod
// traffic on a node without such flows pays one atomic load.
type hostFlows struct {
	n       atomic.Int64 // entries, read without the lock
	mu      sync.RWMutex // guards m
	m       map[flowKey]*hostFlow
	evicted atomic.Uint64
}

// flowKey names one direction of a flow. Ports are 0 for protocols
// without them; for ICMP echo the identifier is both.
type flowKey struct {
	src, dst     netip.Addr
	sport, dport uint16
	proto        uint8
}

type hostFlow struct {
	last    atomic.Int64 // coarse clock of the last frame either way
	closing atomic.Bool  // a TCP FIN or RST passed
}

const (
	maxHostFlows      = 65536
	hostFlowTCPIdle   = 24 * time.Hour
	hostFlowCloseIdle = 2 * time.Minute
	hostFlowIdle      = 30 * time.Second
	// hostFlowSample is how many entries a full table looks at to find
	// the longest idle one to evict.
	hostFlowSample = 16
	tcpFlagFIN     = 0x01
	tcpFlagRST     = 0x04
)

// flowOf reads the flow key of an IP frame. It reports false for frames
// that are not IPv4 or IPv6 with a header it can read. closing is set for
// TCP segments with FIN or RST.
func flowOf(b []byte, gso bool) (k flowKey, closing, ok bool) {
	e := Ether(b)
	var l4 []byte
	switch e.Type() {
	case EtherTypeIP4:
		ip := IPv4(e.Payload())
		if !ip.Valid(gso) {
			return k, false, false
		}
		k.src, k.dst, k.proto = ip.Src(), ip.Dst(), ip.Protocol()
		if ip.FragOffset() == 0 {
			l4 = ip.Payload()
		}
	case EtherTypeIP6:
		ip := IPv6(e.Payload())
		if !ip.Valid(gso) {
			return k, false, false
		}
		k.src, k.dst, k.proto = ip.Src(), ip.Dst(), ip.NextHeader()
		l4 = ip.Payload()
	default:
		return k, false, false
	}
	switch k.proto {
	case ProtoTCP, ProtoUDP, ProtoSCTP:
		if len(l4) >= 4 {
			k.sport, k.dport = binary.BigEndian.Uint16(l4[0:2]), binary.BigEndian.Uint16(l4[2:4])
		}
		if k.proto == ProtoTCP && len(l4) >= 14 {
			closing = l4[13]&(tcpFlagFIN|tcpFlagRST) != 0
		}
	case ProtoICMP, ProtoICMPv6:
		// Echo request and reply (types 8 and 0, 128 and 129) share
		// their identifier: the flow's "ports".
		if len(l4) >= 6 && (l4[0] == 0 || l4[0] == 8 || l4[0] == 128 || l4[0] == 129) {
			id := binary.BigEndian.Uint16(l4[4:6])
			k.sport, k.dport = id, id
		}
	}
	return k, closing, true
}

func (k flowKey) reverse() flowKey {
	return flowKey{src: k.dst, dst: k.src, sport: k.dport, dport: k.sport, proto: k.proto}
}

// record notes that the host port sent a frame of flow k, from a local
// pod's address: replies to it must return through the host port.
func (hf *hostFlows) record(k flowKey, closing bool, now int64) {
	rk := k.reverse()
	hf.entry(rk, now).touch(now, closing)
	if rk.proto == ProtoUDP {
		// Later fragments of its datagrams, which have no ports (TCP
		// sets DF and is not fragmented).
		pair := rk
		pair.sport, pair.dport = 0, 0
		hf.entry(pair, now).touch(now, false)
	}
}

// entry returns k's entry, adding it if there is none.
func (hf *hostFlows) entry(k flowKey, now int64) *hostFlow {
	hf.mu.RLock()
	e := hf.m[k]
	hf.mu.RUnlock()
	if e != nil {
		return e
	}
	hf.mu.Lock()
	defer hf.mu.Unlock()
	if e = hf.m[k]; e != nil {
		return e
	}
	if hf.m == nil {
		hf.m = make(map[flowKey]*hostFlow)
	}
	if len(hf.m) >= maxHostFlows {
		hf.evictLocked()
	}
	e = new(hostFlow)
	e.last.Store(now)
	hf.m[k] = e
	hf.n.Store(int64(len(hf.m)))
	return e
}

// evictLocked removes the longest idle of hostFlowSample entries, which
// map iteration picks at random. The caller holds mu for writing.
func (hf *hostFlows) evictLocked() {
	var oldest flowKey
	found, seen := false, 0
	var last int64
	for k, e := range hf.m {
		if l := e.last.Load(); !found || l < last {
			oldest, last, found = k, l, true
		}
		if seen++; seen == hostFlowSample {
			break
		}
	}
	if found {
		delete(hf.m, oldest)
		hf.evicted.Add(1)
	}
}

// returnsViaHost reports whether f belongs to a recorded flow, and
// refreshes it.
func (hf *hostFlows) returnsViaHost(f *Frame, now int64) bool {
	if hf.n.Load() == 0 {
		return false
	}
	k, closing, ok := flowOf(f.Bytes(), f.Offload.GSOType != GSONone)
	if !ok {
		return false
	}
	hf.mu.RLock()
	e := hf.m[k]
	hf.mu.RUnlock()
	if e == nil {
		return false
	}
	e.touch(now, closing)
	return true
}

func (e *hostFlow) touch(now int64, closing bool) {
	if e.last.Load() != now {
		e.last.Store(now)
	}
	if closing && !e.closing.Load() {
		e.closing.Store(true)
	}
}

// expire removes the flows idle past their timeout and returns how many.
// It finds them under the read lock, so lookups on the frame path go on
// meanwhile, and takes the write lock only to delete them.
func (hf *hostFlows) expire(now int64) int {
	if hf.n.Load() == 0 {
		return 0
	}
	var gone []flowKey
	hf.mu.RLock()
	for k, e := range hf.m {
		if e.expired(k, now) {
			gone = append(gone, k)
		}
	}
	hf.mu.RUnlock()
	if len(gone) == 0 {
		return 0
	}
	hf.mu.Lock()
	defer hf.mu.Unlock()
	n := 0
	for _, k := range gone {
		// Traffic may have refreshed it since.
		if e, ok := hf.m[k]; ok && e.expired(k, now) {
			delete(hf.m, k)
			n++
		}
	}
	hf.n.Store(int64(len(hf.m)))
	return n
}

// expired reports whether the flow k has been idle past its timeout.
func (e *hostFlow) expired(k flowKey, now int64) bool {
	idle := hostFlowIdle
	switch {
	case k.proto == ProtoTCP && e.closing.Load():
		idle = hostFlowCloseIdle
	case k.proto == ProtoTCP:
		idle = hostFlowTCPIdle
	}
	return time.Duration(now-e.last.Load()) > idle
}

func (hf *hostFlows) len() int { return int(hf.n.Load()) }

// AddHostFlow records that frames from src:sport to dst:dport of protocol
// proto (the reply direction of a flow the node forwarded between two
// local pods) return through the host port, as if the switch had seen the
// node forward the flow. A restarted daemon calls it for the flows the
// node's connection tracking still holds, so their replies do not go
// straight to the client before the next frame from the node.
func (s *Switch) AddHostFlow(src, dst netip.Addr, proto uint8, sport, dport uint16) {
	k := flowKey{src: src.Unmap(), dst: dst.Unmap(), sport: sport, dport: dport, proto: proto}
	s.rt.flows.record(k.reverse(), false, s.now.Load())
}
