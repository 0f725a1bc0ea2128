// Package daemon is tapswitchd's wiring: the switch, the gateway and the
// host port, the registry of attached pods with their address leases and
// port forwards, the state file that lets a restarted daemon re-attach
// them, and the HTTP + JSON API on a unix socket. The API's types and its
// Go client are in package api (daemon/api).
//
// The API (all JSON):
//
//	GET    /v1/pods        list pods
//	POST   /v1/pods        attach a pod: {"id", "netns", "ifname", ...}
//	                       (api.PodRequest)
//	GET    /v1/pods/{id}   one pod
//	DELETE /v1/pods/{id}   detach a pod and remove its TAP
//	GET    /v1/pods/{id}/check
//	                       the pod's TAP against what was made
//	GET    /v1/status      pods, and free addresses per pod CIDR
//	GET    /v1/ipam        address leases
//	GET    /v1/fdb         learned MACs
//	GET    /v1/stats       per-port counters
//	GET    /v1/forwards    list port forwards
//	POST   /v1/forwards    add a port forward: {"listen": "127.0.0.1:8080",
//	                       "pod", "port": 80, "proto": "tcp" or "udp"}
//	DELETE /v1/forwards/{proto}/{listen}
//	                       remove a port forward, e.g.
//	                       /v1/forwards/tcp/127.0.0.1:8080 or
//	                       /v1/forwards/udp/%5B::1%5D:5353
//	GET    /metrics        Prometheus
//
// Errors come as {"error": "..."} with 400 (bad input), 404 (unknown pod
// or forward), 409 (duplicate, a MAC or listen address in use, or a check
// that found differences), 503 (the pod is being attached or deleted:
// try again), 507 (CIDR exhausted) or 500.
package daemon
