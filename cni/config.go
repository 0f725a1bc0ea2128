package cni

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"tapswitch/daemon/api"
	vswitch "tapswitch/switch"
)

// NetConf is the plugin's configuration, one entry of a conflist's
// "plugins":
//
//	{"type": "tapswitch", "socket": "/run/tapswitch/tapswitchd.sock",
//	 "capabilities": {"portMappings": true, "mac": true}}
//
// There is no "ipam" section: the daemon hands out the addresses.
type NetConf struct {
	types.PluginConf
	// Socket is tapswitchd's API socket (default api.DefaultSocket).
	Socket        string        `json:"socket,omitempty"`
	RuntimeConfig RuntimeConfig `json:"runtimeConfig,omitempty"`
}

// RuntimeConfig is what the runtime passes for the capabilities the
// conflist enables.
type RuntimeConfig struct {
	// PortMappings (capability "portMappings") become port forwards
	// through the daemon's netstack.
	PortMappings []PortMapping `json:"portMappings,omitempty"`
	// MAC (capability "mac") is the pod interface's MAC.
	MAC string `json:"mac,omitempty"`
	// Bandwidth (capability "bandwidth") limits the pod's traffic, as
	// kubelet passes its ingress- and egress-bandwidth annotations. The
	// reference bandwidth plugin cannot do it for a TAP (it shapes the
	// host end of a veth pair); the daemon does.
	Bandwidth *BandwidthEntry `json:"bandwidth,omitempty"`
}

// BandwidthEntry is runtimeConfig.bandwidth: rates in bits per second,
// bursts in bits, 0 for no limit.
type BandwidthEntry struct {
	IngressRate  uint64 `json:"ingressRate"`
	IngressBurst uint64 `json:"ingressBurst"`
	EgressRate   uint64 `json:"egressRate"`
	EgressBurst  uint64 `json:"egressBurst"`
}

// request is the daemon's form of the entry; nil when it limits nothing.
func (b *BandwidthEntry) request() *api.Bandwidth {
	if b == nil || *b == (BandwidthEntry{}) {
		return nil
	}
	return &api.Bandwidth{IngressRate: b.IngressRate, IngressBurst: b.IngressBurst, EgressRate: b.EgressRate, EgressBurst: b.EgressBurst}
}

// PortMapping is one entry of runtimeConfig.portMappings, as kubelet
// passes a container's hostPort.
type PortMapping struct {
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol,omitempty"`
	HostIP        string `json:"hostIP,omitempty"`
}

// parseConfig decodes the plugin's configuration from stdin and, when there
// is one, its prevResult.
func parseConfig(stdin []byte) (*NetConf, error) {
	conf := &NetConf{}
	if err := json.Unmarshal(stdin, conf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "cannot decode the network configuration", err.Error())
	}
	if conf.Name == "" {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "invalid network configuration", `"name" is missing`)
	}
	if conf.Socket == "" {
		conf.Socket = api.DefaultSocket
	}
	if !filepath.IsAbs(conf.Socket) {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "invalid network configuration",
			fmt.Sprintf(`"socket" %q: want an absolute path such as %s`, conf.Socket, api.DefaultSocket))
	}
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "cannot decode prevResult", err.Error())
	}
	return conf, nil
}

// k8sArgs are the CNI_ARGS keys runtimes send for Kubernetes pods. Other
// keys are refused unless CNI_ARGS has IgnoreUnknown=1, which every
// runtime sends along with these.
type k8sArgs struct {
	types.CommonArgs
	K8S_POD_NAMESPACE          types.UnmarshallableString
	K8S_POD_NAME               types.UnmarshallableString
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString
	K8S_POD_UID                types.UnmarshallableString
	// MAC is podman's --mac-address; runtimeConfig.mac wins over it.
	MAC types.UnmarshallableString
}

// parseArgs decodes CNI_ARGS.
func parseArgs(s string) (k8sArgs, error) {
	var a k8sArgs
	if err := types.LoadArgs(s, &a); err != nil {
		return k8sArgs{}, types.NewError(types.ErrInvalidEnvironmentVariables, "invalid CNI_ARGS", err.Error())
	}
	return a, nil
}

