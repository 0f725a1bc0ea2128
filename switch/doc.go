// Package vswitch is tapswitch's Ethernet switch: ports, the forwarding
// database, forwarding and flooding, the ARP responder and counters. It owns
// no I/O and makes no syscalls; TAP devices, the gateway netstack and
// tunnels are Ports that other packages provide.
//
// Model. Each attached port has one reader goroutine per receive queue and
// one writer goroutine. A reader reads a batch from its port and forwards
// it itself: it drops bad frames (runts, oversized frames, multicast or
// zero source MACs) and counts them on the port, learns the source MAC,
// answers ARP requests for addresses it knows, and puts each frame on the
// bounded egress queue of its destination: the one port the FDB names for a
// known unicast address, every other port for broadcast, multicast and
// unknown unicast. A frame never goes back out of the port it came in on.
//
// Routing. With SetRouter the switch is also the pods' router: IP frames
// sent to the gateway's MAC for an address outside the gateway's own are
// routed by the reader that read them — next hop from the address
// bindings or the longest matching Route, MACs rewritten, TTL or hop
// limit decremented, GSO super-frames kept whole — and what a router
// cannot forward is answered with the ICMP or ICMPv6 error a router sends
// (router.go, icmp.go, fragment.go). Flows the node's kernel forwarded
// between two local pods return through it (hostflows.go).
//
// Invariants. Nothing blocks a reader: a full egress queue drops the frame
// and counts it on that port. No lock is held across I/O. The FDB, the port
// table and the ARP bindings are read without a write lock; they are
// written only when a MAC appears or moves, or a port or pod comes or goes.
// Unicast frames move without copying; flooded frames are copied once per
// destination but the last. Frames carry their offload metadata; GSO
// super-frames go only to ports whose Caps accept them.
package vswitch
