// Package cni is the tapswitch CNI plugin: the program a container runtime
// (containerd, CRI-O, podman, cnitool) runs for a conflist whose "type" is
// "tapswitch". The plugin is a thin client of tapswitchd: the daemon
// creates the TAP, attaches it to the switch, allocates the addresses,
// makes the port forwards and holds all state; the plugin translates
// between the CNI protocol (spec 0.3.0 to 1.1.0) and the daemon's API.
//
//   - ADD attaches the pod as daemon pod PodID(CNI_CONTAINERID, CNI_IFNAME),
//     recording the container, the network name and the Kubernetes pod
//     from CNI_ARGS; runtimeConfig.mac and runtimeConfig.portMappings are
//     honoured. A repeated ADD of the same attachment gets the existing
//     result. [Result] builds the answer in the runtime's cniVersion.
//   - DEL detaches it, and succeeds when there is nothing left to delete.
//   - CHECK compares prevResult with the daemon's pod, and the daemon
//     checks the TAP in the netns.
//   - STATUS is ready while the daemon answers and has free addresses.
//   - GC deletes this network's pods missing from the valid attachments.
//
// Errors are CNI errors with the spec's codes; a daemon that does not
// answer is code 11 (try again later), naming its socket.
//
// The package starts no goroutines and keeps no state between calls.
package cni
