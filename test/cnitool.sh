#!/usr/bin/env bash
# The CNI lifecycle driven by cnitool, as a user sets it up by hand: the
# plugin and conflist staged by `make install`, tapswitchd running in a
# namespace that plays the node, cnitool run on that node for two pod
# namespaces. It checks ADD's results against the daemon and the pods'
# kernels, traffic between the pods, CHECK (also one that must fail),
# STATUS, a port forward from runtimeConfig.portMappings, DEL (twice, and
# after the netns is gone), GC, that nothing is left leased, and what a
# runtime sees once the daemon has stopped.
#
# Environment:
#   TAPSWITCH_BIN  folder with tapswitchd, tapswitchctl and tapswitch
#                  (default: the repository's bin/, from make build)
#   CNITOOL        cnitool (default: bin/cni-tools/cnitool, from make cni-tools)
#   CNI_VERSION    cniVersion to put in the staged conflist (default: as
#                  shipped); libcni sends STATUS and GC to the plugin only
#                  from 1.1.0 on, and CHECK from 0.4.0 on
#   NETNS_PREFIX   prefix of the namespaces' names (default tsw-cnitool-PID)
#
# Run as root. Exit status 0 only if every check passed. Everything it
# makes (namespaces, the daemon, the pod's server, the temporary folder) is
# removed on any exit. cnitool keeps its result cache in /var/lib/cni; each
# cnitool here runs in a mount namespace of its own with a private folder
# over /var/lib, so the machine's cache is neither read nor written (GC
# would otherwise DEL every cached "tapswitch" attachment on the machine).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
bin=${TAPSWITCH_BIN:-$repo/bin}
cnitool=${CNITOOL:-$repo/bin/cni-tools/cnitool}
cni_version=${CNI_VERSION:-}
# What the caller's environment holds for cnitool must not leak into the
# calls below, which set each of these themselves.
unset CNI_ARGS CAP_ARGS CNI_IFNAME NETCONFPATH CNI_PATH CNI_VERSION

# The trap may run while a function's output is redirected (ctl ... >file);
# fds 3 and 4 keep the script's own stdout and stderr for its report.
exec 3>&1 4>&2
step() { echo "== $*"; }
ok() { echo "   ok: $*"; }
fail() {
	echo "FAIL: $*" >&2
	exit 1
}

[ "$(id -u)" = 0 ] || fail "run as root (it creates network namespaces and TAP devices)"
for tool in ip unshare python3 make sha512sum; do
	command -v "$tool" >/dev/null || fail "$tool is missing"
done
command -v ping >/dev/null || fail "ping is missing: make deps installs iputils-ping"
for b in tapswitchd tapswitchctl tapswitch; do
	[ -x "$bin/$b" ] || fail "$bin/$b is missing: run make build, or set TAPSWITCH_BIN"
done
[ -x "$cnitool" ] || fail "$cnitool is missing: run make cni-tools, or set CNITOOL"
bin=$(cd "$bin" && pwd)

