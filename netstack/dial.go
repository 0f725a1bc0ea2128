package netstack

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
)

// DialTCP connects from the gateway to dst, a pod's address and port, and
// returns the connection as a net.Conn with CloseWrite. The pod sees the
// gateway's address as the client. It is how port forwards reach a pod.
func (p *Port) DialTCP(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
	full, proto, err := p.podAddress(dst)
	if err != nil {
		return nil, err
	}
	c, err := gonet.DialContextTCP(ctx, p.stack, full, proto)
	if err != nil {
		return nil, fmt.Errorf("netstack: dial tcp %s: %w", dst, err)
	}
	return c, nil
}

// DialUDP returns a UDP socket of the gateway connected to dst, a pod's
// address and port.
func (p *Port) DialUDP(dst netip.AddrPort) (net.Conn, error) {
	full, proto, err := p.podAddress(dst)
	if err != nil {
		return nil, err
	}
	c, err := gonet.DialUDP(p.stack, nil, &full, proto)
	if err != nil {
		return nil, fmt.Errorf("netstack: dial udp %s: %w", dst, err)
	}
	return c, nil
}

// podAddress checks that dst is in the pod network and converts it.
func (p *Port) podAddress(dst netip.AddrPort) (tcpip.FullAddress, tcpip.NetworkProtocolNumber, error) {
	if !dst.IsValid() || dst.Port() == 0 || !p.inPodNetwork(dst.Addr()) {
		return tcpip.FullAddress{}, 0, fmt.Errorf("netstack: %s is not a pod address and port", dst)
	}
	return fullAddress(dst.Addr(), dst.Port()), netProto(dst.Addr()), nil
}
