package daemon

import (
	"fmt"
	"math"

	"tapswitch/daemon/api"
	vswitch "tapswitch/switch"
)

// minRate is the lowest rate in bit/s, Kubernetes' own lowest bandwidth
// annotation ("1k"). Below about 44 bit/s the tbf bucket's capped fill
// time would not hold a frame.
const minRate = 1000

// validateBandwidth checks a pod's limits as the reference bandwidth
// plugin does (a rate needs its burst and the other way round, a burst
// under 4 GiB), and that an egress burst holds a whole frame: the tbf
// qdisc never sends a packet larger than its bucket.
func validateBandwidth(b *api.Bandwidth, mtu int) error {
	if b == nil {
		return nil
	}
	check := func(dir string, rate, burst uint64) error {
		switch {
		case (rate == 0) != (burst == 0):
			return fmt.Errorf("%w: %s rate %d bit/s and burst %d bit: set both or neither", ErrInvalid, dir, rate, burst)
		case burst/8 >= math.MaxUint32:
			return fmt.Errorf("%w: %s burst %d bit: at most 4 GiB", ErrInvalid, dir, burst)
		case rate > 0 && rate < minRate:
			return fmt.Errorf("%w: %s rate %d bit/s: at least %d", ErrInvalid, dir, rate, minRate)
		}
		return nil
	}
	if err := check("ingress", b.IngressRate, b.IngressBurst); err != nil {
		return err
	}
	if err := check("egress", b.EgressRate, b.EgressBurst); err != nil {
		return err
	}
	if frame := uint64(mtu+vswitch.EtherHdrLen) * 8; b.EgressRate > 0 && b.EgressBurst < frame {
		return fmt.Errorf("%w: egress burst %d bit is less than one frame (%d bit at mtu %d)", ErrInvalid, b.EgressBurst, frame, mtu)
	}
	return nil
}

// ingressLimit is the switch's limit on frames to the pod.
func ingressLimit(pod api.Pod) vswitch.Limit {
	if pod.Bandwidth == nil {
		return vswitch.Limit{}
	}
	return vswitch.Limit{Rate: pod.Bandwidth.IngressRate, Burst: pod.Bandwidth.IngressBurst}
}

// egressLimit is the tbf qdisc's limit on the pod's own sending.
func egressLimit(pod api.Pod) vswitch.Limit {
	if pod.Bandwidth == nil {
		return vswitch.Limit{}
	}
	return vswitch.Limit{Rate: pod.Bandwidth.EgressRate, Burst: pod.Bandwidth.EgressBurst}
}
