package ipam

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"net/netip"
	"strconv"
	"strings"
)

// formatVersion is written into the stamp. A store with another version
// was written by another tapswitch release and is refused, not guessed at.
const formatVersion = 1

// Bucket and key names; doc.go describes the layout.
const (
	bucketMeta   = "meta"
	bucketLeases = "leases"
	keyStamp     = "stamp"
	keyCursor4   = "cursor4"
	keyCursor6   = "cursor6"
	keyCount     = "count"
)

// record is one key/value pair as stored.
type record struct{ key, value []byte }

// records is a store's raw content, the same for both stores, so both
// decode (and validate) through decodeState.
type records struct {
	meta   map[string][]byte
	leases []record // sorted by key
}

// crcLen is the size of the CRC-32C (Castagnoli) that ends every value.
// bbolt checksums only its meta pages, so without it a flipped bit in a
// lease could read as another valid address, which would then be handed
// out twice. The CRC covers the key too, so a record cannot move.
const crcLen = 4

func checksum(key, body []byte) uint32 {
	tab := crc32.MakeTable(crc32.Castagnoli) // cached by hash/crc32
	return crc32.Update(crc32.Checksum(key, tab), tab, body)
}

// seal returns body followed by its checksum.
func seal(key, body []byte) []byte {
	return binary.BigEndian.AppendUint32(bytes.Clone(body), checksum(key, body))
}

// unseal checks value's checksum and returns its body.
func unseal(key, value []byte) ([]byte, error) {
	if len(value) < crcLen {
		return nil, fmt.Errorf("value is %d bytes, too short for its checksum", len(value))
	}
	body, sum := value[:len(value)-crcLen], binary.BigEndian.Uint32(value[len(value)-crcLen:])
	if checksum(key, body) != sum {
		return nil, errors.New("checksum mismatch")
	}
	return body, nil
}

// storeKey is a lease's key in bucketLeases. Key.Validate forbids NUL
// bytes in the fields, so the join is unambiguous.
func storeKey(k Key) []byte { return []byte(k.ContainerID + "\x00" + k.IfName) }

// encodeLease fails only for a time JSON cannot hold (past year 9999).
func encodeLease(l Lease) (record, error) {
	body, err := json.Marshal(l)
	if err != nil {
		return record{}, fmt.Errorf("lease %s: %w", l.Key, err)
	}
	k := storeKey(l.Key)
	return record{key: k, value: seal(k, body)}, nil
}

// decodeLease decodes and checks one lease record. Whether its addresses
// fit the configured CIDRs is checked by New, which knows them.
func decodeLease(k, v []byte) (Lease, error) {
	body, err := unseal(k, v)
	if err != nil {
		return Lease{}, err
	}
	var l Lease
	if err := json.Unmarshal(body, &l); err != nil {
		return Lease{}, err
	}
	if err := l.Key.check(); err != nil {
		return Lease{}, err
	}
	if !bytes.Equal(storeKey(l.Key), k) {
		return Lease{}, fmt.Errorf("record holds the lease of %q", storeKey(l.Key))
	}
	if len(l.IPs) != 1 && len(l.IPs) != 2 {
		return Lease{}, fmt.Errorf("lease has %d addresses, want 1 or 2", len(l.IPs))
	}
	if !l.IPs[0].IsValid() || !l.IPs[0].Addr().Is4() {
		return Lease{}, fmt.Errorf("lease's first address %s is not IPv4", l.IPs[0])
	}
	if len(l.IPs) == 2 && (!l.IPs[1].IsValid() || !l.IPs[1].Addr().Is6() || l.IPs[1].Addr().Is4In6()) {
		return Lease{}, fmt.Errorf("lease's second address %s is not IPv6", l.IPs[1])
	}
	if l.Since.IsZero() {
		return Lease{}, errors.New("lease has no allocation time")
	}
	return l, nil
}

