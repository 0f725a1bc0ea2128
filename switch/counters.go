package vswitch

import "sync/atomic"

// DropReason says why a frame was dropped. Ingress reasons count on the port
// the frame came from, egress reasons on the port it was going to.
type DropReason uint8

const (
	DropRunt       DropReason = iota // ingress: shorter than an Ethernet header
	DropTooBig                       // ingress or egress: over the port's MaxFrame
	DropBadSrc                       // ingress: multicast or all-zero source MAC
	DropHairpin                      // ingress: destination is on the ingress port
	DropBadOffload                   // egress: offload metadata that cannot be carried out
	DropQueueFull                    // egress: the port's queue is full
	DropWriteError                   // egress: the port failed to send it
	DropPortGone                     // egress: the port was removed in flight
	DropPoliced                      // egress: over the port's rate limit (SetTxLimit)
	numDropReasons
)

var dropNames = [numDropReasons]string{
	DropRunt:       "runt",
	DropTooBig:     "too_big",
	DropBadSrc:     "bad_src",
	DropHairpin:    "hairpin",
	DropBadOffload: "bad_offload",
	DropQueueFull:  "queue_full",
	DropWriteError: "write_error",
	DropPortGone:   "port_gone",
	DropPoliced:    "policed",
}

func (r DropReason) String() string {
	if r < numDropReasons {
		return dropNames[r]
	}
	return "unknown"
}

// counters are one port's statistics, updated without locks.
type counters struct {
	rxFrames, rxBytes atomic.Uint64
	txFrames, txBytes atomic.Uint64
	readErrors        atomic.Uint64
	learnRefused      atomic.Uint64
	arpReplies        atomic.Uint64
	segmented         atomic.Uint64
	routed            atomic.Uint64 // frames the router sent out of this port
	drops             [numDropReasons]atomic.Uint64
}

// PortStats is a snapshot of one port's counters.
type PortStats struct {
	ID           PortID            `json:"id"`
	Name         string            `json:"name"`
	RxFrames     uint64            `json:"rx_frames"`
	RxBytes      uint64            `json:"rx_bytes"`
	TxFrames     uint64            `json:"tx_frames"`
	TxBytes      uint64            `json:"tx_bytes"`
	ReadErrors   uint64            `json:"read_errors"`
	LearnRefused uint64            `json:"learn_refused"`
	ARPReplies   uint64            `json:"arp_replies"`
	Segmented    uint64            `json:"segmented"`
	Routed       uint64            `json:"routed"`
	Drops        map[string]uint64 `json:"drops"`
	FDBEntries   int               `json:"fdb_entries"`
}

// TotalDrops adds up the drops of every reason.
func (ps PortStats) TotalDrops() uint64 {
	var n uint64
	for _, v := range ps.Drops {
		n += v
	}
	return n
}

func (c *counters) snapshot() PortStats {
	ps := PortStats{
		RxFrames:     c.rxFrames.Load(),
		RxBytes:      c.rxBytes.Load(),
		TxFrames:     c.txFrames.Load(),
		TxBytes:      c.txBytes.Load(),
		ReadErrors:   c.readErrors.Load(),
		LearnRefused: c.learnRefused.Load(),
		ARPReplies:   c.arpReplies.Load(),
		Segmented:    c.segmented.Load(),
		Routed:       c.routed.Load(),
		Drops:        make(map[string]uint64),
	}
	for r := range numDropReasons {
		if v := c.drops[r].Load(); v != 0 {
			ps.Drops[r.String()] = v
		}
	}
	return ps
}
