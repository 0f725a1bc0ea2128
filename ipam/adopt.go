package ipam

import (
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// Adopt records a lease for addresses an attachment already has: the
// daemon's saved pods when the store lost their leases (the first start
// with a store, a store moved away, bbolt falling back one commit). ips
// holds one address per configured family, IPv4 first, each with its
// CIDR's prefix length, as Lease.IPs does.
//
// Each address must be a pod address (not the network, gateway, host port
// or broadcast address), outside every Reserve range and not leased to
// another key. If key already holds exactly these addresses, Adopt returns
// its lease and commits nothing; if key holds others, it is an error. The
// lease's Since is now. Adopt does not move the rotation cursors: the
// adopted addresses are skipped as used when the search reaches them.
func (a *Allocator) Adopt(key Key, ips []netip.Prefix) (Lease, error) {
	if err := key.check(); err != nil {
		return Lease{}, fmt.Errorf("ipam: adopt %s: %w", key, err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.usable(); err != nil {
		return Lease{}, err
	}
	if l, ok := a.leases[key]; ok {
		if slices.Equal(l.IPs, ips) {
			return l.clone(), nil
		}
		return Lease{}, fmt.Errorf("ipam: adopt %s: it holds %v, not %v", key, l.IPs, ips)
	}
	if err := a.checkAdopt(ips); err != nil {
		return Lease{}, fmt.Errorf("ipam: adopt %s: %w", key, err)
	}
	lease := Lease{Key: key, IPs: slices.Clone(ips), Since: time.Now().UTC()}
	if err := a.commit(Change{Put: []Lease{lease}}); err != nil {
		return Lease{}, fmt.Errorf("ipam: adopt %s: %w", key, err)
	}
	a.add(lease)
	a.log.Debug("adopted", "container_id", key.ContainerID, "ifname", key.IfName, "ips", lease.IPs)
	return lease.clone(), nil
}

// checkAdopt checks that ips can be leased to a key that holds none.
func (a *Allocator) checkAdopt(ips []netip.Prefix) error {
	fams := a.families()
	if len(ips) != len(fams) {
		return fmt.Errorf("%d addresses, want %d (%s)", len(ips), len(fams), familyNames(fams))
	}
	for i, f := range fams {
		if err := f.checkAdopt(ips[i]); err != nil {
			return err
		}
	}
	return nil
}

// familyNames describes the addresses a lease holds, in order.
func familyNames(fams []*family) string {
	if len(fams) == 1 {
		return "one IPv4"
	}
	return "one IPv4, then one IPv6"
}

// checkAdopt checks that p is one of f's pod addresses, with f's prefix
// length, outside every reserve range and not leased.
func (f *family) checkAdopt(p netip.Prefix) error {
	ip := p.Addr()
	switch {
	case !p.IsValid():
		return fmt.Errorf("invalid address %s, want one in %s", p, f.prefix)
	case !f.prefix.Contains(ip):
		return fmt.Errorf("address %s is not in %s", p, f.prefix)
	case p.Bits() != f.prefix.Bits():
		return fmt.Errorf("address %s does not have the prefix length of %s", p, f.prefix)
	case !f.inPods(ip):
		return fmt.Errorf("address %s is %s of %s, not a pod address", ip, f.role(ip), f.prefix)
	}
	if r, ok := f.reserved(ip); ok {
		return fmt.Errorf("address %s is reserved (%s)", ip, r)
	}
	if other, taken := f.used[ip]; taken {
		return fmt.Errorf("address %s is leased to %s", ip, other)
	}
	return nil
}

// role names an address of f's CIDR that is not a pod address.
func (f *family) role(ip netip.Addr) string {
	switch ip {
	case f.prefix.Addr():
		return "the network address"
	case Gateway(f.prefix):
		return "the gateway address"
	case Host(f.prefix):
		return "the host port's address"
	}
	return "the broadcast address" // the CIDR holds nothing else
}
