package daemon

import (
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"slices"
	"time"

	"tapswitch/daemon/api"
	"tapswitch/ipam"
)

// ErrExhausted is wrapped by AddPod's error when a pod CIDR has no free
// address; the API answers 507.
var ErrExhausted = ipam.ErrExhausted

// ipamLockTimeout bounds the wait for the store's file lock. The state
// file's lock is taken first, so another daemon on the same folder has
// already been refused; this only covers a stray holder of ipam.db.
const ipamLockTimeout = time.Second

// openIPAM opens the address store in the state folder and the allocator
// over it. A store written for other CIDRs, or one that cannot be read,
// is an error: the daemon never re-numbers pods or starts afresh by
// itself.
func openIPAM(opts Options, log *slog.Logger) (*ipam.Allocator, error) {
	store, err := ipam.OpenBolt(filepath.Join(opts.StateDir, "ipam.db"), ipamLockTimeout)
	if err != nil {
		return nil, err
	}
	a, err := ipam.New(ipam.Config{V4: opts.PodCIDR, V6: opts.PodCIDR6, Reserve: opts.Reserve}, store, log)
	if err != nil {
		store.Close()
		return nil, err
	}
	return a, nil
}

// leaseKey is a pod's key in the address store.
func leaseKey(pod api.Pod) ipam.Key { return ipam.Key{ContainerID: pod.ID, IfName: pod.IfName} }

// cidrs are the pod CIDRs, IPv4 first.
func (d *Daemon) cidrs() []netip.Prefix {
	if d.opts.PodCIDR6.IsValid() {
		return []netip.Prefix{d.opts.PodCIDR, d.opts.PodCIDR6}
	}
	return []netip.Prefix{d.opts.PodCIDR}
}

// gatewayAddrs are the gateway's addresses, the first usable of each CIDR,
// with the CIDR's prefix length.
func (d *Daemon) gatewayAddrs() []netip.Prefix {
	var out []netip.Prefix
	for _, c := range d.cidrs() {
		out = append(out, netip.PrefixFrom(ipam.Gateway(c), c.Bits()))
	}
	return out
}

// hostPortAddrs are the host port's addresses, the last usable of each
// CIDR, with the CIDR's prefix length.
func (d *Daemon) hostPortAddrs() []netip.Prefix {
	var out []netip.Prefix
	for _, c := range d.cidrs() {
		out = append(out, netip.PrefixFrom(ipam.Host(c), c.Bits()))
	}
	return out
}

// hostAddrs are the host port's addresses without prefix lengths.
func (d *Daemon) hostAddrs() []netip.Addr {
	var out []netip.Addr
	for _, p := range d.hostPortAddrs() {
		out = append(out, p.Addr())
	}
	return out
}

// Leases lists the address leases (GET /v1/ipam).
func (d *Daemon) Leases() []ipam.Lease { return d.ipam.List() }

// ensureLease makes sure the store leases pod its saved addresses, so a
// restart re-attaches it with them. A pod the store has no lease for —
// the first start with a store, a store moved away, a store that fell back
// one commit — has its addresses adopted, unless they are another pod's
// or no longer in the CIDRs.
func (d *Daemon) ensureLease(pod api.Pod) error {
	l, ok := d.ipam.Get(leaseKey(pod))
	if !ok {
		if _, err := d.ipam.Adopt(leaseKey(pod), pod.IPs); err != nil {
			return err
		}
		d.log.Warn("pod had no address lease; its addresses were adopted", "pod", pod.ID, "ips", pod.IPs)
		return nil
	}
	if !slices.Equal(l.IPs, pod.IPs) {
		return fmt.Errorf("pod %s has addresses %v but its lease has %v", pod.ID, pod.IPs, l.IPs)
	}
	return nil
}
