package main

import (
	"context"
	"fmt"
	"net/netip"
)

// kernelSubnet holds the kernel set-up's pods; it is private to their
// namespaces, so it cannot meet any address of the machine.
var kernelSubnet = netip.MustParsePrefix("10.253.1.0/24")

// setupKernel builds the kernel's two-pod set-up: a bridge br0 in a node
// namespace of its own (the root namespace is not touched) and two pod
// namespaces, each with an eth0 that is one end of a veth pair whose other
// end is a port of br0. Every namespace's removal is registered on cl, and
// removing them removes the devices.
func setupKernel(ctx context.Context, cl *cleanups, mtu int) (*variant, error) {
	node, _, err := addNetNS(ctx, cl, "k-node")
	if err != nil {
		return nil, err
	}
	steps := [][]string{
		{"-n", node, "link", "add", "br0", "type", "bridge"},
		{"-n", node, "link", "set", "br0", "mtu", fmt.Sprint(mtu), "up"},
	}
	for _, args := range steps {
		if err := ipCmd(ctx, args...); err != nil {
			return nil, err
		}
	}
	v := &variant{name: "kernel"}
	for i, p := range []*pod{&v.client, &v.server} {
		name := []string{"a", "b"}[i]
		ns, path, err := addNetNS(ctx, cl, "k-"+name)
		if err != nil {
			return nil, err
		}
		*p = pod{ns: ns, path: path, ifname: "eth0", ip: hostInSubnet(kernelSubnet, 2+i)}
		veth := "veth-" + name
		steps := [][]string{
			{"-n", node, "link", "add", veth, "mtu", fmt.Sprint(mtu), "type", "veth", "peer", "name", p.ifname, "mtu", fmt.Sprint(mtu), "netns", ns},
			{"-n", node, "link", "set", veth, "master", "br0", "up"},
			{"-n", ns, "addr", "add", p.ip.String(), "dev", p.ifname},
			{"-n", ns, "link", "set", p.ifname, "up"},
			{"-n", ns, "link", "set", "lo", "up"},
		}
		for _, args := range steps {
			if err := ipCmd(ctx, args...); err != nil {
				return nil, err
			}
		}
	}
	return v, nil
}

// hostInSubnet returns address n of subnet with the subnet's prefix length,
// e.g. hostInSubnet(10.253.1.0/24, 2) = 10.253.1.2/24.
func hostInSubnet(subnet netip.Prefix, n int) netip.Prefix {
	a := subnet.Masked().Addr().As4()
	a[3] += byte(n)
	return netip.PrefixFrom(netip.AddrFrom4(a), subnet.Bits())
}
