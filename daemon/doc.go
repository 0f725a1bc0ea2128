// Package daemon is tapswitchd's wiring: the switch, the registry of
// attached pods with their addresses, the state file that lets a restarted
// daemon re-attach them, and the HTTP + JSON API on a unix socket together
// with its Go client.
//
// The API (all JSON):
//
//	GET    /v1/pods        list pods
//	POST   /v1/pods        attach a pod: {"id", "netns", "ifname"}
//	GET    /v1/pods/{id}   one pod
//	DELETE /v1/pods/{id}   detach a pod and remove its TAP
//	GET    /v1/fdb         learned MACs
//	GET    /v1/stats       per-port counters
//	GET    /v1/forwards    list port forwards
//	POST   /v1/forwards    add a port forward: {"listen": "127.0.0.1:8080",
//	                       "pod", "port": 80, "proto": "tcp" or "udp"}
//	DELETE /v1/forwards/{proto}/{listen}
//	                       remove a port forward, e.g.
//	                       /v1/forwards/tcp/127.0.0.1:8080 or
//	                       /v1/forwards/udp/%5B::1%5D:5353
//
// Errors come as {"error": "..."} with 400 (bad input), 404 (unknown pod
// or forward), 409 (duplicate, busy, or a listen address in use), 507 (CIDR
// exhausted) or 500.
package daemon
