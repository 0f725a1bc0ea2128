package vswitch_test

import (
	"fmt"
	"testing"

	vswitch "tapswitch/switch"
	"tapswitch/switch/porttest"
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
	if l, err := ts.sw.TxLimit(ts.ids[1]); err != nil || l != (vswitch.Limit{Rate: 8, Burst: 2400}) {
		t.Errorf("TxLimit = %+v, %v; want the limit set", l, err)
	}
	send(10)
	waitTx(3, 7)

	// Not IP (ARP here): goes whatever the bucket holds.
	for range 3 {
		ts.inject(0, porttest.Ether(vswitch.Broadcast, hostMAC(0), vswitch.EtherTypeARP, make([]byte, 28)))
	}
	waitTx(6, 7)
	send(1)
	waitTx(6, 8)

	if err := ts.sw.SetTxLimit(ts.ids[1], vswitch.Limit{}); err != nil {
		t.Fatal(err)
	}
	send(10)
	waitTx(16, 8)
	if l, err := ts.sw.TxLimit(ts.ids[1]); err != nil || l != (vswitch.Limit{}) {
		t.Errorf("TxLimit after removing it = %+v, %v; want none", l, err)
	}

	if err := ts.sw.SetTxLimit(ts.ids[1], vswitch.Limit{Rate: 8}); err == nil {
		t.Error("SetTxLimit with a rate and no burst: nil, want an error")
	}
	if err := ts.sw.SetTxLimit(99, vswitch.Limit{Rate: 8, Burst: 8}); err == nil {
		t.Error("SetTxLimit of an unknown port: nil, want an error")
	}
}
