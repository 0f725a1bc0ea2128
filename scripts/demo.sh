#!/usr/bin/env bash
# make demo: starts tapswitchd on its embedded defaults in a temporary state
# folder, attaches three pod namespaces, shows them pinging each other and a
# TCP stream between two of them, then the FDB and counters the traffic
# left. Everything it makes is removed on exit, Ctrl-C or failure.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
	echo "demo: run as root (it creates network namespaces and TAP devices)" >&2
	exit 1
fi

BIN=./bin
run_id="$$"
tmp=$(mktemp -d /tmp/tapswitch-demo.XXXXXX)
sock="$tmp/tapswitchd.sock"
pods=(a b c)
daemon_pid=""
iperf_pid=""

ns() { echo "tsw-demo-$run_id-$1"; }
ctl() { "$BIN/tapswitchctl" --socket "$sock" "$@"; }
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

cleanup() {
	status=$?
	set +e
	trap - EXIT INT TERM
	step "cleaning up"
	[ -n "$iperf_pid" ] && kill "$iperf_pid" 2>/dev/null
	if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then
		for p in "${pods[@]}"; do ctl pod del --id "demo-$p" >/dev/null 2>&1 || true; done
		kill -TERM "$daemon_pid" 2>/dev/null || true
		wait "$daemon_pid" 2>/dev/null || true
	fi
	for p in "${pods[@]}"; do ip netns del "$(ns "$p")" 2>/dev/null || true; done
	rm -rf "$tmp"
	echo "removed namespaces, devices, daemon and $tmp"
	exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "starting tapswitchd (pod cidr 10.244.0.0/24, state in $tmp)"
"$BIN/tapswitchd" --state-dir "$tmp/state" --socket "$sock" >"$tmp/daemon.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
[ -S "$sock" ] || { cat "$tmp/daemon.log"; echo "demo: daemon did not start" >&2; exit 1; }

step "attaching three pod namespaces"
for p in "${pods[@]}"; do
	ip netns add "$(ns "$p")"
	ctl pod add --id "demo-$p" --netns "/var/run/netns/$(ns "$p")" >/dev/null
done
ctl pods

ip_of() { ctl pods -o json | python3 -c "import json,sys; print([p['ips'][0].split('/')[0] for p in json.load(sys.stdin) if p['id']=='demo-$1'][0])"; }
declare -A ip
for p in "${pods[@]}"; do ip[$p]=$(ip_of "$p"); done

step "inside pod a: its eth0 (a TAP) and routes"
ip netns exec "$(ns a)" ip -brief address show eth0
ip netns exec "$(ns a)" ip route

for pair in "a b" "b c" "c a"; do
	set -- $pair
	step "pod $1 pings pod $2 (${ip[$2]})"
	ip netns exec "$(ns "$1")" ping -c 3 -i 0.2 -W 2 "${ip[$2]}"
done

step "TCP throughput pod a -> pod b, 5 s (iperf3, single stream)"
ip netns exec "$(ns b)" iperf3 -s -1 -B "${ip[b]}" >/dev/null 2>&1 &
iperf_pid=$!
sleep 0.5
ip netns exec "$(ns a)" iperf3 -c "${ip[b]}" -t 5 -f g | grep -E 'sender|receiver'
wait "$iperf_pid" 2>/dev/null || true
iperf_pid=""

step "forwarding database"
ctl fdb
step "counters"
ctl stats

step "deleting pod c"
ctl pod del --id demo-c
ctl pods
echo
echo "demo finished: pods reached each other through the userspace switch"
