package nodenet

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// ErrInvalidConfig is wrapped by every error Sync returns for a Config it
// refuses, before it touches anything. Retrying such a Sync cannot help.
var ErrInvalidConfig = errors.New("nodenet: invalid config")

// HostPort is one hostPort mapping: connections to Listen are DNATed to
// Target, a pod's address and port.
type HostPort struct {
	// Proto is "tcp" or "udp", lower case.
	Proto string
	// Listen is the node's address and port. An unspecified address
	// (0.0.0.0, ::) means every local address of its family, loopback
	// included for IPv4; an IPv4 loopback address (127.0.0.1) means only
	// connections the node itself opens to it. IPv6 loopback (::1) is
	// refused: Linux never routes a packet from ::1 off the node, so it
	// cannot be DNATed to a pod.
	Listen netip.AddrPort
	// Target is the pod's address, inside one of the pod CIDRs, and port.
	Target netip.AddrPort
}

// String returns the mapping as the rules' comments show it, such as
// "tcp 0.0.0.0:8080 to 10.244.0.5:80".
func (h HostPort) String() string {
	return fmt.Sprintf("%s %s to %s", h.Proto, h.Listen, h.Target)
}

// Config is everything the node's table holds. The zero value of each
// list means none.
type Config struct {
	// HostPort is the name of the host port device (tsw0): the only device
	// that gets net.ipv4.conf.<name>.route_localnet, and the one the guard
	// rules match.
	HostPort string
	// PodCIDRs are this node's pod CIDRs, at most one per family in
	// practice. Each must be inside a cluster CIDR of its family.
	PodCIDRs []netip.Prefix
	// ClusterCIDRs are every node's pod CIDRs together: pods' traffic to a
	// destination outside all of them (of the packet's family) is
	// masqueraded to the node's address.
	ClusterCIDRs []netip.Prefix
	// HostPorts are the hostPort mappings of this node's pods.
	HostPorts []HostPort
}

// validate returns nil or every problem of c joined, each wrapping
// ErrInvalidConfig.
func (c Config) validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, args...)...))
	}
	if msg := checkIfname(c.HostPort); msg != "" {
		bad("host port device name %q: %s", c.HostPort, msg)
	}
	for _, p := range c.ClusterCIDRs {
		if msg := checkPrefix(p); msg != "" {
			bad("cluster CIDR %s: %s", p, msg)
		}
	}
	for _, p := range c.PodCIDRs {
		if msg := checkPrefix(p); msg != "" {
			bad("pod CIDR %s: %s", p, msg)
		} else if !insideAny(c.ClusterCIDRs, p) {
			bad("pod CIDR %s is not inside any cluster CIDR", p)
		}
	}
	var valid []HostPort
	for _, h := range c.HostPorts {
		if msg := c.checkHostPort(h); msg != "" {
			bad("hostPort %s: %s", h, msg)
			continue
		}
		for _, prev := range valid {
			if overlap(prev, h) {
				bad("hostPort %s: listens where hostPort %s does", h, prev)
				break
			}
		}
		valid = append(valid, h)
	}
	return errors.Join(errs...)
}

// CheckHostPort says whether c can take h as one more hostPort: nil, or
// an error wrapping ErrInvalidConfig that says why not (h itself, or a
// hostPort of c listening where h would).
func (c Config) CheckHostPort(h HostPort) error {
	if msg := c.checkHostPort(h); msg != "" {
		return fmt.Errorf("%w: hostPort %s: %s", ErrInvalidConfig, h, msg)
	}
	for _, prev := range c.HostPorts {
		if overlap(prev, h) {
			return fmt.Errorf("%w: hostPort %s: listens where hostPort %s does", ErrInvalidConfig, h, prev)
		}
	}
	return nil
}

// checkHostPort returns what is wrong with h, or "".
func (c Config) checkHostPort(h HostPort) string {
	l, t := h.Listen.Addr(), h.Target.Addr()
	switch {
	case h.Proto != "tcp" && h.Proto != "udp":
		return fmt.Sprintf("unknown proto %q, want \"tcp\" or \"udp\"", h.Proto)
	case !l.IsValid():
		return "no listen address (0.0.0.0 or :: means every local address)"
	case !t.IsValid():
		return "no target address"
	case l.Zone() != "" || t.Zone() != "":
		return "addresses with a zone are not supported"
	case l.Is4In6() || t.Is4In6():
		return "IPv4-mapped IPv6 addresses are not supported, write them as IPv4"
	case h.Listen.Port() == 0 || h.Target.Port() == 0:
		return "port 0"
	case l.Is4() != t.Is4():
		return "listen and target addresses are of different families"
	case l == netip.IPv6Loopback():
		return "IPv6 loopback listen: Linux cannot DNAT ::1 to a non-loopback address"
	case l.IsMulticast():
		return "multicast listen address"
	case !containsAny(c.PodCIDRs, t):
		return "target is not inside a pod CIDR of this node"
	}
	return ""
}

// overlap reports whether a and b would DNAT the same connections: the
// same proto, port and family, and the same address or an unspecified one.
func overlap(a, b HostPort) bool {
	la, lb := a.Listen.Addr(), b.Listen.Addr()
	return a.Proto == b.Proto && a.Listen.Port() == b.Listen.Port() && la.Is4() == lb.Is4() &&
		(la == lb || la.IsUnspecified() || lb.IsUnspecified())
}

// needsRouteLocalnet reports whether any IPv4 hostPort is reachable on
// loopback (listen 127.x or 0.0.0.0): the output chain then DNATs packets
// from 127.0.0.1 out of the host port device, which Linux routes only with
// route_localnet on that device.
func (c Config) needsRouteLocalnet() bool {
	for _, h := range c.HostPorts {
		if l := h.Listen.Addr(); l.Is4() && (l.IsLoopback() || l.IsUnspecified()) {
			return true
		}
	}
	return false
}

// checkPrefix returns what is wrong with p, or "". Prefixes never carry a
// zone (netip.PrefixFrom drops it).
func checkPrefix(p netip.Prefix) string {
	switch {
	case !p.IsValid():
		return "not a valid prefix"
	case p.Addr().Is4In6():
		return "IPv4-mapped IPv6 prefix, write it as IPv4"
	case p != p.Masked():
		return fmt.Sprintf("host bits set (the network is %s)", p.Masked())
	}
	return ""
}

// insideAny reports whether p lies wholly inside one of outer.
func insideAny(outer []netip.Prefix, p netip.Prefix) bool {
	for _, o := range outer {
		if o.Bits() <= p.Bits() && o.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

// containsAny reports whether one of ps contains a.
func containsAny(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// checkIfname returns what makes name unusable as a Linux interface name
// (dev_valid_name in net/core/dev.c), or "". Names that pass need no
// escaping inside an nft string.
func checkIfname(name string) string {
	switch {
	case name == "":
		return "empty"
	case len(name) > 15: // IFNAMSIZ - 1, linux/if.h
		return "longer than 15 bytes"
	case name == "." || name == "..":
		return "not a device name"
	case strings.ContainsAny(name, "/:\"\\"):
		return `contains one of / : " \`
	}
	for _, r := range name {
		if r <= ' ' || r >= 0x7f {
			return "contains a space, control or non-ASCII character"
		}
	}
	return ""
}
