package ipam

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// Key identifies an attachment, as the CNI spec does.
type Key struct {
	ContainerID string `json:"container_id"`
	IfName      string `json:"ifname"`
}

// maxKeyLen bounds a key's two fields together. bbolt refuses keys over
// 32 KiB; real ones are a 64-character ID and an interface name.
const maxKeyLen = 1024

// Validate checks that k can be stored: both fields non-empty, no NUL byte
// (the store key joins the fields with one) and not absurdly long. The
// daemon checks the container ID's shape itself.
func (k Key) Validate() error {
	if err := k.check(); err != nil {
		return fmt.Errorf("ipam: %w", err)
	}
	return nil
}

// check is Validate without the package prefix, for record decoding.
func (k Key) check() error {
	switch {
	case k.ContainerID == "":
		return errors.New("key has an empty container id")
	case k.IfName == "":
		return fmt.Errorf("key %s has an empty interface name", k.ContainerID)
	case strings.ContainsRune(k.ContainerID, 0) || strings.ContainsRune(k.IfName, 0):
		return fmt.Errorf("key %q contains a NUL byte", k.String())
	case len(k.ContainerID)+len(k.IfName) > maxKeyLen:
		return fmt.Errorf("key is %d bytes long, want at most %d", len(k.ContainerID)+len(k.IfName), maxKeyLen)
	}
	return nil
}

// String formats k for messages and logs.
func (k Key) String() string { return k.ContainerID + "/" + k.IfName }

func compareKeys(a, b Key) int {
	return cmp.Or(cmp.Compare(a.ContainerID, b.ContainerID), cmp.Compare(a.IfName, b.IfName))
}

// Lease is an attachment's addresses.
type Lease struct {
	Key Key `json:"key"`
	// IPs holds the IPv4 address first, then the IPv6 one if configured,
	// each with its CIDR's prefix length (10.244.0.5/24).
	IPs   []netip.Prefix `json:"ips"`
	Since time.Time      `json:"since"` // UTC, when first allocated
}

// clone returns l with its own IPs, so callers never share the
// allocator's slices.
func (l Lease) clone() Lease {
	l.IPs = append([]netip.Prefix(nil), l.IPs...)
	return l
}
