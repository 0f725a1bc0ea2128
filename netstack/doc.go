// Package netstack attaches a gVisor network stack to the switch as one more
// vswitch.Port: the pods' gateway, their host-side L3. It answers ARP, IPv6
// neighbour discovery and ICMP/ICMPv6 echo for the gateway addresses, sends
// IPv6 router advertisements (ra.go), forwards DNS on port 53 to upstream
// resolvers (dns.go), terminates pods' TCP and UDP to addresses outside the
// pod network and re-originates them from host sockets (egress*.go), and
// lets the daemon dial into pods for port forwards (dial.go).
//
// Model. A Port owns one gVisor stack with one NIC. The NIC's link endpoint
// (endpoint) carries whole Ethernet frames and is wrapped in gVisor's
// ethernet endpoint, which adds and strips the 14-byte header. The NIC is
// promiscuous: it takes packets for any destination, which is how egress
// flows reach the forwarders. WriteBatch first drops unicast frames the
// switch flooded for another MAC, so a pod's traffic to another pod is
// never terminated here.
//
//   - Switch → stack: WriteBatch copies each frame into a new PacketBuffer,
//     delivers it into the stack on the caller's goroutine, releases the
//     PacketBuffer and the frame. TCP super-frames from pods with offloads
//     go in whole (gVisor's TCP takes any segment its window allows), with
//     checksums trusted as a veth would. Delivery takes the stack's locks
//     and runs its input processing, so it is short but not wait-free: the
//     Port reports NonBlockingWrite false and the switch calls it from the
//     port's writer goroutine behind its bounded egress queue.
//   - Stack → switch: the stack's send path (any goroutine: the WriteBatch
//     caller for replies, gVisor's timers and TCP processors, the egress
//     and DNS goroutines) copies each packet into a pooled vswitch.Frame
//     and puts it on one bounded queue without waiting. A full queue drops
//     the frame and counts it. TCP leaves as GSO super-frames with partial
//     checksums (host GSO); the switch segments them only for ports
//     without GSO. ReadBatch blocks on that queue until a frame is there or
//     Close.
//
// Goroutines: gVisor's protocols start theirs (TCP processors, timers). The
// Port's own — the egress flows' copy loops, the DNS listeners and queries,
// the router advertisement loop — run in Port.flows and end with Port.ctx.
// Close cancels ctx, destroys the stack and waits for gVisor's goroutines
// and for its timer callbacks still running (stackClock, port.go: one may
// hold a packet it is about to send), waits for flows, and releases the
// frames still queued.
//
// What is dropped, and counted (Drops, EgressStats, DNSStats): frames the
// stack cannot take or the queue cannot hold, egress flows beyond their
// limits, malformed DNS queries and queries beyond the limit.
//
// gVisor types stay inside this package: callers see vswitch frames, netip
// addresses, net.Conn and errors.
package netstack
