package main

import (
	"context"
	"fmt"
	"net/netip"
)

// The kernel set-ups' pod subnets are private to their namespaces, so they
// cannot meet any address of the machine: kernelSubnet holds the two pods
// of the pod-to-pod figures, kernelGatewaySubnet the pod of the egress and
// pod-to-node figures.
var (
	kernelSubnet        = netip.MustParsePrefix("10.253.1.0/24")
	kernelGatewaySubnet = netip.MustParsePrefix("10.253.3.0/24")
)

// setupKernel builds the kernel's two-pod set-up: a bridge br0 in a node
// namespace of its own (the root namespace is not touched) and two pod
// namespaces, each with an eth0 that is one end of a veth pair whose other
// end is a port of br0; and its way out (setupKernelOutside). Every
// namespace's removal is registered on cl, and removing them removes the
// devices.
func setupKernel(ctx context.Context, cl *cleanups, mtu int) (*variant, error) {
	node, _, err := addNetNS(ctx, cl, "k-node")
	if err != nil {
		return nil, err
	}
	if err := addBridge(ctx, node, netip.Prefix{}, mtu); err != nil {
		return nil, err
	}
	v := &variant{name: "kernel"}
	for i, p := range []*pod{&v.client, &v.server} {
		name := []string{"a", "b"}[i]
		if *p, err = addBridgedPod(ctx, cl, node, name, hostInSubnet(kernelSubnet, 2+i), netip.Addr{}, mtu); err != nil {
			return nil, err
		}
	}
	if v.outside, err = setupKernelOutside(ctx, cl, mtu); err != nil {
		return nil, err
	}
	return v, nil
}

// setupKernelOutside builds the kernel's way out of a pod network, the job
// tapswitch's gateway and host port do, in a second node namespace so the
// pod-to-pod bridge stays as it was: a bridge br0 holding the pod subnet's
// first address as the pods' gateway, one pod behind a veth with its
// default route through br0, a world namespace behind another veth, and
// between them routing (ip_forward) and source NAT (iptables MASQUERADE of
// the pod subnet out of the world veth), as a Kubernetes node with a
// bridge CNI does. The sysctl and the rule are set inside that node
// namespace only, never in the machine's root namespace.
func setupKernelOutside(ctx context.Context, cl *cleanups, mtu int) (outside, error) {
	var o outside
	node, nodePath, err := addNodeNS(ctx, cl, "k-gw")
	if err != nil {
		return o, err
	}
	gw := hostInSubnet(kernelGatewaySubnet, 1)
	if err := addBridge(ctx, node, gw, mtu); err != nil {
		return o, err
	}
	o.node = pod{ns: node, path: nodePath, ifname: "br0", ip: gw}
	if o.pod, err = addBridgedPod(ctx, cl, node, "c", hostInSubnet(kernelGatewaySubnet, 2), gw.Addr(), mtu); err != nil {
		return o, err
	}
	if o.world, err = addWorld(ctx, cl, node, "k-world", kernelWorldSubnet, mtu); err != nil {
		return o, err
	}
	for _, args := range [][]string{
		{"sysctl", "-q", "-w", "net.ipv4.ip_forward=1"},
		{"iptables", "-t", "nat", "-A", "POSTROUTING", "-s", kernelGatewaySubnet.String(), "-o", worldVeth, "-j", "MASQUERADE"},
	} {
		if out, err := nsCommand(ctx, node, args[0], args[1:]...).CombinedOutput(); err != nil {
			return o, fmt.Errorf("in %s: %v: %w: %s", node, args, err, out)
		}
	}
	return o, nil
}

// addBridge creates the bridge br0 inside the namespace node, with the
// address addr unless it is the zero prefix, and sets it up.
func addBridge(ctx context.Context, node string, addr netip.Prefix, mtu int) error {
	steps := [][]string{
		{"-n", node, "link", "add", "br0", "type", "bridge"},
		{"-n", node, "link", "set", "br0", "mtu", fmt.Sprint(mtu), "up"},
	}
	if addr.IsValid() {
		steps = append(steps, []string{"-n", node, "addr", "add", addr.String(), "dev", "br0"})
	}
	for _, args := range steps {
		if err := ipCmd(ctx, args...); err != nil {
			return err
		}
	}
	return nil
}

// addBridgedPod creates the pod namespace k-name with an eth0 holding ip,
// the end of a veth pair whose other end, veth-name, is a port of node's
// br0, and a default route via gw unless gw is the zero address.
func addBridgedPod(ctx context.Context, cl *cleanups, node, name string, ip netip.Prefix, gw netip.Addr, mtu int) (pod, error) {
	ns, path, err := addNetNS(ctx, cl, "k-"+name)
	if err != nil {
		return pod{}, err
	}
	p := pod{ns: ns, path: path, ifname: "eth0", ip: ip}
	veth := "veth-" + name
	steps := [][]string{
		{"-n", node, "link", "add", veth, "mtu", fmt.Sprint(mtu), "type", "veth", "peer", "name", p.ifname, "mtu", fmt.Sprint(mtu), "netns", ns},
		{"-n", node, "link", "set", veth, "master", "br0", "up"},
		{"-n", ns, "addr", "add", p.ip.String(), "dev", p.ifname},
		{"-n", ns, "link", "set", p.ifname, "up"},
		{"-n", ns, "link", "set", "lo", "up"},
	}
	if gw.IsValid() {
		steps = append(steps, []string{"-n", ns, "route", "add", "default", "via", gw.String()})
	}
	for _, args := range steps {
		if err := ipCmd(ctx, args...); err != nil {
			return pod{}, err
		}
	}
	return p, nil
}

// hostInSubnet returns address n of subnet with the subnet's prefix length,
// e.g. hostInSubnet(10.253.1.0/24, 2) = 10.253.1.2/24.
func hostInSubnet(subnet netip.Prefix, n int) netip.Prefix {
	a := subnet.Masked().Addr().As4()
	a[3] += byte(n)
	return netip.PrefixFrom(netip.AddrFrom4(a), subnet.Bits())
}
