package vswitch

import "testing"

// nullPort is the least Port there is, for tests inside the package (the
// porttest package imports this one, so it cannot be used here).
type nullPort struct{ closed chan struct{} }

func (p nullPort) Name() string { return "null" }
func (p nullPort) Caps() Caps   { return Caps{MaxFrame: 1514, NonBlockingWrite: true} }
func (p nullPort) Queues() int  { return 1 }
func (p nullPort) ReadBatch(int, []*Frame) (int, error) {
	<-p.closed
	return 0, ErrClosed
}
func (p nullPort) WriteBatch(frames []*Frame) (int, error) {
	for _, f := range frames {
		f.Release()
	}
	return len(frames), nil
}
func (p nullPort) Close() error { close(p.closed); return nil }

// TestDeliverToRemovedPort hands frames to a port that was removed after a
// reader chose it but before the reader's flush: they must be dropped and
// counted, not left on a queue nobody reads.
func TestDeliverToRemovedPort(t *testing.T) {
	s := New(Options{})
	defer s.Close()
	id, err := s.AddPort(nullPort{closed: make(chan struct{})})
	if err != nil {
		t.Fatal(err)
	}
	ps := s.ports.Load().byID[id]
	h := new(handoff)
	for range 3 {
		f := s.pools.Small.Get()
		f.SetLen(60)
		h.add(ps, f)
	}
	if err := s.RemovePort(id); err != nil {
		t.Fatal(err)
	}
	s.flush(h)
	if n := len(ps.queue); n != 0 {
		t.Errorf("removed port's queue holds %d frames, want 0", n)
	}
	if n := ps.c.drops[DropPortGone].Load(); n != 3 {
		t.Errorf("port_gone drops = %d, want 3", n)
	}
	if n := ps.pending.Load(); n != 0 {
		t.Errorf("pending = %d, want 0", n)
	}
}
