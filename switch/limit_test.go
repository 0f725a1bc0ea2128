package vswitch_test

import (
	"fmt"
	"testing"

	vswitch "tapswitch/switch"
)

// TestTxLimit checks a port's limit lets its burst through, drops the rest
// as "policed", and is gone once the limit is removed.
func TestTxLimit(t *testing.T) {
	ts := newTestSwitch(t, vswitch.Options{}, newPorts(2)...)
	// A burst of three 100-byte frames, refilled at 1 byte a second: the
	// rest of a quick run of frames is over the limit.
	if err := ts.sw.SetTxLimit(ts.ids[1], vswitch.Limit{Rate: 8, Burst: 3 * 100 * 8}); err != nil {
		t.Fatal(err)
	}
	send := func(n int) {
		for range n {
			ts.inject(0, frameOfLen(vswitch.Broadcast, hostMAC(0), 100))
		}
	}
	waitTx := func(frames, policed uint64) {
		t.Helper()
		waitFor(t, func() string {
			st := ts.stats(1)
			if st.TxFrames == frames && st.Drops["policed"] == policed {
				return ""
			}
			return fmt.Sprintf("port 1 sent %d frames, policed %d; want %d and %d", st.TxFrames, st.Drops["policed"], frames, policed)
		})
	}
	send(10)
	waitTx(3, 7)

	if err := ts.sw.SetTxLimit(ts.ids[1], vswitch.Limit{}); err != nil {
		t.Fatal(err)
	}
	send(10)
	waitTx(13, 7)

	if err := ts.sw.SetTxLimit(ts.ids[1], vswitch.Limit{Rate: 8}); err == nil {
		t.Error("SetTxLimit with a rate and no burst: nil, want an error")
	}
	if err := ts.sw.SetTxLimit(99, vswitch.Limit{Rate: 8, Burst: 8}); err == nil {
		t.Error("SetTxLimit of an unknown port: nil, want an error")
	}
}
