package api

import (
	"net/netip"
	"time"
)

// The port forwards' JSON types, shared by the server and the Go client.

// Forward protocols.
const (
	ProtoTCP = "tcp"
	ProtoUDP = "udp"
)

// ForwardRequest asks for a port forward (POST /v1/forwards): the daemon
// listens on Listen, in its own network namespace, and connects each
// client to Port of the pod.
type ForwardRequest struct {
	// Listen is the host address and port, an IP literal: 127.0.0.1:8080,
	// [::1]:8080, 0.0.0.0:8080 (every IPv4 address of the host) or
	// [::]:8080 (every IPv6 address). Its family picks the pod's address.
	Listen string `json:"listen"`
	// Proto is "tcp" (the default when empty) or "udp".
	Proto string `json:"proto,omitempty"`
	Pod   string `json:"pod"`
	Port  int    `json:"port"`
}

// Forward is a port forward. Listen and Proto name it: one forward per
// pair.
type Forward struct {
	Listen netip.AddrPort `json:"listen"`
	Proto  string         `json:"proto"`
	Pod    string         `json:"pod"`
	Port   uint16         `json:"port"`
	// Target is the pod's address and Port, the address the daemon
	// connects to: the pod's IPv4 address for an IPv4 Listen, its IPv6
	// address for an IPv6 one.
	Target  netip.AddrPort `json:"target"`
	Created time.Time      `json:"created"`
	// Error, when set, says why the forward is not listening: a restarted
	// daemon could not listen on Listen again. The forward stays listed
	// until it is deleted; delete and add it to try again.
	Error string `json:"error,omitempty"`
	// Via says how the forward is carried out: "dnat", a rule in the
	// node's nftables table (route mode: the pod sees the client's
	// address), or "proxy", the daemon listens and connects into the pod
	// through the gateway (proxy mode: the pod sees the gateway's).
	Via string `json:"via,omitempty"`
}

// The values of Forward.Via.
const (
	ViaDNAT  = "dnat"
	ViaProxy = "proxy"
)
