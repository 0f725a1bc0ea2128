package nodenet

import (
	"net/netip"
	"strconv"
	"strings"

	"sigs.k8s.io/knftables"
)

// The table's chains. Each base chain is hooked where iptables' nat (or
// raw) table would be; the names are what an operator sees in
// `nft list table inet tapswitch`.
const (
	chainGuard       = "localnet_guard" // filter, prerouting, raw (-300)
	chainPrerouting  = "prerouting"     // nat, prerouting, dstnat (-100)
	chainOutput      = "output"         // nat, output, dstnat (-100)
	chainPostrouting = "postrouting"    // nat, postrouting, srcnat (100)
)

// tableComment is the table's comment, for an operator who wonders whose
// table it is.
const tableComment = "tapswitchd route mode: pod masquerade and hostPorts; rewritten whole by the daemon"

// chains returns the table's chains, the same for every Config: a chain
// with no rules costs a hook call per packet and nothing else, and a fixed
// set keeps Drifted simple.
func chains() []*knftables.Chain {
	base := func(name string, typ knftables.BaseChainType, hook knftables.BaseChainHook, prio knftables.BaseChainPriority) *knftables.Chain {
		return &knftables.Chain{
			Name:     name,
			Type:     knftables.PtrTo(typ),
			Hook:     knftables.PtrTo(hook),
			Priority: knftables.PtrTo(prio),
		}
	}
	return []*knftables.Chain{
		base(chainGuard, knftables.FilterType, knftables.PreroutingHook, knftables.RawPriority),
		base(chainPrerouting, knftables.NATType, knftables.PreroutingHook, knftables.DNATPriority),
		base(chainOutput, knftables.NATType, knftables.OutputHook, knftables.DNATPriority),
		base(chainPostrouting, knftables.NATType, knftables.PostroutingHook, knftables.SNATPriority),
	}
}

// ruleset returns the rules for a validated cfg, each with a comment that
// is unique in its chain, in the order each chain gets them.
func ruleset(cfg Config) []*knftables.Rule {
	var rules []*knftables.Rule
	add := func(chain, comment string, parts ...any) {
		rules = append(rules, &knftables.Rule{
			Chain:   chain,
			Rule:    knftables.Concat(parts...),
			Comment: knftables.PtrTo(comment),
		})
	}
	dev := strconv.Quote(cfg.HostPort) // validated: needs no escaping

	// route_localnet on the host port device (set for loopback hostPorts,
	// and never cleared, as another Sync may need it again) would let a pod
	// reach the node's 127.0.0.1 services by sending to 127.0.0.1 through
	// the host port: CVE-2020-8558, which kube-proxy closes the same way.
	// The rules stay whether route_localnet is on or not.
	add(chainGuard, "drop loopback destinations from the host port",
		"iifname", dev, "ip daddr 127.0.0.0/8 drop")
	add(chainGuard, "drop loopback sources from the host port",
		"iifname", dev, "ip saddr 127.0.0.0/8 drop")

	for _, h := range cfg.HostPorts {
		match, prerouting := listenMatch(h.Listen.Addr())
		rule := []any{match, h.Proto, "dport", h.Listen.Port(), "dnat", ipKeyword(h.Target.Addr()), "to", h.Target}
		if prerouting {
			add(chainPrerouting, "hostPort "+h.String(), rule...)
		}
		add(chainOutput, "hostPort "+h.String(), rule...)
	}

	for _, pod := range cfg.PodCIDRs {
		ip := ipKeyword(pod.Addr())
		add(chainPostrouting, "masquerade "+pod.String()+" leaving the cluster",
			ip, "saddr", pod, ip, "daddr !=", sameFamily(cfg.ClusterCIDRs, pod.Addr()), "masquerade")
	}
	// A pod that reaches its own hostPort comes back to itself DNATed but
	// with its own source address; it would answer itself directly, so
	// the node's address must be the source. Two hostPorts to one target
	// share one rule; a loopback listen, which pods cannot reach, needs
	// none.
	hairpins := map[string]bool{}
	for _, h := range cfg.HostPorts {
		key := h.Proto + " " + h.Target.String()
		if _, prerouting := listenMatch(h.Listen.Addr()); !prerouting || hairpins[key] {
			continue
		}
		hairpins[key] = true
		ip, t := ipKeyword(h.Target.Addr()), h.Target
		add(chainPostrouting, "hairpin "+key,
			ip, "saddr", t.Addr(), ip, "daddr", t.Addr(), h.Proto, "dport", t.Port(), "masquerade")
	}
	// The node's own connection from 127.0.0.1, DNATed to a pod, must not
	// leave with a loopback source: the pod would answer its own loopback.
	if cfg.needsRouteLocalnet() {
		add(chainPostrouting, "masquerade node loopback to hostPorts",
			"ip saddr 127.0.0.0/8 oifname", dev, "masquerade")
	}
	return rules
}

// listenMatch returns the rule's match on the listen address a, and
// whether prerouting gets the rule too (every listen except loopback,
// which only the node itself can reach, through output).
//
// An unspecified address matches every local address: fib reads the
// routing table's verdict on the destination, as kube-proxy's NodePorts
// do. fib carries no family, and a dnat to an address of the other family
// must not see the packet, so nfproto says which. For IPv6, ::1 is left
// out (and so is a connection to [::1]:port, which then gets the node's
// own answer rather than a DNAT Linux cannot route). A specific address
// must be the node's too: a hostIP the node does not have would otherwise
// capture every connection through the node to that address (a pod's to
// 8.8.8.8:53, say), as portmap's --dst-type LOCAL prevents.
func listenMatch(a netip.Addr) (match string, prerouting bool) {
	switch {
	case a.IsUnspecified() && a.Is4():
		return "meta nfproto ipv4 fib daddr type local", true
	case a.IsUnspecified():
		return "ip6 daddr != ::1 fib daddr type local", true
	case a.IsLoopback():
		return knftables.Concat(ipKeyword(a), "daddr", a), false
	}
	return knftables.Concat(ipKeyword(a), "daddr", a, "fib daddr type local"), true
}

// ipKeyword returns nft's name for a's family in matches and in dnat:
// "ip" or "ip6".
func ipKeyword(a netip.Addr) string {
	if a.Is4() {
		return "ip"
	}
	return "ip6"
}

// sameFamily returns the prefixes of ps of a's family as nft writes them
// after a comparison: one alone, or more as an anonymous set, "{ a, b }".
// (nft itself turns a set of one into the one, so the table lists as it
// was written.)
func sameFamily(ps []netip.Prefix, a netip.Addr) string {
	var elems []string
	for _, p := range ps {
		if p.Addr().Is4() == a.Is4() {
			elems = append(elems, p.String())
		}
	}
	if len(elems) == 1 {
		return elems[0]
	}
	return "{ " + strings.Join(elems, ", ") + " }"
}