tmp=$(mktemp -d /tmp/tsw-cnitool.XXXXXX)
run=${tmp##*.}
prefix=${NETNS_PREFIX:-tsw-cnitool-$$}
node="$prefix-$run-node"
pod1="$prefix-$run-pod1"
pod2="$prefix-$run-pod2"
gc1="$prefix-$run-gc1"
gc2="$prefix-$run-gc2"
sock="$tmp/tapswitchd.sock"
made_ns=()
daemon_pid=""
server_pid=""

cleanup() {
	local status=$?
	set +e
	exec 1>&3 2>&4
	trap - EXIT INT TERM
	if [ -n "$server_pid" ]; then
		kill "$server_pid" 2>/dev/null
		wait "$server_pid" 2>/dev/null
	fi
	if [ -n "$daemon_pid" ]; then
		kill -TERM "$daemon_pid" 2>/dev/null
		for _ in $(seq 150); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$daemon_pid" 2>/dev/null
		wait "$daemon_pid" 2>/dev/null
	fi
	if [ "$status" != 0 ] && [ -s "$tmp/daemon.log" ]; then
		echo "--- tapswitchd log (last 60 lines)"
		tail -n 60 "$tmp/daemon.log"
	fi
	# Deleting a pod's netns takes its TAP along; the node's takes tsw0.
	for ns in "${made_ns[@]}"; do
		[ -e "/var/run/netns/$ns" ] && ip netns del "$ns"
	done
	rm -rf "$tmp"
	echo "== cleaned up: ${#made_ns[@]} namespaces, daemon, $tmp"
	exit "$status"
}
trap cleanup EXIT
# A command that fails outside a check of its own still says where.
trap 'echo "FAIL: line $LINENO: $BASH_COMMAND" >&2' ERR
trap 'exit 130' INT
trap 'exit 143' TERM

# JSON checks live in one python3 program; the shell only names them.
cat >"$tmp/check.py" <<'EOF'
import hashlib, ipaddress, json, subprocess, sys

def load(path):
    with open(path) as f:
        return json.load(f)

def jget(path, expr):
    """prints expr evaluated over the JSON document d"""
    print(eval(expr, {"d": load(path)}))

def result(path, version, netns, ifname, pods_path, pod_id, mac, nsname):
    """checks an ADD result against the daemon's pod and the pod's kernel"""
    r, errs = load(path), []
    pods = [p for p in load(pods_path) if p["id"] == pod_id]
    if len(pods) != 1:
        sys.exit(f"tapswitchctl pods has {len(pods)} pods with id {pod_id}")
    pod = pods[0]
    def want(cond, msg):
        if not cond:
            errs.append(msg)
    want(r.get("cniVersion") == version, f"cniVersion = {r.get('cniVersion')}, want {version}")
    ifaces = r.get("interfaces") or []
    want(len(ifaces) == 1, f"interfaces = {ifaces}, want one")
    iface = ifaces[0] if ifaces else {}
    want(iface.get("name") == ifname, f"interface name = {iface.get('name')}, want {ifname}")
    want(iface.get("sandbox") == netns, f"interface sandbox = {iface.get('sandbox')}, want {netns}")
    want(iface.get("mac", "").lower() == pod["mac"], f"interface mac = {iface.get('mac')}, daemon says {pod['mac']}")
    if mac:
        want(pod["mac"] == mac.lower(), f"pod mac = {pod['mac']}, runtimeConfig.mac asked for {mac}")
    if version == "1.1.0":
        want(iface.get("mtu") == pod["mtu"], f"interface mtu = {iface.get('mtu')}, daemon says {pod['mtu']}")
    else:
        want("mtu" not in iface, f"interface has mtu, which {version} does not define")

    gws = {ipaddress.ip_address(g).version: g for g in pod["gateways"]}
    got_ips = []
    for ip in r.get("ips") or []:
        addr = ipaddress.ip_interface(ip["address"])
        got_ips.append(str(addr))
        want(ip.get("interface") == 0, f"ip {addr}: interface = {ip.get('interface')}, want 0")
        want(ip.get("gateway") == gws.get(addr.version), f"ip {addr}: gateway = {ip.get('gateway')}, want {gws.get(addr.version)}")
        if version.startswith("0."):
            want(ip.get("version") == str(addr.version), f"ip {addr}: version = {ip.get('version')}, want {addr.version}")
        else:
            want("version" not in ip, f"ip {addr} has version, which {version} does not define")
    want(sorted(got_ips) == sorted(pod["ips"]), f"ips = {got_ips}, daemon says {pod['ips']}")
    want(len(pod["ips"]) == 2, f"daemon gave {pod['ips']}, want an IPv4 and an IPv6 address")
    routes = sorted((rt["dst"], rt.get("gw")) for rt in r.get("routes") or [])
    want_routes = sorted(({4: "0.0.0.0/0", 6: "::/0"}[v], g) for v, g in gws.items())
    want(routes == want_routes, f"routes = {routes}, want {want_routes}")
    ns = (r.get("dns") or {}).get("nameservers") or []
    want(ns == (pod.get("dns") or []), f"dns.nameservers = {ns}, daemon says {pod.get('dns')}")

    # What the pod's kernel has: the TAP with that MAC and the addresses,
    # up, and a default route per family via the gateway.
    def ipj(*args):
        return json.loads(subprocess.run(["ip", "-n", nsname, "-j", *args], check=True, capture_output=True).stdout or "[]")
    links = ipj("addr", "show", "dev", ifname)
    link = links[0] if links else {}
    want(link.get("address") == pod["mac"], f"{nsname} {ifname} mac = {link.get('address')}, want {pod['mac']}")
    want("UP" in link.get("flags", []), f"{nsname} {ifname} is not up: {link.get('flags')}")
    kaddrs = {f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", []) if a.get("scope") == "global"}
    want(set(pod["ips"]) <= kaddrs, f"{nsname} {ifname} has {sorted(kaddrs)}, want {pod['ips']}")
    for fam, v in (("-4", 4), ("-6", 6)):
        via = {rt.get("gateway") for rt in ipj(fam, "route", "show", "default")}
        want(gws[v] in via, f"{nsname} default routes {fam} via {sorted(via)}, want via {gws[v]}")
    if errs:
        sys.exit("\n".join(f"{path}: {e}" for e in errs))

def same_result(a, b):
    """checks that two ADD results describe the same attachment"""
    ra, rb = load(a), load(b)
    keys = ("cniVersion", "interfaces", "ips", "routes", "dns")
    if [ra.get(k) for k in keys] != [rb.get(k) for k in keys]:
        sys.exit(f"results differ:\n{json.dumps(ra)}\n{json.dumps(rb)}")

getattr(sys.modules[__name__], sys.argv[1].replace("-", "_"))(*sys.argv[2:])
EOF
check() { python3 "$tmp/check.py" "$@"; }
jget() { check jget "$@"; }
ctl() { "$tmp/usr/local/bin/tapswitchctl" --socket "$sock" "$@"; }
# cnitool's container ID is "cnitool-" and the first 10 bytes of the
# SHA-512 of the netns path, hex.
container_id() { echo "cnitool-$(printf %s "$1" | sha512sum | cut -c1-20)"; }
# cni runs cnitool on the node, as a runtime would run the plugin: inside
# the node's netns, with the staged conflist and plugin folder, its result
# cache in $tmp/varlib/cni. CNI_ARGS, CAP_ARGS and CNI_IFNAME pass through.
cni() {
	# shellcheck disable=SC2016 # "$0" and "$@" are sh -c's own
	ip netns exec "$node" unshare --mount --propagation private \
		sh -c 'mount --bind "$0" /var/lib && exec "$@"' "$tmp/varlib" \
		env NETCONFPATH="$tmp/etc/cni/net.d" CNI_PATH="$tmp/opt/cni/bin" "$cnitool" "$@"
}
version_ge() { [ "$(printf '%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }
# other_links lists the interfaces of netns $1 besides lo.
other_links() { ip -n "$1" -o link show | awk -F': ' '$2 != "lo" { print $2 }'; }
pod_ids() { ctl pods -o json | python3 -c 'import json,sys; print(" ".join(p["id"] for p in json.load(sys.stdin)))'; }
# says TEXT WANT: whether TEXT contains WANT (no pipe: grep -q would end a
# pipe early and make pipefail report a SIGPIPE).
says() { [[ $1 == *"$2"* ]]; }

step "staging the install into $tmp (make install DESTDIR=... CNI_CONF=1, binaries from $bin)"
# The install recipe is the one a user runs; -o build and BIN make it
# install the binaries this test was given instead of building its own.
# MAKEFLAGS of a make that runs this test must not reach this make.
env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL \
	make -s -C "$repo" -o build install DESTDIR="$tmp" CNI_CONF=1 BIN="$bin" >"$tmp/install.log" 2>&1 ||
	{ cat "$tmp/install.log" >&2; fail "make install"; }
conflist="$tmp/etc/cni/net.d/10-tapswitch.conflist"
for f in "$tmp/usr/local/bin/tapswitchd" "$tmp/usr/local/bin/tapswitchctl" "$tmp/opt/cni/bin/tapswitch" "$conflist"; do
	[ -f "$f" ] || fail "make install did not stage $f"
done
cmp -s "$bin/tapswitch" "$tmp/opt/cni/bin/tapswitch" || fail "the staged plugin is not $bin/tapswitch"
# The shipped conflist names the default socket; this daemon's is private.
python3 - "$conflist" "$sock" "$cni_version" <<'EOF'
import json, sys
path, sock, version = sys.argv[1:]
with open(path) as f:
    conf = json.load(f)
ours = [p for p in conf["plugins"] if p.get("type") == "tapswitch"]
if len(ours) != 1:
    sys.exit(f"{path}: {len(ours)} plugins of type tapswitch, want 1")
if ours[0].get("socket", "/run/tapswitch/tapswitchd.sock") != "/run/tapswitch/tapswitchd.sock":
    sys.exit(f"{path}: socket {ours[0]['socket']}, want the default /run/tapswitch/tapswitchd.sock")
ours[0]["socket"] = sock
if version:
    conf["cniVersion"] = version
with open(path, "w") as f:
    json.dump(conf, f, indent=2)
EOF
if grep -q /run/tapswitch "$conflist"; then fail "the staged conflist still names /run/tapswitch"; fi
net=$(jget "$conflist" 'd["name"]')
ver=$(jget "$conflist" 'd["cniVersion"]')
ok "plugin in opt/cni/bin, conflist for network $net, cniVersion $ver, socket $sock"

step "namespaces $node (lo up), $pod1, $pod2; tapswitchd in the node"
for ns in "$node" "$pod1" "$pod2"; do
	made_ns+=("$ns") # first, so that the trap never misses one
	ip netns add "$ns"
done
ip -n "$node" link set lo up
mkdir -p "$tmp/varlib"
ip netns exec "$node" "$tmp/usr/local/bin/tapswitchd" \
	--pod-cidr 10.251.60.0/24 --pod-cidr6 fd00:4a4:60::/64 \
	--state-dir "$tmp/state" --socket "$sock" --dns none --log-level debug \
	>"$tmp/daemon.log" 2>&1 3>&- 4>&- &
daemon_pid=$!
for _ in $(seq 100); do
	ctl pods >/dev/null 2>&1 && break
	kill -0 "$daemon_pid" 2>/dev/null || fail "tapswitchd exited"
	sleep 0.1
done
ctl pods >/dev/null || fail "tapswitchd did not answer on $sock within 10 s"
ok "tapswitchd answers"

path1="/var/run/netns/$pod1"
path2="/var/run/netns/$pod2"
cid1=$(container_id "$path1")
cid2=$(container_id "$path2")
id1="$cid1.eth0"
id2="$cid2.eth0"
mac1="02:54:53:c1:00:01"
host_port=18080
args1="IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=$cid1;K8S_POD_UID=0b5e9e4c-1"
args2="IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=db-0;K8S_POD_INFRA_CONTAINER_ID=$cid2;K8S_POD_UID=0b5e9e4c-2"
caps1="{\"portMappings\":[{\"hostPort\":$host_port,\"containerPort\":8080,\"protocol\":\"tcp\"}],\"mac\":\"$mac1\"}"

step "cnitool add: pod1 (Kubernetes CNI_ARGS, portMappings, mac), pod2 (Kubernetes CNI_ARGS)"
CNI_ARGS=$args1 CAP_ARGS=$caps1 cni add "$net" "$path1" >"$tmp/pod1.json" || fail "cnitool add $net $path1"
CNI_ARGS=$args2 cni add "$net" "$path2" >"$tmp/pod2.json" || fail "cnitool add $net $path2"
ctl pods -o json >"$tmp/pods.json"
check result "$tmp/pod1.json" "$ver" "$path1" eth0 "$tmp/pods.json" "$id1" "$mac1" "$pod1" ||
	fail "pod1's result: $(cat "$tmp/pod1.json")"
check result "$tmp/pod2.json" "$ver" "$path2" eth0 "$tmp/pods.json" "$id2" "" "$pod2" ||
	fail "pod2's result: $(cat "$tmp/pod2.json")"
[ -f "$tmp/varlib/cni/results/$net-$cid1-eth0" ] || fail "cnitool kept no result in the private cache"
ok "results match the daemon and the pods' kernels: mac, sandbox, ips, gateways, routes, dns"
CNI_ARGS=$args2 cni add "$net" "$path2" >"$tmp/pod2-again.json" || fail "cnitool add $net $path2, a second time"
check same-result "$tmp/pod2.json" "$tmp/pod2-again.json" || fail "a repeated ADD of pod2 got another result"
ok "a repeated ADD of pod2 gets the same result"

step "tapswitchctl pods: both pods with their Kubernetes namespace/name"
[ "$(jget "$tmp/pods.json" 'len(d)')" = 2 ] || fail "tapswitchctl pods lists $(jget "$tmp/pods.json" 'len(d)') pods, want 2"
# pod_shown ID NAMESPACE/NAME CONTAINER_ID: the daemon recorded the pod's
# Kubernetes name, container and network, and tapswitchctl pods shows it.
pod_shown() {
	local got table
	got=$(jget "$tmp/pods.json" "[(p.get('pod_namespace','')+'/'+p.get('pod_name',''), p.get('container_id'), p.get('network')) for p in d if p['id']=='$1']")
	[ "$got" = "[('$2', '$3', '$net')]" ] || fail "pod $1: (namespace/name, container, network) = $got, want ($2, $3, $net)"
	table=$(ctl pods)
	grep -E "^$1 +$2 " <<<"$table" >/dev/null || fail "tapswitchctl pods does not show $1 as $2:
$table"
}
pod_shown "$id1" shop/web-0 "$cid1"
pod_shown "$id2" shop/db-0 "$cid2"
ctl pods
ip1=$(jget "$tmp/pods.json" "[p['ips'][0].split('/')[0] for p in d if p['id']=='$id1'][0]")
ip2=$(jget "$tmp/pods.json" "[p['ips'][0].split('/')[0] for p in d if p['id']=='$id2'][0]")
ip2_6=$(jget "$tmp/pods.json" "[p['ips'][1].split('/')[0] for p in d if p['id']=='$id2'][0]")
pfx2=$(jget "$tmp/pods.json" "[p['ips'][0] for p in d if p['id']=='$id2'][0]")

step "ping pod1 -> pod2 ($ip2, $ip2_6) and pod2 -> pod1 ($ip1)"
ip netns exec "$pod1" ping -q -c 3 -i 0.2 -W 2 "$ip2" >/dev/null || fail "ping $ip2 from pod1: no reply"
ip netns exec "$pod1" ping -q -c 3 -i 0.2 -W 2 "$ip2_6" >/dev/null || fail "ping $ip2_6 from pod1: no reply"
ip netns exec "$pod2" ping -q -c 3 -i 0.2 -W 2 "$ip1" >/dev/null || fail "ping $ip1 from pod2: no reply"
ok "replies"

if version_ge "$ver" 0.4.0; then
	step "cnitool check: pod1, pod2"
	CNI_ARGS=$args1 CAP_ARGS=$caps1 cni check "$net" "$path1" || fail "cnitool check $path1"
	CNI_ARGS=$args2 cni check "$net" "$path2" || fail "cnitool check $path2"
	ok "both as attached"
else
	step "cnitool check: libcni has no CHECK for cniVersion $ver (from 0.4.0 on)"
fi

if version_ge "$ver" 1.1.0; then
	step "cnitool status"
	cni status "$net" "/var/run/netns/$node" || fail "cnitool status"
	ok "ready"
else
	step "cnitool status: libcni sends no STATUS for cniVersion $ver (from 1.1.0 on)"
fi

# In route mode, the default, hostPorts are DNAT rules, which Linux cannot
# apply to a connection to ::1 (IPv6 has no route_localnet; kube-proxy and
# the portmap plugin leave it out too): the node reaches the IPv6 one
# through an address of its own, tsw0's.
node6=fd00:4a4:60:0:ffff:ffff:ffff:ffff
step "port forward: node 127.0.0.1:$host_port and [$node6]:$host_port -> pod1:8080"
fws=$(ctl forward list -o json | python3 -c 'import json,sys; print(sorted((f["listen"], f["proto"], f["pod"], f["port"]) for f in json.load(sys.stdin)))')
[ "$fws" = "[('0.0.0.0:$host_port', 'tcp', '$id1', 8080), ('[::]:$host_port', 'tcp', '$id1', 8080)]" ] ||
	fail "forwards = $fws, want 0.0.0.0:$host_port and [::]:$host_port to $id1 port 8080"
token="tapswitch-cnitool-$run"
ip netns exec "$pod1" python3 -c '
import socket, sys
token, ready = sys.argv[1].encode(), sys.argv[2]
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", 8080))
s.listen(16)
open(ready, "w").close()
while True:
    c, _ = s.accept()
    c.sendall(token)
    c.close()
' "$token" "$tmp/server.ready" >"$tmp/server.log" 2>&1 3>&- 4>&- &
server_pid=$!
for _ in $(seq 50); do [ -e "$tmp/server.ready" ] && break; sleep 0.1; done
[ -e "$tmp/server.ready" ] || fail "the server in pod1 did not start: $(cat "$tmp/server.log")"
for host in 127.0.0.1 "$node6"; do
	got=$(ip netns exec "$node" python3 -c '
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as c:
    data = b""
    while chunk := c.recv(4096):
        data += chunk
print(data.decode())
' "$host" "$host_port") || fail "connect to $host:$host_port in the node"
	[ "$got" = "$token" ] || fail "$host:$host_port in the node answered \"$got\", want \"$token\" from pod1's server"
done
ok "pod1's server answers through both"

if version_ge "$ver" 0.4.0; then
	step "cnitool check fails once pod2's $pfx2 is removed"
	ip -n "$pod2" addr del "$pfx2" dev eth0
	if out=$(CNI_ARGS=$args2 cni check "$net" "$path2" 2>&1); then
		fail "cnitool check $path2 passed without $pfx2"
	fi
	says "$out" "address $pfx2 is missing" || fail "cnitool check $path2 does not name the missing address: $out"
	ok "${out##*$'\n'}"
fi

step "cnitool del pod2, twice"
CNI_ARGS=$args2 cni del "$net" "$path2" || fail "cnitool del $path2"
CNI_ARGS=$args2 cni del "$net" "$path2" || fail "cnitool del $path2, a second time"
[ "$(pod_ids)" = "$id1" ] || fail "after del pod2, pods are: $(ctl pods)"
leases=$(ctl ipam)
if says "$leases" "$ip2/"; then fail "after del pod2, $ip2 is still leased: $leases"; fi
[ -z "$(other_links "$pod2")" ] || fail "after del pod2, $pod2 still has $(other_links "$pod2")"
ok "pod2 gone, its addresses released, its netns back to lo only"

step "delete pod1's netns, then cnitool del pod1"
kill "$server_pid"
wait "$server_pid" 2>/dev/null || true
server_pid=""
ip netns del "$pod1"
CNI_ARGS=$args1 CAP_ARGS=$caps1 cni del "$net" "$path1" || fail "cnitool del $path1 after its netns was deleted"
[ "$(ctl pods -o json)" = "[]" ] || fail "after del pod1, pods are: $(ctl pods)"
[ "$(ctl forward list -o json)" = "[]" ] || fail "after del pod1, forwards are: $(ctl forward list)"
ok "pod1 and its port forwards gone"

step "cnitool gc: attachments of $net go, a pod made with tapswitchctl stays"
# pod2's netns, empty again, gets a pod made with tapswitchctl; gc1 one
# attachment that cnitool's cache knows and, from 1.1.0 on, gc2 one that
# the runtime lost track of (its cache entry gone): only the plugin's own
# GC can find that one.
ctl pod add --id "manual-$run" --netns "$path2" >/dev/null
gc_ns=("$gc1")
if version_ge "$ver" 1.1.0; then gc_ns+=("$gc2"); fi
gc_gone=""
for ns in "${gc_ns[@]}"; do
	made_ns+=("$ns")
	ip netns add "$ns"
	cni add "$net" "/var/run/netns/$ns" >/dev/null || fail "cnitool add $net /var/run/netns/$ns"
	gc_gone="$gc_gone $(container_id "/var/run/netns/$ns").eth0"
done
if version_ge "$ver" 1.1.0; then
	rm "$tmp/varlib/cni/results/$net-$(container_id "/var/run/netns/$gc2")-eth0"
fi
cni gc "$net" "/var/run/netns/$node" || fail "cnitool gc"
left=$(pod_ids)
[ "$left" = "manual-$run" ] || fail "after gc, pods are \"$left\", want only manual-$run (gone: $gc_gone)"
for ns in "${gc_ns[@]}"; do
	[ -z "$(other_links "$ns")" ] || fail "after gc, $ns still has $(other_links "$ns")"
done
ctl pod del --id "manual-$run" >/dev/null
ok "gc removed$gc_gone"

step "nothing left: pods, leases, forwards, cached results"
[ "$(ctl pods -o json)" = "[]" ] || fail "pods left: $(ctl pods)"
[ "$(ctl ipam -o json)" = "[]" ] || fail "leases left: $(ctl ipam)"
[ "$(ctl forward list -o json)" = "[]" ] || fail "forwards left: $(ctl forward list)"
[ -z "$(ls -A "$tmp/varlib/cni/results")" ] || fail "cnitool's cache still holds: $(ls "$tmp/varlib/cni/results")"
ctl ipam
ok "none"

step "tapswitchd stopped: ADD and STATUS fail saying so, nothing half-made"
kill -TERM "$daemon_pid"
rc=0
wait "$daemon_pid" || rc=$?
daemon_pid=""
[ "$rc" = 0 ] || fail "tapswitchd exited with $rc after SIGTERM"
if out=$(CNI_ARGS=$args2 cni add "$net" "$path2" 2>&1); then
	fail "cnitool add with the daemon stopped passed: $out"
fi
for want in "try again later" "$sock"; do
	says "$out" "$want" || fail "cnitool add with the daemon stopped does not say \"$want\": $out"
done
[ -z "$(other_links "$pod2")" ] || fail "a failed add left in $pod2: $(other_links "$pod2")"
[ -z "$(ls -A "$tmp/varlib/cni/results")" ] || fail "a failed add left a cached result: $(ls "$tmp/varlib/cni/results")"
ok "add: ${out##*$'\n'}"
if version_ge "$ver" 1.1.0; then
	if out=$(cni status "$net" "/var/run/netns/$node" 2>&1); then
		fail "cnitool status with the daemon stopped passed"
	fi
	says "$out" "tapswitchd is not answering" || fail "cnitool status with the daemon stopped: $out"
	ok "status: ${out##*$'\n'}"
fi

echo "PASS"
