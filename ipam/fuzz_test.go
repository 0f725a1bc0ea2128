package ipam

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

// FuzzParseReserve checks that ParseReserve never panics and that what it
// accepts is well formed: each range of one family, ordered, without a
// zone, and read back the same from its String form.
func FuzzParseReserve(f *testing.F) {
	for _, s := range []string{
		"", " ", "10.244.0.10", "10.244.0.16/28", "10.244.0.20-10.244.0.29",
		" 10.244.0.10 , fd00::1-fd00::ff,fd00::/120", "10.244.0.17/28", "1.2.3.4-", "-",
		",", "::ffff:1.2.3.4", "fe80::1%eth0", "10.0.0.0/0", "::/0", "1.2.3.4/33",
		// 2^64 reserved in a range of 2^128: sizes capped before
		// subtracting left 0 and 1 free addresses.
		"0:0:0:1::/64", "::/64", "::2-ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffc",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		rs, err := ParseReserve(s)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "ipam: reserve ") {
				t.Fatalf("ParseReserve(%q) error %q lacks the package prefix", s, err)
			}
			return
		}
		for _, r := range rs {
			if err := r.valid(); err != nil {
				t.Fatalf("ParseReserve(%q) returned %v: %v", s, r, err)
			}
			if !r.Contains(r.First) || !r.Contains(r.Last) {
				t.Fatalf("ParseReserve(%q) returned %v, which does not contain its ends", s, r)
			}
			back, err := ParseReserve(r.String())
			if err != nil || !slices.Equal(back, []Range{r}) {
				t.Fatalf("ParseReserve(%q) = %v, %v; want %v back", r.String(), back, err, r)
			}
		}
		// Accepted ranges lie inside the whole address space, which is a
		// valid (if silly) configuration, and are never handed out.
		cfg := Config{V4: pfx("0.0.0.0/0"), V6: pfx("::/0"), Reserve: rs}
		a, err := New(cfg, NewMem(), nil)
		if err != nil {
			t.Fatalf("New with reserve %q: %v", s, err)
		}
		const n = 3
		// Exhaustion is right only when the reserve leaves fewer than n
		// addresses in a family, counted here without the allocator's
		// sizes.
		free := min(freeAddrs(rs, addr("0.0.0.2"), addr("255.255.255.253"), n),
			freeAddrs(rs, addr("::2"), addr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"), n))
		for i := range n {
			l, err := a.Allocate(key(i))
			if exhausted := errors.Is(err, ErrExhausted); exhausted != (i >= free) {
				t.Fatalf("Allocate #%d with reserve %q = %v, but %d addresses are free in the emptier family", i+1, s, err, free)
			}
			if err != nil && i >= free {
				break // everything reserved
			}
			if err != nil {
				t.Fatalf("Allocate with reserve %q: %v", s, err)
			}
			for _, r := range rs {
				for _, p := range l.IPs {
					if r.Contains(p.Addr()) {
						t.Fatalf("Allocate with reserve %q = %s, inside %v", s, p, r)
					}
				}
			}
		}
	})
}

// freeAddrs counts the addresses in [first, last] outside every range of
// rs, up to limit. It steps address by address, jumping over ranges, so
// it does not share the allocator's size arithmetic.
func freeAddrs(rs []Range, first, last netip.Addr, limit int) int {
	n := 0
	for a := first; n < limit && a.IsValid() && !last.Less(a); {
		end, reserved := netip.Addr{}, false
		for _, r := range rs {
			if r.Contains(a) && (!reserved || end.Less(r.Last)) {
				end, reserved = r.Last, true
			}
		}
		if reserved {
			a = end.Next() // invalid past the last address: done
			continue
		}
		n++
		a = a.Next()
	}
	return n
}

// FuzzDecode feeds arbitrary bytes to every record decoder: they return
// an error or a value that encodes back to the same record, never panic.
// The seeds are valid records, so mutations explore near them.
func FuzzDecode(f *testing.F) {
	l := Lease{
		Key:   Key{ContainerID: "0123456789abcdef", IfName: "eth0"},
		IPs:   []netip.Prefix{pfx("10.244.0.5/24"), pfx("fd00::5/64")},
		Since: time.Date(2025, 5, 6, 7, 8, 9, 10, time.UTC),
	}
	rec, err := encodeLease(l)
	if err != nil {
		f.Fatal(err)
	}
	stamp, err := encodeStamp(Stamp{V4: pfx("10.244.0.0/24"), V6: pfx("fd00::/64")})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(rec.key, rec.value)
	f.Add([]byte(keyStamp), stamp)
	f.Add([]byte(keyCursor4), encodeCursor(keyCursor4, addr("10.244.0.5")))
	f.Add([]byte(keyCursor6), encodeCursor(keyCursor6, addr("fd00::5")))
	f.Add([]byte(keyCount), encodeCount(42))
	f.Add([]byte{}, []byte{})
	f.Add(rec.key, rec.value[:len(rec.value)-1])

	f.Fuzz(func(t *testing.T, k, v []byte) {
		fuzzDecoders(t, k, v)
		// Most mutations break the checksum; seal them too, so the fuzzer
		// also explores the decoding behind it.
		fuzzDecoders(t, k, seal(k, v))
		for _, name := range []string{keyStamp, keyCursor4, keyCursor6, keyCount} {
			fuzzDecoders(t, []byte(name), seal([]byte(name), v))
		}
	})
}

func fuzzDecoders(t *testing.T, k, v []byte) {
	{
		if l, err := decodeLease(k, v); err == nil {
			back, err := encodeLease(l)
			if err != nil || !slices.Equal(back.key, k) {
				t.Fatalf("decodeLease(%q) = %v, which encodes to %q, %v", k, l, back.key, err)
			}
			if again, err := decodeLease(back.key, back.value); err != nil || !leasesEqual([]Lease{again}, []Lease{l}) {
				t.Fatalf("lease %v does not survive a round trip: %v, %v", l, again, err)
			}
		}
		if s, err := decodeStamp(v); err == nil {
			back, err := encodeStamp(s)
			if err != nil {
				t.Fatal(err)
			}
			if again, err := decodeStamp(back); err != nil || again != s {
				t.Fatalf("stamp %v does not survive a round trip: %v, %v", s, again, err)
			}
		}
		for _, name := range []string{keyCursor4, keyCursor6} {
			if a, err := decodeCursor(name, v, name == keyCursor4); err == nil {
				if again, err := decodeCursor(name, encodeCursor(name, a), name == keyCursor4); err != nil || again != a {
					t.Fatalf("cursor %v does not survive a round trip: %v, %v", a, again, err)
				}
			}
		}
		if n, err := decodeCount(v); err == nil {
			if again, err := decodeCount(encodeCount(n)); err != nil || again != n {
				t.Fatalf("count %d does not survive a round trip: %d, %v", n, again, err)
			}
		}
		// A whole state: the same bytes as every kind of record.
		decodeState(records{
			meta:   map[string][]byte{string(k): v, keyStamp: v},
			leases: []record{{key: k, value: v}},
		})
	}
}
