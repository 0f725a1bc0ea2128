#!/usr/bin/env bash
# make demo: starts tapswitchd on its embedded defaults (route mode) in a
# namespace that plays the node, with a temporary state folder, attaches
# three pod namespaces, shows them pinging each other and a TCP stream
# between two of them; then the way out: the gateway routing a pod's
# packets to the node (traceroute), a server in an "outside world"
# namespace behind the node reached with the node's masquerade, the node
# and the world reaching pods with their own addresses, a hostPort as a
# DNAT; then the FDB, counters and the node's nftables table; then a pod
# attached by the CNI plugin, run as a container runtime runs it.
# Everything it makes is removed on exit, Ctrl-C or failure. The machine's
# own namespace gets no device, sysctl or firewall rule: forwarding and the
# nftables table are the node namespace's.
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
bg_pids=()
world_veth="world"

ns() { echo "tsw-demo-$run_id-$1"; }
# onnode runs a command inside the node's namespace.
onnode() { ip netns exec "$(ns node)" "$@"; }
ctl() { "$BIN/tapswitchctl" --socket "$sock" "$@"; }
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# cni COMMAND runs the CNI plugin as a runtime does: the network
# configuration on stdin, the attachment in CNI_* variables.
cni_id="demo-$run_id"
cni_conf="{\"cniVersion\":\"1.1.0\",\"name\":\"demo\",\"type\":\"tapswitch\",\"socket\":\"$sock\"}"
cni() {
	CNI_COMMAND="$1" CNI_CONTAINERID="$cni_id" CNI_NETNS="/var/run/netns/$(ns d)" CNI_IFNAME=eth0 \
		CNI_PATH="$BIN" CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=demo-d" \
		"$BIN/tapswitch" <<<"$cni_conf"
}

# throughput NETNS ADDR runs a one-shot iperf3 server on ADDR in NETNS and
# a 5 s single-stream client to it from pod a.
throughput() {
	ip netns exec "$1" iperf3 -s -1 -B "$2" >/dev/null 2>&1 &
	iperf_pid=$!
	sleep 0.5
	ip netns exec "$(ns a)" iperf3 -c "$2" -t 5 -f g | grep -E 'sender|receiver'
	wait "$iperf_pid" 2>/dev/null || true
	iperf_pid=""
}

