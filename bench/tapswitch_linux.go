package main

import (
	"context"
	"net/netip"
	"os"

	"tapswitch/daemon"
)

// tapswitchSubnet is the tapswitch set-up's pod cidr (--pod-cidr): the
// daemon gives its first address to the gateway and its last usable one
// to the host port. proxySubnet is the tapswitch-proxy set-up's.
var (
	tapswitchSubnet = netip.MustParsePrefix("10.253.2.0/24")
	proxySubnet     = netip.MustParsePrefix("10.253.6.0/24")
)

// proxyVariant names the set-up of a daemon in proxy mode, in the table
// and in the results' variants.
const proxyVariant = "tapswitch-proxy"

// setupTapswitch builds tapswitch's set-up: a namespace that plays the
// node, a tapswitchd of its own in route mode (--egress route, the
// default) running inside it, so its host port tsw0, its forwarding and
// its nftables table are the node's, two pod namespaces attached with
// tapswitchctl, and a world namespace behind a veth from the node. The
// first pod is also the one that goes out: to the world and to the node
// through tsw0. Every step's undo is registered on cl: detach the pods,
// stop the daemon, remove the namespaces and the temporary folder.
func setupTapswitch(ctx context.Context, cl *cleanups, opts options, mtu int) (*variant, error) {
	dir, err := newTempDir(cl)
	if err != nil {
		return nil, err
	}
	node, nodePath, err := addNodeNS(ctx, cl, "t-node")
	if err != nil {
		return nil, err
	}
	d, err := startDaemon(ctx, cl, opts.binDir, dir, node, tapswitchSubnet, mtu, "--egress", "route")
	if err != nil {
		return nil, err
	}
	v := &variant{name: "tapswitch", switchPID: d.pid(), daemon: d}
	for i, p := range []*pod{&v.client, &v.server} {
		name := []string{"a", "b"}[i]
		ns, path, err := addNetNS(ctx, cl, "t-"+name)
		if err != nil {
			return nil, err
		}
		ap, err := d.addPod(ctx, cl, nsPrefix()+name, path)
		if err != nil {
			return nil, err
		}
		*p = pod{ns: ns, path: path, ifname: ap.IfName, ip: ap.IPs[0]}
		v.attached = append(v.attached, ap)
	}
	v.outside = outside{pod: v.client}
	if v.outside.node, err = hostPort(ctx, node, nodePath); err != nil {
		return nil, err
	}
	if v.outside.world, err = addWorld(ctx, cl, node, "t-world", tapswitchWorldSubnet, mtu); err != nil {
		return nil, err
	}
	return v, nil
}

// setupTapswitchProxy builds the tapswitch-proxy set-up: like
// setupTapswitch, but its own node namespace runs a second tapswitchd
// with --egress proxy, whose gateway ends the pod's TCP and UDP and
// carries them on from sockets of the node; the node forwards nothing. It
// takes only the figures of the way out, so it has one pod, which is both
// the variant's client and its outside pod, and no server.
func setupTapswitchProxy(ctx context.Context, cl *cleanups, opts options, mtu int) (*variant, error) {
	dir, err := newTempDir(cl)
	if err != nil {
		return nil, err
	}
	node, nodePath, err := addNodeNS(ctx, cl, "p-node")
	if err != nil {
		return nil, err
	}
	d, err := startDaemon(ctx, cl, opts.binDir, dir, node, proxySubnet, mtu, "--egress", "proxy")
	if err != nil {
		return nil, err
	}
	v := &variant{name: proxyVariant, switchPID: d.pid(), daemon: d, outsideOnly: true}
	ns, path, err := addNetNS(ctx, cl, "p-a")
	if err != nil {
		return nil, err
	}
	ap, err := d.addPod(ctx, cl, nsPrefix()+"p-a", path)
	if err != nil {
		return nil, err
	}
	v.client = pod{ns: ns, path: path, ifname: ap.IfName, ip: ap.IPs[0]}
	v.attached = append(v.attached, ap)
	v.outside = outside{pod: v.client}
	if v.outside.node, err = hostPort(ctx, node, nodePath); err != nil {
		return nil, err
	}
	if v.outside.world, err = addWorld(ctx, cl, node, "p-world", proxyWorldSubnet, mtu); err != nil {
		return nil, err
	}
	return v, nil
}

// hostPort returns the daemon's host port tsw0 in the namespace node (at
// nodePath), with the address the daemon gave it.
func hostPort(ctx context.Context, node, nodePath string) (pod, error) {
	ip, err := linkAddr4(ctx, node, daemon.DefaultHostPort)
	if err != nil {
		return pod{}, err
	}
	return pod{ns: node, path: nodePath, ifname: daemon.DefaultHostPort, ip: ip}, nil
}

// newTempDir makes a private temporary folder and registers its removal.
func newTempDir(cl *cleanups) (string, error) {
	dir, err := os.MkdirTemp("", nsPrefix())
	if err != nil {
		return "", err
	}
	cl.add("folder "+dir, func() error { return os.RemoveAll(dir) })
	return dir, nil
}