// parseMAC checks runtimeConfig.mac: a unicast Ethernet address.
func parseMAC(s string) (*vswitch.MAC, error) {
	if s == "" {
		return nil, nil
	}
	hw, err := net.ParseMAC(s)
	var m vswitch.MAC
	if err == nil && len(hw) != len(m) {
		err = fmt.Errorf("%d bytes, want 6", len(hw))
	}
	if err == nil {
		copy(m[:], hw)
		if m.Zero() || m.Multicast() {
			err = fmt.Errorf("want a unicast address")
		}
	}
	if err != nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "invalid runtimeConfig.mac", fmt.Sprintf("%q: %v", s, err))
	}
	return &m, nil
}

// forwardRequests turns port mappings into the daemon's port forwards for
// the pod: an empty hostIP listens on every address of each family the
// pod has (0.0.0.0 and [::]), as the reference portmap plugin does.
func forwardRequests(podID string, mappings []PortMapping, podIPs []netip.Prefix) ([]api.ForwardRequest, error) {
	has := map[bool]bool{} // keyed by Is4
	for _, p := range podIPs {
		has[p.Addr().Unmap().Is4()] = true
	}
	var out []api.ForwardRequest
	for _, m := range mappings {
		proto := strings.ToLower(m.Protocol)
		if proto == "" {
			proto = api.ProtoTCP
		}
		bad := func(why string) error {
			return types.NewError(types.ErrInvalidNetworkConfig, "invalid runtimeConfig.portMappings",
				fmt.Sprintf("%+v: %s", m, why))
		}
		switch {
		case proto != api.ProtoTCP && proto != api.ProtoUDP:
			return nil, bad(fmt.Sprintf("protocol %q: tapswitch forwards tcp and udp", m.Protocol))
		case m.HostPort < 1 || m.HostPort > 65535:
			return nil, bad("hostPort must be 1 to 65535")
		case m.ContainerPort < 1 || m.ContainerPort > 65535:
			return nil, bad("containerPort must be 1 to 65535")
		}
		var hosts []netip.Addr
		if m.HostIP == "" {
			if has[true] {
				hosts = append(hosts, netip.IPv4Unspecified())
			}
			if has[false] {
				hosts = append(hosts, netip.IPv6Unspecified())
			}
		} else {
			ip, err := netip.ParseAddr(m.HostIP)
			if err != nil || ip.Zone() != "" {
				return nil, bad("hostIP is not an IP address")
			}
			ip = ip.Unmap()
			if !has[ip.Is4()] {
				return nil, bad("the pod has no address of hostIP's family")
			}
			hosts = append(hosts, ip)
		}
		for _, h := range hosts {
			out = append(out, api.ForwardRequest{
				Listen: netip.AddrPortFrom(h, uint16(m.HostPort)).String(),
				Proto:  proto,
				Pod:    podID,
				Port:   m.ContainerPort,
			})
		}
	}
	return out, nil
}

// notIDChar reports the characters a pod ID may not hold: the CNI spec's
// container ID characters are letters, digits, '_', '.' and '-'.
func notIDChar(r rune) bool {
	return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '.' || r == '-')
}

// maxIDLen is the daemon's bound on a pod ID.
const maxIDLen = 253

// PodID is the daemon's pod ID for the attachment (containerID, ifname):
// "CONTAINERID.IFNAME", or a hash of the two when that is too long or the
// interface name has characters a pod ID may not (Linux allows "net@1").
// The pod also records both, so a collision is detected, never acted on.
func PodID(containerID, ifname string) string {
	id := containerID + "." + ifname
	if len(id) <= maxIDLen && !strings.ContainsFunc(id, notIDChar) {
		return id
	}
	sum := sha256.Sum256([]byte(containerID + "/" + ifname))
	return "cni-" + hex.EncodeToString(sum[:20])
}