// stampRecord is the stamp as stored, with the format version.
type stampRecord struct {
	Format int          `json:"format"`
	V4     netip.Prefix `json:"v4"`
	V6     netip.Prefix `json:"v6,omitzero"`
}

func encodeStamp(s Stamp) ([]byte, error) {
	body, err := json.Marshal(stampRecord{Format: formatVersion, V4: s.V4, V6: s.V6})
	if err != nil {
		return nil, fmt.Errorf("stamp: %w", err)
	}
	return seal([]byte(keyStamp), body), nil
}

func decodeStamp(v []byte) (Stamp, error) {
	body, err := unseal([]byte(keyStamp), v)
	if err != nil {
		return Stamp{}, err
	}
	var r stampRecord
	if err := json.Unmarshal(body, &r); err != nil {
		return Stamp{}, err
	}
	if r.Format != formatVersion {
		return Stamp{}, fmt.Errorf("format %d, this tapswitch reads format %d", r.Format, formatVersion)
	}
	if err := validCIDR(r.V4, true); err != nil {
		return Stamp{}, err
	}
	if r.V6.IsValid() {
		if err := validCIDR(r.V6, false); err != nil {
			return Stamp{}, err
		}
	}
	return Stamp{V4: r.V4, V6: r.V6}, nil
}

// encodeCursor stores an address as text, so the store reads well in
// `bbolt get`.
func encodeCursor(name string, a netip.Addr) []byte {
	return seal([]byte(name), []byte(a.String()))
}

func decodeCursor(name string, v []byte, want4 bool) (netip.Addr, error) {
	body, err := unseal([]byte(name), v)
	if err != nil {
		return netip.Addr{}, err
	}
	a, err := netip.ParseAddr(string(body))
	if err != nil {
		return netip.Addr{}, err
	}
	if a.Zone() != "" || a.Is4() != want4 || a.Is4In6() {
		return netip.Addr{}, fmt.Errorf("address %s is of the wrong family", a)
	}
	return a, nil
}

func encodeCount(n int) []byte {
	return seal([]byte(keyCount), []byte(strconv.Itoa(n)))
}

func decodeCount(v []byte) (int, error) {
	body, err := unseal([]byte(keyCount), v)
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(string(body))
	if err != nil || n < 0 {
		return 0, fmt.Errorf("bad lease count %q", body)
	}
	return n, nil
}

// decodeState decodes every record of r. The first bad record is the
// error; nothing is skipped.
func decodeState(r records) (*State, error) {
	st := &State{}
	count := -1 // none stored
	for name, v := range r.meta {
		var err error
		switch name {
		case keyCount:
			count, err = decodeCount(v)
		case keyStamp:
			var s Stamp
			s, err = decodeStamp(v)
			st.Stamp = &s
		case keyCursor4:
			st.Cursor4, err = decodeCursor(name, v, true)
		case keyCursor6:
			st.Cursor6, err = decodeCursor(name, v, false)
		default:
			err = errors.New("unknown record")
		}
		if err != nil {
			return nil, fmt.Errorf("%s record %q: %w", bucketMeta, name, err)
		}
	}
	for _, rec := range r.leases {
		l, err := decodeLease(rec.key, rec.value)
		if err != nil {
			return nil, fmt.Errorf("%s record %q: %w", bucketLeases, printable(rec.key), err)
		}
		st.Leases = append(st.Leases, l)
	}
	if st.Stamp == nil && (count >= 0 || len(st.Leases) > 0 || st.Cursor4.IsValid() || st.Cursor6.IsValid()) {
		return nil, errors.New("records without a config stamp")
	}
	// The count catches records lost (or doubled) by a damaged page,
	// which each record's own checksum cannot see.
	if st.Stamp != nil && count != len(st.Leases) {
		return nil, fmt.Errorf("%d lease records, but the stored count is %d: damaged pages lost or doubled leases", len(st.Leases), count)
	}
	return st, nil
}

// printable shows a store key in messages, with its NUL as '/'.
func printable(k []byte) string { return strings.ReplaceAll(string(k), "\x00", "/") }
