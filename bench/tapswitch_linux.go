package main

import (
	"context"
	"net/netip"
	"os"
)

// tapswitchSubnet is the tapswitch set-up's pod cidr (--pod-cidr); the
// daemon's gateway and host port addresses come from it but the
// benchmark sends only between the two pods.
var tapswitchSubnet = netip.MustParsePrefix("10.253.2.0/24")

// setupTapswitch builds tapswitch's two-pod set-up: a tapswitchd of its
// own and two pod namespaces attached with tapswitchctl. Every step's undo
// is registered on cl: detach the pods, stop the daemon, remove the
// namespaces and the temporary folder.
func setupTapswitch(ctx context.Context, cl *cleanups, opts options, mtu int) (*variant, error) {
	dir, err := newTempDir(cl)
	if err != nil {
		return nil, err
	}
	d, err := startDaemon(ctx, cl, opts.binDir, dir, tapswitchSubnet, mtu)
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
