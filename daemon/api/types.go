package api

import (
	"net/netip"
	"time"

	vswitch "tapswitch/switch"
)

// The API's JSON types, shared by the server (package daemon) and the Go
// client.

// PodRequest asks for a pod attachment (POST /v1/pods).
type PodRequest struct {
	ID     string `json:"id"`
	NetNS  string `json:"netns"`
	IfName string `json:"ifname,omitempty"`
	// Offloads, if set, overrides the daemon's offload setting for this
	// pod's TAP.
	Offloads *bool `json:"offloads,omitempty"`
	// PodNamespace and PodName name the Kubernetes pod, as runtimes pass
	// them to CNI plugins (K8S_POD_NAMESPACE, K8S_POD_NAME; podman passes
	// its container name). Optional; recorded and shown, never used to
	// decide anything. Letters, digits, '_', '.' and '-'.
	PodNamespace string `json:"pod_namespace,omitempty"`
	PodName      string `json:"pod_name,omitempty"`
	// MAC, if set, is the pod interface's MAC (CNI runtimeConfig.mac);
	// by default it is derived from ID and IfName. It must be unicast
	// and not another port's.
	MAC *vswitch.MAC `json:"mac,omitempty"`
	// ContainerID and Network are the CNI attachment's container ID and
	// network name, set by the CNI plugin: a CNI GC of Network only ever
	// removes pods of that network. Recorded and shown.
	ContainerID string `json:"container_id,omitempty"`
	Network     string `json:"network,omitempty"`
	// Bandwidth, if set, limits the pod's traffic (CNI capability
	// "bandwidth", Kubernetes' ingress- and egress-bandwidth
	// annotations).
	Bandwidth *Bandwidth `json:"bandwidth,omitempty"`
}

// Bandwidth limits a pod's traffic, in CNI's units: rates in bits per
// second, bursts in bits; a rate needs its burst. Ingress (to the pod) is
// policed by the switch: frames over the rate are dropped. Egress (from
// the pod) is shaped by a tbf qdisc on the pod's interface, as the
// reference bandwidth plugin does.
type Bandwidth struct {
	IngressRate  uint64 `json:"ingress_rate,omitempty"`
	IngressBurst uint64 `json:"ingress_burst,omitempty"`
	EgressRate   uint64 `json:"egress_rate,omitempty"`
	EgressBurst  uint64 `json:"egress_burst,omitempty"`
}

// Pod is an attached pod.
type Pod struct {
	ID     string `json:"id"`
	NetNS  string `json:"netns"`
	IfName string `json:"ifname"`
	// PodNamespace and PodName are the request's, if it named them.
	PodNamespace string `json:"pod_namespace,omitempty"`
	PodName      string `json:"pod_name,omitempty"`
	// ContainerID and Network are the request's, if it named them.
	ContainerID string         `json:"container_id,omitempty"`
	Network     string         `json:"network,omitempty"`
	MAC         vswitch.MAC    `json:"mac"`
	IPs         []netip.Prefix `json:"ips"`
	Gateways    []netip.Addr   `json:"gateways"`
	// DNS are the pod's nameservers: the gateway addresses, when the
	// gateway forwards DNS.
	DNS []netip.Addr `json:"dns,omitempty"`
	// Bandwidth is the request's, if it set one.
	Bandwidth *Bandwidth     `json:"bandwidth,omitempty"`
	MTU       int            `json:"mtu"`
	Offloads  bool           `json:"offloads"`
	Queues    int            `json:"queues"`
	Port      string         `json:"port"`
	PortID    vswitch.PortID `json:"port_id"`
	Created   time.Time      `json:"created"`
}

// Stats is the answer of GET /v1/stats.
type Stats struct {
	Pods       int                 `json:"pods"`
	FDBEntries int                 `json:"fdb_entries"`
	Ports      []vswitch.PortStats `json:"ports"`
	// Egress is the daemon's mode, "route" or "proxy"; Router is set in
	// route mode.
	Egress string       `json:"egress"`
	Router *RouterStats `json:"router,omitempty"`
}

// RouterStats are the switch's router's counters (route mode).
type RouterStats struct {
	// ICMPSent counts the ICMP and ICMPv6 errors sent, by kind:
	// time_exceeded, frag_needed (packet too big for IPv6),
	// net_unreachable, host_unreachable.
	ICMPSent        map[string]uint64 `json:"icmp_sent"`
	ICMPRateLimited uint64            `json:"icmp_rate_limited"`
	NoRoute         uint64            `json:"no_route"`
	Fragments       uint64            `json:"fragments"`
	// HostFlows are the flows the node forwarded between two local pods,
	// whose replies return through it (a UDP flow counts twice: its
	// address pair is recorded for later IPv4 fragments);
	// HostFlowsEvicted the ones a full table dropped for new ones.
	HostFlows        int    `json:"host_flows"`
	HostFlowsEvicted uint64 `json:"host_flows_evicted"`
}

// Status is the answer of GET /v1/status: whether the daemon can attach
// another pod.
type Status struct {
	Pods  int    `json:"pods"`
	Pools []Pool `json:"pools"`
}

// Pool is one pod CIDR's addresses: Size usable by pods, Free of them
// still to lease.
type Pool struct {
	CIDR netip.Prefix `json:"cidr"`
	Size uint64       `json:"size"`
	Free uint64       `json:"free"`
}

// ErrorBody is the body of every error answer.
type ErrorBody struct {
	Error string `json:"error"`
}

// Node is a node of the pod network as a peers file lists it (GET
// /v1/node gives this node's own entry, tapswitchctl node -o json prints
// it): a static cluster's peers file is its nodes' entries in an array.
type Node struct {
	Name     string         `json:"name"`
	Address  netip.Addr     `json:"address"`
	VTEPMAC  vswitch.MAC    `json:"vtep_mac"`
	PodCIDRs []netip.Prefix `json:"pod_cidrs"`
}

// Peer is another node with the overlay's traffic to and from it (GET
// /v1/peers). LastSeen is when its last packet arrived (zero: never).
type Peer struct {
	Node
	TxFrames uint64    `json:"tx_frames"`
	TxBytes  uint64    `json:"tx_bytes"`
	RxFrames uint64    `json:"rx_frames"`
	RxBytes  uint64    `json:"rx_bytes"`
	LastSeen time.Time `json:"last_seen"`
}
