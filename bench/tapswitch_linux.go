package main

import (
	"context"
	"net/netip"
	"os"

	"tapswitch/daemon"
)

// tapswitchSubnet is the tapswitch set-up's pod cidr (--pod-cidr): the
// daemon gives its first address to the gateway and its last usable one
// to the host port.
var tapswitchSubnet = netip.MustParsePrefix("10.253.2.0/24")

// setupTapswitch builds tapswitch's set-up: a namespace that plays the
// node, a tapswitchd of its own running inside it (so its host port tsw0
// and its egress sockets are the node's), two pod namespaces attached with
// tapswitchctl, and a world namespace behind a veth from the node. The
// first pod is also the one that goes out: to the world through the
// daemon's gateway, and to the node through tsw0. Every step's undo is
// registered on cl: detach the pods, stop the daemon, remove the
// namespaces and the temporary folder.
func setupTapswitch(ctx context.Context, cl *cleanups, opts options, mtu int) (*variant, error) {
	dir, err := newTempDir(cl)
	if err != nil {
		return nil, err
	}
	node, nodePath, err := addNodeNS(ctx, cl, "t-node")
	if err != nil {
		return nil, err
	}
	d, err := startDaemon(ctx, cl, opts.binDir, dir, node, tapswitchSubnet, mtu)
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
	// The host port's address is the daemon's choice; read it back.
	hostIP, err := linkAddr4(ctx, node, daemon.DefaultHostPort)
	if err != nil {
		return nil, err
	}
	v.outside = outside{
		pod:  v.client,
		node: pod{ns: node, path: nodePath, ifname: daemon.DefaultHostPort, ip: hostIP},
	}
	if v.outside.world, err = addWorld(ctx, cl, node, "t-world", tapswitchWorldSubnet, mtu); err != nil {
		return nil, err
	}
	return v, nil
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
