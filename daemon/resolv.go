package daemon

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"strings"
)

// DefaultResolvConf is where the upstream resolvers of the gateway's DNS
// forwarder come from when none are given.
const DefaultResolvConf = "/etc/resolv.conf"

// ReadResolvConf returns the nameservers of a resolv.conf(5) file, on port
// 53, in order. Scoped IPv6 addresses (fe80::1%eth0) keep their zone.
// Lines it does not know are skipped, as the C library does.
func ReadResolvConf(path string) ([]netip.AddrPort, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("resolv.conf: %w", err)
	}
	defer f.Close()
	var servers []netip.AddrPort
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 || fields[0] != "nameserver" {
			continue
		}
		a, err := netip.ParseAddr(fields[1])
		if err != nil {
			continue
		}
		servers = append(servers, netip.AddrPortFrom(a, 53))
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("resolv.conf %s: %w", path, err)
	}
	return servers, nil
}

// ParseDNSServers parses a comma-separated list of resolvers, each an
// address with an optional port (default 53): "10.0.0.10",
// "127.0.0.1:5353", "[fd00::10]:53".
func ParseDNSServers(list string) ([]netip.AddrPort, error) {
	var servers []netip.AddrPort
	for s := range strings.SplitSeq(list, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if a, err := netip.ParseAddr(s); err == nil {
			servers = append(servers, netip.AddrPortFrom(a, 53))
			continue
		}
		ap, err := netip.ParseAddrPort(s)
		if err != nil || ap.Port() == 0 {
			return nil, fmt.Errorf("dns server %q: want an address with an optional port, such as 10.0.0.10 or 127.0.0.1:5353", s)
		}
		servers = append(servers, ap)
	}
	return servers, nil
}
