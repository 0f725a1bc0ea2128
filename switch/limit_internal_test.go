package vswitch

import (
	"testing"
	"time"
)

func TestPolicer(t *testing.T) {
	t0 := time.Unix(1000, 0)
	// 1000 bytes a second, a bucket of 2000 bytes.
	p := newPolicer(Limit{Rate: 8000, Burst: 16000}, t0)
	steps := []struct {
		at   time.Duration
		n    int
		want bool
	}{
		{0, 1500, true},                      // the full bucket takes it: 500 left
		{0, 1000, false},                     // over what is left
		{500 * time.Millisecond, 1000, true}, // 500 + 500 refilled: 0 left
		{500 * time.Millisecond, 1, false},   // empty
		{10 * time.Second, 5000, true},       // larger than the bucket, which is full: 2000 - 5000 = -3000
		{11 * time.Second, 10, false},        // -2000: in debt
		{14 * time.Second, 1000, true},       // +3000: 1000, enough: 0 left
		{15 * time.Second, 1500, false},      // 1000: too little, and not full
		{16 * time.Second, 1500, true},       // 2000: full
		{time.Hour, 1, true},                 // refill stops at the bucket
		{time.Hour, 1999, true},
		{time.Hour, 1, false},
	}
	for i, s := range steps {
		p.refill(t0.Add(s.at))
		if got := p.allow(s.n); got != s.want {
			t.Fatalf("step %d: allow(%d) at +%v = %v, want %v (tokens now %.0f)", i, s.n, s.at, got, s.want, p.tokens)
		}
	}
	// A clock that steps back takes nothing and gives nothing.
	p.refill(t0)
	if p.allow(1) {
		t.Error("allow after the clock stepped back, with an empty bucket")
	}
}
