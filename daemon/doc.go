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
//
// Errors come as {"error": "..."} with 400 (bad input), 404 (unknown pod),
// 409 (duplicate or busy), 507 (CIDR exhausted) or 500.
package daemon
