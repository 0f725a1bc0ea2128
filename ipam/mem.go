package ipam

import (
	"fmt"
	"maps"
	"slices"
	"sync"
)

// Mem is a Store in memory, for tests. It keeps the same encoded records as
// Bolt and decodes them the same way, so tests over Mem exercise the
// record format too.
type Mem struct {
	mu     sync.Mutex        // guards meta and leases
	meta   map[string][]byte // bucketMeta
	leases map[string][]byte // bucketLeases
}

var _ Store = (*Mem)(nil)

// NewMem returns an empty store.
func NewMem() *Mem {
	return &Mem{meta: make(map[string][]byte), leases: make(map[string][]byte)}
}

// Path names the store in messages.
func (m *Mem) Path() string { return "(memory)" }

// Load implements Store.
func (m *Mem) Load() (*State, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r := records{meta: maps.Clone(m.meta)}
	for _, k := range slices.Sorted(maps.Keys(m.leases)) {
		r.leases = append(r.leases, record{key: []byte(k), value: m.leases[k]})
	}
	st, err := decodeState(r)
	if err != nil {
		return nil, fmt.Errorf("ipam: store (memory): %w", err)
	}
	return st, nil
}

// Commit implements Store.
func (m *Mem) Commit(c Change) error {
	o, err := encodeChange(c)
	if err != nil {
		return fmt.Errorf("ipam: store (memory): commit: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	// applyOps can fail only before its first write here (a bad stored
	// count): map writes do not fail, so a failed Commit changes nothing.
	if err := applyOps(memKV{m}, o); err != nil {
		return fmt.Errorf("ipam: store (memory): commit: %w", err)
	}
	return nil
}

// memKV is a kv over a Mem's maps; its caller holds m.mu.
type memKV struct{ m *Mem }

func (k memKV) bucket(name string) map[string][]byte {
	if name == bucketMeta {
		return k.m.meta
	}
	return k.m.leases
}

func (k memKV) get(bucket string, key []byte) []byte { return k.bucket(bucket)[string(key)] }

func (k memKV) put(bucket string, key, value []byte) error {
	k.bucket(bucket)[string(key)] = value
	return nil
}

func (k memKV) del(bucket string, key []byte) error {
	delete(k.bucket(bucket), string(key))
	return nil
}

// Close implements Store. It does nothing: the content stays, so a test
// can hand the same Mem to a new Allocator, as a restarted daemon reopens
// its file.
func (m *Mem) Close() error { return nil }
