package daemon

import (
	"errors"
	"fmt"
	"net/netip"
	"os"

	"github.com/vishvananda/netns"

	"tapswitch/netstack"
	vswitch "tapswitch/switch"
	"tapswitch/tap"
)

// DefaultHostPort is the name of the host port, the TAP in the daemon's own
// namespace through which the node reaches the pods without NAT.
const DefaultHostPort = "tsw0"

// gatewayMAC and hostPortMAC derive the MACs of the two ports the daemon
// owns, stably, as pods' MACs are derived (podMAC).
func gatewayMAC() vswitch.MAC  { return podMAC("tapswitch", "gateway") }
func hostPortMAC() vswitch.MAC { return podMAC("tapswitch", "host") }

// startGateway creates the netstack gateway with the first usable address
// of each pod CIDR, attaches it to the switch and binds its addresses for
// the ARP responder.
func (d *Daemon) startGateway() error {
	addrs := []netip.Prefix{netip.PrefixFrom(d.v4.gateway, d.v4.prefix.Bits())}
	if d.v6 != nil {
		addrs = append(addrs, netip.PrefixFrom(d.v6.gateway, d.v6.prefix.Bits()))
	}
	gw, err := netstack.New(netstack.Options{
		MAC:            gatewayMAC(),
		MTU:            d.opts.MTU,
		Addrs:          addrs,
		DialTimeout:    d.opts.DialTimeout,
		UDPIdleTimeout: d.opts.UDPIdleTimeout,
		DNS:            d.opts.DNS,
		Logger:         d.log,
	})
	if err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	id, err := d.sw.AddPort(gw)
	if err != nil {
		gw.Close()
		return fmt.Errorf("gateway: %w", err)
	}
	d.gw = gw
	for _, a := range addrs {
		if err := d.sw.Bind(vswitch.Binding{IP: a.Addr(), MAC: gatewayMAC(), Port: id}); err != nil {
			return fmt.Errorf("gateway: %w", err)
		}
	}
	return nil
}

// ensureHostPort opens the host port, the TAP named d.opts.HostPort in the
// daemon's own namespace, creating it with the last usable address of each
// pod CIDR if it does not exist (it persists across restarts like the
// pods' TAPs), and attaches it to the switch. The addresses' prefixes give
// the node its routes to the pods.
func (d *Daemon) ensureHostPort() error {
	if d.opts.HostPort == "" {
		return nil
	}
	// The daemon's namespace by a path that stays right whichever thread
	// opens it: an fd of this process, taken before any thread moved.
	self, err := netns.Get()
	if err != nil {
		return fmt.Errorf("host port: own netns: %w", err)
	}
	defer self.Close()
	nsPath := fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), int(self))
	addrs := []netip.Prefix{netip.PrefixFrom(d.v4.host, d.v4.prefix.Bits())}
	if d.v6 != nil {
		addrs = append(addrs, netip.PrefixFrom(d.v6.host, d.v6.prefix.Bits()))
	}
	cfg := tap.Config{
		NetNS: nsPath, Name: d.opts.HostPort, PortName: d.opts.HostPort, MAC: hostPortMAC(),
		MTU: d.opts.MTU, Addrs: addrs, Offloads: !d.opts.NoOffloads, Queues: d.opts.Queues,
		Logger: d.log.With("port", d.opts.HostPort),
	}
	port, err := tap.Open(cfg)
	if errors.Is(err, tap.ErrNotFound) {
		port, err = tap.Create(cfg)
	}
	if err != nil {
		return fmt.Errorf("host port: %w", err)
	}
	id, err := d.sw.AddPort(port)
	if err != nil {
		port.Close()
		return fmt.Errorf("host port: %w", err)
	}
	for _, a := range addrs {
		if err := d.sw.Bind(vswitch.Binding{IP: a.Addr(), MAC: hostPortMAC(), Port: id}); err != nil {
			return fmt.Errorf("host port: %w", err)
		}
	}
	d.log.Info("host port attached", "ifname", d.opts.HostPort, "addrs", addrs)
	return nil
}
