//go:build race

package vswitch_test

// raceEnabled: the race detector instruments allocations, and sync.Pool
// drops a random share of what is put back, so allocation counts mean
// nothing under it.
const raceEnabled = true
