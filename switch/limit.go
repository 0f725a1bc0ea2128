package vswitch

import (
	"fmt"
	"time"
)

// Limit is a rate limit on the frames the switch sends to a port: for a
// pod's port, the pod's ingress bandwidth (CNI's ingressRate and
// ingressBurst). Rate is in bits per second, Burst in bits, as CNI and
// Kubernetes give them.
type Limit struct {
	Rate  uint64
	Burst uint64
}

// policer is a token bucket over bytes. Frames over the rate are dropped
// (counted as DropPoliced), not delayed: a delay would hold the port's
// writer, which readers of other ports hand frames to. TCP takes the
// drops as congestion and settles at the rate. A frame larger than the
// bucket (a GSO super-frame under a small burst) passes when the bucket
// is full and leaves it in debt, so no frame size is refused forever and
// the long-run rate still holds.
//
// Only the port's writer uses it, under portState.wmu.
type policer struct {
	limit  Limit   // as set
	rate   float64 // bytes per second
	burst  float64 // bytes
	tokens float64 // bytes; negative after a frame larger than what was left
	last   time.Time
}

func newPolicer(l Limit, now time.Time) *policer {
	return &policer{limit: l, rate: float64(l.Rate) / 8, burst: float64(l.Burst) / 8, tokens: float64(l.Burst) / 8, last: now}
}

// refill adds the tokens earned since the last refill, up to the bucket.
// A clock that steps back adds nothing.
func (p *policer) refill(now time.Time) {
	if d := now.Sub(p.last); d > 0 {
		p.tokens = min(p.burst, p.tokens+d.Seconds()*p.rate)
		p.last = now
	}
}

// allow reports whether a frame of n bytes may go, and takes its tokens
// if so.
func (p *policer) allow(n int) bool {
	if p.tokens <= 0 || (float64(n) > p.tokens && p.tokens < p.burst) {
		return false
	}
	p.tokens -= float64(n)
	return true
}

// take charges n bytes whatever is left, for a frame that must go.
func (p *policer) take(n int) {
	p.tokens = max(p.tokens-float64(n), -p.burst)
}

// police drops the IP frames of batch over the port's limit and returns
// the others, in order, in batch's backing array. Other frames (ARP, the
// switch's own ARP replies among them) always go and are charged: a
// neighbour entry must not fail because the pod's download fills its
// limit.
// The caller holds ps.wmu and clears batch after use.
func (s *Switch) police(ps *portState, batch []*Frame) []*Frame {
	p := ps.policer
	p.refill(time.Now())
	kept := batch[:0]
	for _, f := range batch {
		switch b := f.Bytes(); {
		case len(b) < EtherHdrLen || Ether(b).Type() != EtherTypeIP4 && Ether(b).Type() != EtherTypeIP6:
			p.take(f.Len())
			kept = append(kept, f)
		case p.allow(f.Len()):
			kept = append(kept, f)
		default:
			s.drop(ps, f, DropPoliced)
		}
	}
	return kept
}

// TxLimit returns port id's limit; a zero Limit when it has none.
func (s *Switch) TxLimit(id PortID) (Limit, error) {
	ps, ok := s.ports.Load().byID[id]
	if !ok {
		return Limit{}, fmt.Errorf("vswitch: limit of port %d: %w", id, ErrNoPort)
	}
	ps.wmu.Lock()
	defer ps.wmu.Unlock()
	if ps.policer == nil {
		return Limit{}, nil
	}
	return ps.policer.limit, nil
}

// SetTxLimit limits the rate of the frames the switch sends to port id;
// a zero Limit removes the limit. Frames over it are dropped and counted
// as "policed".
func (s *Switch) SetTxLimit(id PortID, l Limit) error {
	if (l.Rate == 0) != (l.Burst == 0) {
		return fmt.Errorf("vswitch: limit of port %d: rate %d and burst %d: set both or neither", id, l.Rate, l.Burst)
	}
	ps, ok := s.ports.Load().byID[id]
	if !ok {
		return fmt.Errorf("vswitch: limit of port %d: %w", id, ErrNoPort)
	}
	ps.wmu.Lock()
	defer ps.wmu.Unlock()
	if l.Rate == 0 {
		ps.policer = nil
	} else {
		ps.policer = newPolicer(l, time.Now())
	}
	return nil
}
