package daemon

import (
	"fmt"

	"tapswitch/netstack"
	vswitch "tapswitch/switch"
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
	addrs := d.gatewayAddrs()
	gw, err := netstack.New(netstack.Options{
		MAC:            gatewayMAC(),
		MTU:            d.opts.MTU,
		Addrs:          addrs,
		DialTimeout:    d.opts.DialTimeout,
		UDPIdleTimeout: d.opts.UDPIdleTimeout,
		DNS:            d.opts.DNS,
		Routed:         d.opts.Egress == EgressRoute,
		// The host port's addresses are never egress sources, even with
		// no host port: the node's own traffic must not loop through.
		HostAddrs: d.hostAddrs(),
		Logger:    d.log,
	})
	if err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	id, err := d.sw.AddPort(gw)
	if err != nil {
		gw.Close()
		return fmt.Errorf("gateway: %w", err)
	}
	d.gw, d.gwPortID = gw, id
	for _, a := range addrs {
		if err := d.sw.Bind(vswitch.Binding{IP: a.Addr(), MAC: gatewayMAC(), Port: id}); err != nil {
			return fmt.Errorf("gateway: %w", err)
		}
	}
	return nil
}
