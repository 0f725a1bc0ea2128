package cni

import (
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"tapswitch/daemon/api"
)

// SupportedVersions are the cniVersions the plugin accepts and answers in.
// 0.3.x and 0.4.0 stay because containerd 1.6 and podman 4.3, still widely
// deployed, reject a 1.x result. 0.1.0 and 0.2.0 are left out: their result
// has a single IP per family and no interfaces, so it cannot describe the
// attachment.
var SupportedVersions = version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

// Result builds the CNI result of the pod's attachment in cniVersion: the
// pod's interface with its MAC and sandbox, one IP per pod address with the
// gateway of its family, a default route per family that has a gateway, and
// the pod's nameservers. An unsupported cniVersion gives a *types.Error with
// code 1 (incompatible CNI versions), as the spec asks.
func Result(pod api.Pod, cniVersion string) (types.Result, error) {
	supported := SupportedVersions.SupportedVersions()
	if !slices.Contains(supported, cniVersion) {
		return nil, types.NewError(types.ErrIncompatibleCNIVersion,
			"incompatible CNI versions",
			fmt.Sprintf("config is %q, plugin supports %v", cniVersion, supported))
	}

	iface := &types100.Interface{
		Name:    pod.IfName,
		Mac:     pod.MAC.String(),
		Sandbox: pod.NetNS,
	}
	// The interface's mtu is new in spec 1.1.0; older versions do not
	// define it.
	if cniVersion == "1.1.0" {
		iface.Mtu = pod.MTU
	}
	res := &types100.Result{
		CNIVersion: types100.ImplementedSpecVersion,
		Interfaces: []*types100.Interface{iface},
	}

	routed := map[bool]bool{} // keyed by Is4: the family has its default route
	for _, p := range pod.IPs {
		if !p.IsValid() {
			return nil, fmt.Errorf("cni: pod %s: invalid address %v", pod.ID, p)
		}
		addr := p.Addr().Unmap()
		ipc := &types100.IPConfig{
			Interface: types100.Int(0),
			Address:   net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(p.Bits(), addr.BitLen())},
		}
		gw, ok := gatewayFor(addr, pod.Gateways)
		if ok {
			ipc.Gateway = gw.AsSlice()
			if !routed[addr.Is4()] {
				routed[addr.Is4()] = true
				res.Routes = append(res.Routes, &types.Route{
					Dst: defaultDst(addr.Is4()),
					GW:  gw.AsSlice(),
				})
			}
		}
		res.IPs = append(res.IPs, ipc)
	}
	for _, ns := range pod.DNS {
		res.DNS.Nameservers = append(res.DNS.Nameservers, ns.Unmap().String())
	}

	out, err := res.GetAsVersion(cniVersion)
	if err != nil {
		return nil, fmt.Errorf("cni: convert result to %s: %w", cniVersion, err)
	}
	return out, nil
}

// gatewayFor returns the first gateway of addr's family.
func gatewayFor(addr netip.Addr, gateways []netip.Addr) (netip.Addr, bool) {
	for _, gw := range gateways {
		gw = gw.Unmap()
		if gw.IsValid() && gw.Is4() == addr.Is4() {
			return gw, true
		}
	}
	return netip.Addr{}, false
}

// defaultDst is 0.0.0.0/0 or ::/0.
func defaultDst(is4 bool) net.IPNet {
	if is4 {
		return net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
	}
	return net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
}
