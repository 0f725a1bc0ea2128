package ipam

// ops is a Change encoded: what a store writes in one transaction.
type ops struct {
	meta []record // into bucketMeta
	put  []record // into bucketLeases
	del  [][]byte // from bucketLeases
}

// encodeChange encodes c whole before a store touches anything, so a
// record that cannot be encoded leaves the store unchanged.
func encodeChange(c Change) (ops, error) {
	var o ops
	if c.Stamp != nil {
		v, err := encodeStamp(*c.Stamp)
		if err != nil {
			return ops{}, err
		}
		o.meta = append(o.meta, record{key: []byte(keyStamp), value: v})
	}
	if c.Cursor4.IsValid() {
		o.meta = append(o.meta, record{key: []byte(keyCursor4), value: encodeCursor(keyCursor4, c.Cursor4)})
	}
	if c.Cursor6.IsValid() {
		o.meta = append(o.meta, record{key: []byte(keyCursor6), value: encodeCursor(keyCursor6, c.Cursor6)})
	}
	for _, l := range c.Put {
		if err := l.Key.check(); err != nil {
			return ops{}, err
		}
		rec, err := encodeLease(l)
		if err != nil {
			return ops{}, err
		}
		o.put = append(o.put, rec)
	}
	for _, k := range c.Delete {
		o.del = append(o.del, storeKey(k))
	}
	return o, nil
}

// kv is one write transaction over a store's two buckets, as applyOps
// needs it.
type kv interface {
	get(bucket string, key []byte) []byte
	put(bucket string, key, value []byte) error
	del(bucket string, key []byte) error
}

// applyOps writes o and keeps the lease count in bucketMeta up to date.
// Its only failures before the first write are a bad stored count; after
// that only a store's put or del fails (bbolt then rolls back).
func applyOps(tx kv, o ops) error {
	n := 0 // a new store has no count yet
	if v := tx.get(bucketMeta, []byte(keyCount)); v != nil {
		var err error
		if n, err = decodeCount(v); err != nil {
			return err
		}
	}
	for _, r := range o.meta {
		if err := tx.put(bucketMeta, r.key, r.value); err != nil {
			return err
		}
	}
	for _, r := range o.put {
		if tx.get(bucketLeases, r.key) == nil {
			n++
		}
		if err := tx.put(bucketLeases, r.key, r.value); err != nil {
			return err
		}
	}
	for _, k := range o.del {
		if tx.get(bucketLeases, k) == nil {
			continue
		}
		n--
		if err := tx.del(bucketLeases, k); err != nil {
			return err
		}
	}
	return tx.put(bucketMeta, []byte(keyCount), encodeCount(n))
}
