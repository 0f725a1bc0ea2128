// Package cni is the tapswitch CNI plugin: the program a container runtime
// (containerd, CRI-O, podman) runs for a conflist whose "type" is
// "tapswitch". The plugin is a thin client of tapswitchd: the daemon creates
// the TAP, attaches it to the switch, allocates the addresses and holds all
// state; the plugin only translates between the CNI protocol and the
// daemon's API.
//
// So far the package holds the result conversion: [Result] turns a
// [daemon.Pod] into the CNI result a runtime expects from ADD, in the
// cniVersion the runtime asked for, and [SupportedVersions] lists the
// versions it can answer in. The command handlers (ADD, DEL, CHECK, STATUS,
// GC, VERSION) and the daemon client that they use come next; until then
// nothing here talks to the daemon or touches a network namespace.
//
// The package starts no goroutines, does no I/O and keeps no state.
package cni
