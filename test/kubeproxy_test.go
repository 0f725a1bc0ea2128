package test

import (
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// kube-proxy's iptables mode, emulated in a node's namespace: the chains
// and rules it writes for ClusterIP and NodePort Services
// (pkg/proxy/iptables/proxier.go), loaded as it loads them, with
// iptables-restore --noflush (here iptables-nft, which lists them in the
// nftables tables "ip nat" and "ip filter"). Route mode must work under
// them as any veth-based CNI does: the node's kernel DNATs and tracks the
// pods' flows, and only kube-proxy's own marks are masqueraded.

// kubeService is one port of a Service, as kube-proxy programs it.
type kubeService struct {
	name      string         // kube-proxy's servicePortName, "namespace/name:port"
	clusterIP netip.AddrPort // the ClusterIP and its port
	nodePort  uint16         // 0: no NodePort
	// local is externalTrafficPolicy: Local: a NodePort connection from
	// outside goes to this node's endpoints only and keeps its source
	// address (no KUBE-MARK-MASQ).
	local bool
	// endpoints are the pods behind the Service, all on this node, with
	// the target port.
	endpoints []netip.AddrPort
}

// kubeChain names a chain as kube-proxy does: a prefix and the first 16
// characters of the base32 SHA-256 of what the chain stands for.
func kubeChain(prefix string, parts ...string) string {
	sum := sha256.Sum256([]byte(strings.Join(parts, "")))
	return prefix + base32.StdEncoding.EncodeToString(sum[:])[:16]
}

// kubeProxyRules is the iptables-restore input kube-proxy writes for svcs,
// all of one family (v6 selects ip6tables' forms).
func kubeProxyRules(v6 bool, svcs []kubeService) string {
	host := "/32"
	if v6 {
		host = "/128"
	}
	var filter, nat strings.Builder
	// The filter table: conntrack's INVALID packets are dropped, marked
	// and established flows accepted.
	fmt.Fprint(&filter, "*filter\n:KUBE-FORWARD - [0:0]\n",
		`-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD`+"\n",
		"-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n",
		`-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT`+"\n",
		`-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`+"\n",
		"COMMIT\n")

	// The nat table: the portals from PREROUTING and OUTPUT, and
	// masquerade for marked packets only.
	var chains, rules strings.Builder
	for _, c := range []string{"KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"} {
		fmt.Fprintf(&chains, ":%s - [0:0]\n", c)
	}
	fmt.Fprint(&rules,
		`-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`+"\n",
		`-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`+"\n",
		`-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING`+"\n",
		"-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n",
		"-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n",
		"-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n",
		`-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully`+"\n")
	for _, s := range svcs {
		svc := kubeChain("KUBE-SVC-", s.name, "tcp")
		fmt.Fprintf(&chains, ":%s - [0:0]\n", svc)
		fmt.Fprintf(&rules, "-A KUBE-SERVICES -m comment --comment \"%s cluster IP\" -m tcp -p tcp -d %s%s --dport %d -j %s\n",
			s.name, s.clusterIP.Addr(), host, s.clusterIP.Port(), svc)
		var seps []string
		for _, ep := range s.endpoints {
			sep := kubeChain("KUBE-SEP-", s.name, "tcp", ep.String())
			seps = append(seps, sep)
			fmt.Fprintf(&chains, ":%s - [0:0]\n", sep)
			// A pod that reaches itself through the Service is
			// masqueraded (hairpin); nobody else is.
			fmt.Fprintf(&rules, "-A %s -m comment --comment %s -s %s%s -j KUBE-MARK-MASQ\n", sep, s.name, ep.Addr(), host)
			fmt.Fprintf(&rules, "-A %s -m comment --comment %s -m tcp -p tcp -j DNAT --to-destination %s\n", sep, s.name, ep)
		}
		kubeBalance(&rules, svc, s.name, seps)
		if s.nodePort == 0 {
			continue
		}
		ext := kubeChain("KUBE-EXT-", s.name, "tcp")
		fmt.Fprintf(&chains, ":%s - [0:0]\n", ext)
		fmt.Fprintf(&rules, "-A KUBE-NODEPORTS -m comment --comment %s -m tcp -p tcp --dport %d -j %s\n", s.name, s.nodePort, ext)
		if !s.local {
			fmt.Fprintf(&rules, "-A %s -m comment --comment \"masquerade traffic for %s external destinations\" -j KUBE-MARK-MASQ\n", ext, s.name)
			fmt.Fprintf(&rules, "-A %s -j %s\n", ext, svc)
			continue
		}
		svl := kubeChain("KUBE-SVL-", s.name, "tcp")
		fmt.Fprintf(&chains, ":%s - [0:0]\n", svl)
		fmt.Fprintf(&rules, "-A %s -m comment --comment \"masquerade LOCAL traffic for %s external destinations\" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ\n", ext, s.name)
		fmt.Fprintf(&rules, "-A %s -m comment --comment \"route LOCAL traffic for %s external destinations\" -m addrtype --src-type LOCAL -j %s\n", ext, s.name, svc)
		fmt.Fprintf(&rules, "-A %s -j %s\n", ext, svl)
		kubeBalance(&rules, svl, s.name, seps)
	}
	// The tail call to the NodePorts, which must stay the last rule;
	// localhost NodePorts are off (and never work over IPv6).
	notLoopback := "127.0.0.0/8"
	if v6 {
		notLoopback = "::1/128"
	}
	fmt.Fprintf(&rules, "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL ! -d %s -j KUBE-NODEPORTS\n", notLoopback)
	fmt.Fprintf(&nat, "*nat\n%s%sCOMMIT\n", chains.String(), rules.String())
	return filter.String() + nat.String()
}

// kubeBalance writes chain's jumps to the endpoint chains seps: each but
// the last with the probability that spreads connections evenly.
func kubeBalance(rules *strings.Builder, chain, name string, seps []string) {
	for i, sep := range seps {
		if i < len(seps)-1 {
			fmt.Fprintf(rules, "-A %s -m comment --comment %s -m statistic --mode random --probability %0.11f -j %s\n",
				chain, name, 1/float64(len(seps)-i), sep)
			continue
		}
		fmt.Fprintf(rules, "-A %s -m comment --comment %s -j %s\n", chain, name, sep)
	}
}

// applyKubeProxy loads the rules of svcs, all of one family, into the
// node's namespace (a netns path) with iptables-restore or
// ip6tables-restore. The rules go with the namespace.
func applyKubeProxy(t *testing.T, node string, svcs ...kubeService) {
	t.Helper()
	v6 := svcs[0].clusterIP.Addr().Is6()
	restore := "iptables-restore"
	if v6 {
		restore = "ip6tables-restore"
	}
	rules := kubeProxyRules(v6, svcs)
	cmd := exec.Command("ip", "netns", "exec", filepath.Base(node), restore, "--noflush")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s in %s: %v: %s\ninput:\n%s", restore, node, err, out, rules)
	}
}
