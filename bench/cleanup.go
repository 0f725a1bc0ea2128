package main

import (
	"errors"
	"fmt"
	"io"
	"sync"
)

// cleanups is the list of undo steps of everything the harness made. Each
// set-up step registers its undo as soon as it succeeded; run undoes them
// in reverse order, so a failure or a signal at any point leaves nothing.
type cleanups struct {
	mu    sync.Mutex // guards steps
	steps []cleanupStep
}

type cleanupStep struct {
	what string
	fn   func() error
}

// add registers fn, which undoes what, to run before every step added
// earlier.
func (c *cleanups) add(what string, fn func() error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.steps = append(c.steps, cleanupStep{what, fn})
}

// run runs every step, newest first, even when some fail, reports the
// failures to w and returns them joined. It empties the list.
func (c *cleanups) run(w io.Writer) error {
	c.mu.Lock()
	steps := c.steps
	c.steps = nil
	c.mu.Unlock()
	var errs []error
	for i := len(steps) - 1; i >= 0; i-- {
		if err := steps[i].fn(); err != nil {
			err = fmt.Errorf("clean up %s: %w", steps[i].what, err)
			fmt.Fprintln(w, "bench:", err)
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
