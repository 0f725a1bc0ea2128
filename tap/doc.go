// Package tap provides TAP devices inside network namespaces as
// vswitch.Ports: it creates a persistent, multiqueue TAP with a virtio-net
// header inside a pod's netns, configures its MAC, MTU, addresses and
// default route, and moves frames between the device and the switch.
//
// Model. Create makes the device and Open re-attaches to one that survived
// a daemon restart; both return a Port that holds one file descriptor per
// receive queue. Close closes the descriptors only: the device persists
// until Delete. Every frame on a descriptor is a 12-byte virtio-net header
// (vnethdr.go) followed by the Ethernet frame; the header carries the
// frame's vswitch.Offload.
//
// Goroutines and blocking. The package owns no goroutines. ReadBatch blocks
// in the Go netpoller until its queue has a frame, then reads every frame
// that is ready without blocking again; Close wakes it. WriteBatch never
// waits: a TAP write does not block, and a descriptor that would block
// fails the frame. Create, Open, Delete and Exists block on netlink and
// briefly run a goroutine on a thread inside the netns (internal/netnsutil).
//
// Drops. Frames shorter than the header, frames that fill the whole buffer
// (maybe truncated) and frames whose header does not decode are dropped by
// ReadBatch and counted in Stats; they are never returned.
package tap
