package tap

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"unicode"

	vswitch "tapswitch/switch"
)

// Sentinels for conditions callers branch on. Errors wrap them.
var (
	// ErrExists means Create found a device of that name in the netns.
	ErrExists = errors.New("device exists")
	// ErrNotFound means Open found no device of that name in the netns.
	ErrNotFound = errors.New("device not found")
)

// Config describes a TAP device inside a network namespace.
type Config struct {
	NetNS    string         // netns path, e.g. /var/run/netns/NAME or /proc/PID/ns/net (required)
	Name     string         // interface name inside the netns (default "eth0")
	PortName string         // name of the vswitch port in counters and logs (default Name)
	MAC      vswitch.MAC    // required, set on the device
	MTU      int            // default 1500
	Addrs    []netip.Prefix // addresses to assign, e.g. 10.244.0.2/24 (may be empty)
	// Gateways are the next hops of the default routes, at most one IPv4
	// and one IPv6. A route is added onlink when no address's prefix
	// holds its gateway.
	Gateways []netip.Addr
	// Queues is the number of receive queues (default 1). The device is
	// always multiqueue, so a later Open may attach a different number.
	Queues int
	// Offloads lets the kernel hand over GSO super-frames and frames with
	// checksums still to complete (TUN_F_CSUM, TSO4/6 and USO4/6 where the
	// kernel has them). The virtio-net header is there either way.
	Offloads bool
	// Egress, if set, shapes what the pod sends: Create puts a token
	// bucket filter (tbf) as the device's root qdisc inside the netns, as
	// the reference bandwidth plugin does for a container's egress. The
	// qdisc stays with the device across Open.
	Egress vswitch.Limit
	Logger *slog.Logger // nil discards
}

// Limits from the kernel: IFNAMSIZ (include/uapi/linux/if.h) less the
// terminating NUL, MAX_TAP_QUEUES (include/linux/if_tun.h), and the smallest
// IPv4 MTU (RFC 791).
const (
	maxNameLen = 15
	maxQueues  = 256
	minMTU     = 68
)

// withDefaults returns cfg with defaults filled in, or an error if it
// cannot describe a device. open is true for Open, which takes the MTU from
// the device when cfg.MTU is 0.
func (cfg Config) withDefaults(open bool) (Config, error) {
	if cfg.Name == "" {
		cfg.Name = "eth0"
	}
	if cfg.PortName == "" {
		cfg.PortName = cfg.Name
	}
	if cfg.MTU == 0 && !open {
		cfg.MTU = 1500
	}
	if cfg.Queues == 0 {
		cfg.Queues = 1
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if err := ValidName(cfg.Name); err != nil {
		return cfg, err
	}
	switch {
	case cfg.NetNS == "":
		return cfg, errors.New("tap: netns path required")
	case cfg.MAC.Zero():
		return cfg, fmt.Errorf("tap: %s: mac required", cfg.Name)
	case cfg.MAC.Multicast():
		return cfg, fmt.Errorf("tap: %s: mac %s is multicast", cfg.Name, cfg.MAC)
	case cfg.Queues < 1 || cfg.Queues > maxQueues:
		return cfg, fmt.Errorf("tap: %s: %d queues, want 1 to %d", cfg.Name, cfg.Queues, maxQueues)
	case cfg.MTU != 0 && (cfg.MTU < minMTU || cfg.MTU > maxMTU(cfg.Offloads)):
		return cfg, fmt.Errorf("tap: %s: mtu %d, want %d to %d", cfg.Name, cfg.MTU, minMTU, maxMTU(cfg.Offloads))
	}
	var v4, v6 int
	for _, gw := range cfg.Gateways {
		if !gw.IsValid() || gw.Is4In6() || gw.Zone() != "" {
			return cfg, fmt.Errorf("tap: %s: gateway %s: want a plain IPv4 or IPv6 address", cfg.Name, gw)
		}
		if gw.Is4() {
			v4++
		} else {
			v6++
		}
	}
	if v4 > 1 || v6 > 1 {
		return cfg, fmt.Errorf("tap: %s: gateways %v: want at most one IPv4 and one IPv6", cfg.Name, cfg.Gateways)
	}
	for _, a := range cfg.Addrs {
		if !a.IsValid() || a.Addr().Is4In6() || a.Addr().Zone() != "" {
			return cfg, fmt.Errorf("tap: %s: bad address %s", cfg.Name, a)
		}
	}
	return cfg, nil
}

// maxMTU is the largest MTU whose frames fit the read buffers with a byte to
// spare; a read that fills the whole buffer may be truncated and is dropped.
func maxMTU(offloads bool) int {
	return bufSize(offloads) - vswitch.Headroom - vswitch.EtherHdrLen - 1
}

// bufSize is the pool buffer size: GSO super-frames need the large class.
func bufSize(offloads bool) int {
	if offloads {
		return vswitch.LargeBufSize
	}
	return vswitch.SmallBufSize
}

// ValidName reports whether name can name a network device, by the
// kernel's dev_valid_name (net/core/dev.c) less ':', which marks an alias.
func ValidName(name string) error {
	switch {
	case name == "" || name == "." || name == "..":
		return fmt.Errorf("tap: invalid interface name %q", name)
	case len(name) > maxNameLen:
		return fmt.Errorf("tap: invalid interface name %q: longer than %d bytes", name, maxNameLen)
	case strings.ContainsFunc(name, func(r rune) bool {
		return r == '/' || r == ':' || r == 0 || unicode.IsSpace(r)
	}):
		return fmt.Errorf("tap: invalid interface name %q: contains '/', ':', NUL or white space", name)
	}
	return nil
}
