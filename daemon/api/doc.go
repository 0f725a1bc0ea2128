// Package api is tapswitchd's API as Go: the JSON types of HTTP + JSON on
// the daemon's unix socket, and a client of it. The daemon (package
// daemon) serves these types; tapswitchctl and the CNI plugin talk
// through the client. It stays light on purpose: the CNI plugin, run once
// per pod by the container runtime, imports it and not the daemon with
// its netstack.
package api
