package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// Config describes the ranges.
type Config struct {
	V4      netip.Prefix // required, IPv4, masked
	V6      netip.Prefix // optional (zero value = IPv4 only), IPv6, masked
	Reserve []Range      // extra addresses never handed out; each lies inside V4 or V6
}

// Range is an inclusive range of addresses of one family; First == Last
// for one address.
type Range struct{ First, Last netip.Addr }

// String formats r as ParseReserve reads it: "a" or "a-b".
func (r Range) String() string {
	if r.First == r.Last {
		return r.First.String()
	}
	return r.First.String() + "-" + r.Last.String()
}

// Contains reports whether a lies in r.
func (r Range) Contains(a netip.Addr) bool {
	return a.BitLen() == r.First.BitLen() && !a.Less(r.First) && !r.Last.Less(a)
}

// valid reports why r is not a range of one family, or nil.
func (r Range) valid() error {
	switch {
	case !r.First.IsValid() || !r.Last.IsValid():
		return errors.New("invalid address")
	case r.First.Zone() != "" || r.Last.Zone() != "":
		return errors.New("addresses with a zone are not allowed")
	case r.First.BitLen() != r.Last.BitLen():
		return errors.New("mixes IPv4 and IPv6")
	case r.Last.Less(r.First):
		return errors.New("last address is before first")
	}
	return nil
}

// inside reports whether all of r lies in p.
func (r Range) inside(p netip.Prefix) bool {
	return p.IsValid() && p.Contains(r.First) && p.Contains(r.Last)
}

// ParseReserve parses the --reserve flag: comma-separated items, each an
// address ("10.244.0.10"), a CIDR ("10.244.0.16/28") or a range
// ("10.244.0.20-10.244.0.29"). Spaces around items are allowed; an empty
// string means none. Whether the ranges lie inside the pod CIDRs is checked
// by New, which knows them.
func ParseReserve(s string) ([]Range, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var out []Range
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		r, err := parseReserveItem(item)
		if err != nil {
			return nil, fmt.Errorf("ipam: reserve %q: %w", item, err)
		}
		out = append(out, r)
	}
	return out, nil
}

func parseReserveItem(item string) (Range, error) {
	if item == "" {
		return Range{}, errors.New("empty item")
	}
	var r Range
	switch {
	case strings.Contains(item, "/"):
		p, err := netip.ParsePrefix(item)
		if err != nil {
			return Range{}, err
		}
		if p != p.Masked() {
			return Range{}, fmt.Errorf("cidr has host bits set (did you mean %s?)", p.Masked())
		}
		r = Range{First: p.Addr(), Last: lastAddr(p)}
	case strings.Contains(item, "-"):
		// IPv6 addresses never contain '-', so the first one splits.
		first, last, _ := strings.Cut(item, "-")
		a, err := netip.ParseAddr(strings.TrimSpace(first))
		if err != nil {
			return Range{}, err
		}
		b, err := netip.ParseAddr(strings.TrimSpace(last))
		if err != nil {
			return Range{}, err
		}
		r = Range{First: a, Last: b}
	default:
		a, err := netip.ParseAddr(item)
		if err != nil {
			return Range{}, err
		}
		r = Range{First: a, Last: a}
	}
	if err := r.valid(); err != nil {
		return Range{}, err
	}
	return r, nil
}

// Validate checks cfg as New does, so flags can be checked before the
// store is opened.
func (cfg Config) Validate() error {
	if err := validCIDR(cfg.V4, true); err != nil {
		return fmt.Errorf("ipam: %w", err)
	}
	if cfg.V6.IsValid() {
		if err := validCIDR(cfg.V6, false); err != nil {
			return fmt.Errorf("ipam: %w", err)
		}
	}
	for _, r := range cfg.Reserve {
		if err := r.valid(); err != nil {
			return fmt.Errorf("ipam: reserve %s: %w", r, err)
		}
		if !r.inside(cfg.V4) && !r.inside(cfg.V6) {
			return fmt.Errorf("ipam: reserve %s is not inside %s", r, cidrs(cfg.V4, cfg.V6))
		}
	}
	return nil
}

// validCIDR checks one pod CIDR. Both families need room for the gateway,
// the host port and some pods: /29 in IPv4 (network, gateway, 4 pods,
// host, broadcast) and /125 in IPv6 (network, gateway, 5 pods, host).
func validCIDR(p netip.Prefix, want4 bool) error {
	name, minBits := "IPv6", 125
	if want4 {
		name, minBits = "IPv4", 29
	}
	switch {
	case !p.IsValid() && want4:
		return errors.New("missing IPv4 pod cidr")
	case !p.IsValid():
		return errors.New("invalid IPv6 pod cidr")
	case p.Addr().Is4() != want4 || p.Addr().Is4In6():
		return fmt.Errorf("cidr %s is not %s", p, name)
	case p != p.Masked():
		return fmt.Errorf("cidr %s has host bits set (did you mean %s?)", p, p.Masked())
	case p.Bits() > minBits:
		return fmt.Errorf("cidr %s is too small: need /%d or larger for gateway, host port and pods", p, minBits)
	}
	return nil
}

// cidrs names the configured CIDRs in messages.
func cidrs(v4, v6 netip.Prefix) string {
	if !v6.IsValid() {
		return v4.String()
	}
	return v4.String() + " and " + v6.String()
}
