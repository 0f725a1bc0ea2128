// Package netstack attaches a gVisor network stack to the switch as one more
// vswitch.Port: the pods' gateway. This first slice answers ARP, IPv6
// neighbour discovery and ICMP/ICMPv6 echo for the gateway addresses; TCP
// and UDP are registered for the forwarders that come later.
//
// Model. A Port owns one gVisor stack with one NIC. The NIC's link endpoint
// (endpoint) is an Ethernet-less raw endpoint wrapped in gVisor's ethernet
// endpoint, which adds and strips the 14-byte header.
//
//   - Switch → stack: WriteBatch copies each frame into a new PacketBuffer,
//     delivers it into the stack on the caller's goroutine, releases the
//     PacketBuffer and the frame. Delivery takes the stack's locks and runs
//     its input processing, so it is short but not wait-free: the Port
//     reports NonBlockingWrite false and the switch calls it from the port's
//     writer goroutine behind its bounded egress queue.
//   - Stack → switch: the stack's send path (any goroutine: the WriteBatch
//     caller for replies, gVisor's timers and TCP processors later) copies
//     each packet into a pooled vswitch.Frame and puts it on one bounded
//     queue without waiting. A full queue drops the frame and counts it.
//     ReadBatch blocks on that queue until a frame is there or Close.
//
// Goroutines: the Port starts none of its own; gVisor's protocols start
// theirs (TCP processors, timers). Close destroys the stack, which stops and
// waits for them, and releases the frames still queued.
//
// gVisor types stay inside this package: callers see vswitch frames, netip
// addresses and errors.
package netstack
