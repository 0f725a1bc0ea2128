package tap

import (
	"math"
	"testing"

	"github.com/vishvananda/netlink"

	vswitch "tapswitch/switch"
)

// TestTBFBucketHoldsBurst checks the qdisc's bucket, as the kernel derives
// it from the fill time in ticks, is never smaller than the burst asked
// for (one byte short drops every full-size frame), and its queue stays
// within 32 bits for the largest bursts runtimes pass.
func TestTBFBucketHoldsBurst(t *testing.T) {
	for _, rate := range []uint64{1e3, 3e6, 1e8, 1e9, 1e10, 1e11} {
		for _, burst := range []uint64{1514 * 8, 9014 * 8, 1e6, 1<<32 - 1} {
			q := tbf(1, vswitch.Limit{Rate: rate, Burst: burst})
			bucket := float64(q.Buffer) / netlink.TickInUsec() / 1e6 * float64(q.Rate)
			capped := float64(math.MaxUint32) / netlink.TickInUsec() / 1e6 * float64(q.Rate)
			if want := min(float64(burst/8), math.Floor(capped)); bucket < want {
				t.Errorf("rate %d burst %d: bucket %.2f bytes, want at least %.0f", rate, burst, bucket, want)
			}
			if q.Limit < uint32(burst/8) && float64(q.Limit) < bucket {
				t.Errorf("rate %d burst %d: queue %d bytes below the bucket %.0f", rate, burst, q.Limit, bucket)
			}
		}
	}
}