cleanup() {
	status=$?
	set +e
	trap - EXIT INT TERM
	step "cleaning up"
	[ -n "$iperf_pid" ] && kill "$iperf_pid" 2>/dev/null
	for pid in "${bg_pids[@]}"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
	if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then
		for p in "${pods[@]}"; do ctl pod del --id "demo-$p" >/dev/null 2>&1 || true; done
		cni DEL >/dev/null 2>&1 || true
		kill -TERM "$daemon_pid" 2>/dev/null || true
		wait "$daemon_pid" 2>/dev/null || true
	fi
	# The node's namespace takes tsw0, the world veth and the nftables
	# table with it.
	for p in "${pods[@]}" d world node; do ip netns del "$(ns "$p")" 2>/dev/null || true; done
	rm -rf "$tmp"
	echo "removed namespaces, devices, daemon and $tmp"
	exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "starting tapswitchd in namespace $(ns node), which plays the node (pod cidr 10.244.0.0/24, route mode, state in $tmp)"
ip netns add "$(ns node)"
ip -n "$(ns node)" link set lo up
# ip netns exec execs the daemon: $! is tapswitchd itself.
ip netns exec "$(ns node)" "$BIN/tapswitchd" --state-dir "$tmp/state" --socket "$sock" --dns none >"$tmp/daemon.log" 2>&1 &
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
throughput "$(ns b)" "${ip[b]}"

step "an outside world: namespace $(ns world) at 198.18.0.2, a veth from the node (198.18.0.1); it has no route to the pods"
ip netns add "$(ns world)"
ip -n "$(ns node)" link add "$world_veth" type veth peer name eth0 netns "$(ns world)"
ip -n "$(ns node)" addr add 198.18.0.1/30 dev "$world_veth"
ip -n "$(ns node)" link set "$world_veth" up
ip -n "$(ns world)" addr add 198.18.0.2/30 dev eth0
ip -n "$(ns world)" link set eth0 up
ip -n "$(ns world)" link set lo up
mkdir -p "$tmp/www"
head -c $((32 << 20)) /dev/urandom >"$tmp/www/blob"
ip netns exec "$(ns world)" python3 -m http.server 8080 --bind 198.18.0.2 --directory "$tmp/www" >"$tmp/world.log" 2>&1 &
bg_pids+=($!)

step "the gateway routes: pod a -> world with TTL 1, 2 and 3 (traceroute by hand: the gateway, the node, the world)"
for ttl in 1 2 3; do
	ip netns exec "$(ns a)" ping -c 1 -t "$ttl" -W 2 198.18.0.2 | grep -E 'From|bytes from' || true
done

step "pod a: HTTP GET of 32 MiB from the world, routed through tsw0, masqueraded by the node's nftables table"
for _ in $(seq 50); do ip netns exec "$(ns world)" curl -s -o /dev/null http://198.18.0.2:8080/ 2>/dev/null && break; sleep 0.1; done
ip netns exec "$(ns a)" curl -sS -o "$tmp/blob.got" -w 'got %{size_download} bytes in %{time_total} s\n' http://198.18.0.2:8080/blob
cmp "$tmp/www/blob" "$tmp/blob.got" && echo "byte-for-byte equal"
echo "the world's server saw the client as: $(grep -o '^[0-9.]* ' "$tmp/world.log" | tail -1)(the node's address: the world has no route to the pods)"

step "TCP throughput pod a -> world, routed, 5 s (iperf3)"
throughput "$(ns world)" 198.18.0.2

host_ip=$(ip -n "$(ns node)" -4 -o addr show dev tsw0 | awk '{print $4}' | cut -d/ -f1)
step "TCP throughput pod a -> node through the host port tsw0 ($host_ip), 5 s (iperf3)"
throughput "$(ns node)" "$host_ip"

step "pod b's web server, reached from the node's own address 198.18.0.1 (not tsw0's): pod b sees it, and its reply is routed back"
echo "hello from pod b" >"$tmp/www/hello"
ip netns exec "$(ns b)" python3 -m http.server 8000 --bind "${ip[b]}" --directory "$tmp/www" >"$tmp/podb.log" 2>&1 &
bg_pids+=($!)
for _ in $(seq 50); do onnode curl -s -o /dev/null "http://${ip[b]}:8000/hello" && break; sleep 0.1; done
onnode curl -sS --interface 198.18.0.1 "http://${ip[b]}:8000/hello"
echo "pod b's server saw the client as: $(grep -o '^[0-9.]* ' "$tmp/podb.log" | tail -1)"

step "a hostPort: node port 18080 -> pod b port 8000, a DNAT in the node's table; the world connects to the node's address"
ctl forward add --listen 0.0.0.0:18080 --pod demo-b --port 8000
ip netns exec "$(ns world)" curl -sS http://198.18.0.1:18080/hello
echo "pod b's server saw the client as: $(grep -o '^[0-9.]* ' "$tmp/podb.log" | tail -1)(the world's own address)"

step "the node's nftables table, kept by tapswitchd (masquerade out of the cluster, the hostPort's DNAT)"
onnode nft list table inet tapswitch
ctl forward del --listen 0.0.0.0:18080

step "address leases (crash-safe, in $tmp/state/ipam.db)"
ctl ipam

step "forwarding database"
ctl fdb
step "counters"
ctl stats

step "pod d attached by the CNI plugin (bin/tapswitch), as containerd or CRI-O runs it: ADD"
ip netns add "$(ns d)"
result=$(cni ADD)
echo "$result"
ctl pods
step "CNI CHECK with that result as prevResult, and STATUS (exit code 0: as attached, ready)"
cni_conf=$(python3 -c 'import json,sys; c=json.loads(sys.argv[1]); c["prevResult"]=json.loads(sys.argv[2]); print(json.dumps(c))' "$cni_conf" "$result")
cni CHECK
echo "CHECK: as attached"
CNI_COMMAND=STATUS CNI_PATH="$BIN" "$BIN/tapswitch" <<<"$cni_conf"
echo "STATUS: ready"
step "pod d pings pod a (${ip[a]})"
ip netns exec "$(ns d)" ping -c 3 -i 0.2 "${ip[a]}" | tail -2
step "CNI DEL, twice (the second finds nothing and succeeds, as the spec asks)"
cni DEL
cni DEL
echo "DEL: ok, ok"

step "deleting pod c"
ctl pod del --id demo-c
ctl pods
echo
echo "demo finished: pods reached each other through the userspace switch"
