package overlay

import (
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	vswitch "tapswitch/switch"
)

// testSelf is this node in the tests: node-a, which the good files list.
var testSelf = Node{
	Name:     "node-a",
	Address:  netip.MustParseAddr("192.168.1.10"),
	VTEPMAC:  mustMAC("0e:00:00:00:00:0a"),
	PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/24"), netip.MustParsePrefix("fd00:10:244::/64")},
}

func mustMAC(s string) vswitch.MAC {
	m, err := vswitch.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

func prefixes(ss ...string) []netip.Prefix {
	var ps []netip.Prefix
	for _, s := range ss {
		ps = append(ps, netip.MustParsePrefix(s))
	}
	return ps
}

// nodeB and nodeC are the peers of the good files.
var (
	nodeB = Node{
		Name:     "node-b",
		Address:  netip.MustParseAddr("192.168.1.11"),
		VTEPMAC:  mustMAC("0e:00:00:00:00:0b"),
		PodCIDRs: prefixes("10.244.1.0/24", "fd00:10:244:1::/64"),
	}
	nodeC = Node{
		Name:     "node-c",
		Address:  netip.MustParseAddr("192.168.1.12"),
		VTEPMAC:  mustMAC("0e:00:00:00:00:0c"),
		PodCIDRs: prefixes("10.244.2.0/24"),
	}
)

// goodPeers is a static cluster's file: node-a (this node), node-b
// (dual-stack) and node-c (IPv4 only).
const goodPeers = `[
  {"name": "node-a", "address": "192.168.1.10", "vtep_mac": "0e:00:00:00:00:0a",
   "pod_cidrs": ["10.244.0.0/24", "fd00:10:244::/64"]},
  {"name": "node-b", "address": "192.168.1.11", "vtep_mac": "0e:00:00:00:00:0b",
   "pod_cidrs": ["10.244.1.0/24", "fd00:10:244:1::/64"]},
  {"name": "node-c", "address": "192.168.1.12", "vtep_mac": "0e:00:00:00:00:0c",
   "pod_cidrs": ["10.244.2.0/24"]}
]
`

// peerLine is one entry of a test file, with node-b's fields unless changed.
func peerLine(name, addr, mac, cidrs string) string {
	return `{"name": "` + name + `", "address": "` + addr + `", "vtep_mac": "` + mac + `", "pod_cidrs": [` + cidrs + `]}`
}

// withEntry is a file with node-a on line 2 and e on line 3.
func withEntry(e string) string {
	return "[\n" + peerLine("node-a", "192.168.1.10", "0e:00:00:00:00:0a", `"10.244.0.0/24", "fd00:10:244::/64"`) + ",\n" + e + "\n]\n"
}

func TestParsePeersGood(t *testing.T) {
	for _, tc := range []struct {
		name string
		data string
		self Node
		want []Node
	}{
		{"self dropped", goodPeers, testSelf, []Node{nodeB, nodeC}},
		{"self with only a name", goodPeers, Node{Name: "node-a"}, []Node{nodeB, nodeC}},
		{"self not listed", goodPeers, Node{Name: "node-z", PodCIDRs: prefixes("10.244.9.0/24")},
			[]Node{{Name: "node-a", Address: testSelf.Address, VTEPMAC: testSelf.VTEPMAC, PodCIDRs: testSelf.PodCIDRs}, nodeB, nodeC}},
		{"no self at all", goodPeers, Node{},
			[]Node{{Name: "node-a", Address: testSelf.Address, VTEPMAC: testSelf.VTEPMAC, PodCIDRs: testSelf.PodCIDRs}, nodeB, nodeC}},
		{"empty array", " [ ]\n", testSelf, []Node{}},
		{"only self", "[" + peerLine("node-a", "192.168.1.10", "0e:00:00:00:00:0a", `"fd00:10:244::/64", "10.244.0.0/24"`) + "]", testSelf, []Node{}},
		{"pod CIDRs IPv6 first", withEntry(peerLine("node-b", "192.168.1.11", "0e:00:00:00:00:0b", `"fd00:10:244:1::/64", "10.244.1.0/24"`)),
			testSelf, []Node{{Name: "node-b", Address: nodeB.Address, VTEPMAC: nodeB.VTEPMAC, PodCIDRs: prefixes("fd00:10:244:1::/64", "10.244.1.0/24")}}},
		{"IPv6 only, IPv6 underlay", withEntry(peerLine("node-b", "2001:db8::11", "0e:00:00:00:00:0b", `"fd00:10:244:1::/64"`)),
			testSelf, []Node{{Name: "node-b", Address: netip.MustParseAddr("2001:db8::11"), VTEPMAC: nodeB.VTEPMAC, PodCIDRs: prefixes("fd00:10:244:1::/64")}}},
		{"loopback underlay", withEntry(peerLine("node-b", "127.0.0.2", "0e:00:00:00:00:0b", `"10.244.1.0/24"`)),
			testSelf, []Node{{Name: "node-b", Address: netip.MustParseAddr("127.0.0.2"), VTEPMAC: nodeB.VTEPMAC, PodCIDRs: prefixes("10.244.1.0/24")}}},
		{"adjacent pod CIDRs", withEntry(peerLine("node-b", "192.168.1.11", "0e:00:00:00:00:0b", `"10.244.1.0/24", "fd00:10:244:1::/64"`)),
			testSelf, []Node{nodeB}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParsePeers([]byte(tc.data), tc.self)
			if err != nil {
				t.Fatalf("ParsePeers: %v", err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("ParsePeers = %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// TestParsePeersErrors checks that each mistake is refused with a message
// that names the place: the line and column, or the line, entry and field.
func TestParsePeersErrors(t *testing.T) {
	b := func(addr, mac, cidrs string) string { return withEntry(peerLine("node-b", addr, mac, cidrs)) }
	const (
		addrB  = "192.168.1.11"
		macB   = "0e:00:00:00:00:0b"
		cidrsB = `"10.244.1.0/24"`
	)
	for _, tc := range []struct {
		name string
		data string
		want string // the whole message after "overlay: peers: "
	}{
		// The file as a whole.
		{"empty", "  \n", `empty; want a JSON array ([] for no peers)`},
		{"null", "null", `null; want a JSON array ([] for no peers)`},
		{"object", `{"name": "node-b"}`, `want a JSON array of peers, found an object`},
		{"syntax", "[\n  {\"name\": \"node-b\" \"address\": \"192.168.1.11\"}\n]",
			`line 2 column 21: invalid character '"' after object key:value pair`},
		{"trailing comma", "[\n  {\"name\": \"node-b\"},\n]", `line 3 column 1: invalid character ']' looking for beginning of value`},
		{"truncated", "[\n  {\"name\": \"node-b\"", `line 2 column 19: unexpected end of JSON input`},
		{"after the array", "[]\nx", `line 2 column 1: invalid character 'x' after top-level value`},

		// One entry's shape.
		{"entry not an object", withEntry(`"node-b"`), `line 3: entry 1: want an object {"name", ...}, found a string`},
		{"entry null", withEntry(`null`), `line 3: entry 1: want an object {"name", ...}, found null`},
		{"unknown field", withEntry(`{"name": "node-b", "vtepmac": "0e:00:00:00:00:0b"}`),
			`line 3: entry 1 "node-b": unknown field "vtepmac"; want name, address, vtep_mac, pod_cidrs`},
		{"key case", withEntry(`{"Name": "node-b"}`),
			`line 3: entry 1: unknown field "Name"; want name, address, vtep_mac, pod_cidrs`},
		{"name not a string", withEntry(`{"name": 7}`), `line 3: entry 1: name: want a string, found a number`},
		{"address not a string", withEntry(`{"name": "node-b", "address": ["192.168.1.11"]}`),
			`line 3: entry 1 "node-b": address: want a string, found an array`},
		{"pod_cidrs not an array", withEntry(`{"name": "node-b", "address": "192.168.1.11", "vtep_mac": "0e:00:00:00:00:0b", "pod_cidrs": "10.244.1.0/24"}`),
			`line 3: entry 1 "node-b": pod_cidrs: want an array of strings, found a string`},
		{"pod_cidrs element not a string", b(addrB, macB, `"10.244.1.0/24", 6`),
			`line 3: entry 1 "node-b": pod_cidrs[1]: want a string, found a number`},

		// Name.
		{"name missing", withEntry(`{"address": "192.168.1.11", "vtep_mac": "0e:00:00:00:00:0b", "pod_cidrs": ["10.244.1.0/24"]}`),
			`line 3: entry 1: name: missing`},
		{"name with space", withEntry(peerLine("node b", addrB, macB, cidrsB)),
			`line 3: entry 1 "node b": name "node b": space or control character at byte 4`},

		// Address.
		{"address missing", b("", macB, cidrsB), `line 3: entry 1 "node-b": address: missing`},
		{"address invalid", b("192.168.1.300", macB, cidrsB),
			`line 3: entry 1 "node-b": address: ParseAddr("192.168.1.300"): IPv4 field has value >255`},
		{"address with zone", b("fe80::1%eth0", macB, cidrsB),
			`line 3: entry 1 "node-b": address fe80::1%eth0: has a zone; want an address without %zone`},
		{"address unspecified", b("0.0.0.0", macB, cidrsB), `line 3: entry 1 "node-b": address 0.0.0.0: unspecified`},
		{"address unspecified v6", b("::", macB, cidrsB), `line 3: entry 1 "node-b": address ::: unspecified`},
		{"address multicast", b("239.1.1.1", macB, cidrsB), `line 3: entry 1 "node-b": address 239.1.1.1: multicast`},
		{"address broadcast", b("255.255.255.255", macB, cidrsB), `line 3: entry 1 "node-b": address 255.255.255.255: broadcast`},
		{"address IPv4-mapped", b("::ffff:192.168.1.11", macB, cidrsB),
			`line 3: entry 1 "node-b": address ::ffff:192.168.1.11: IPv4-mapped; write it as 192.168.1.11`},

		// VTEP MAC.
		{"vtep_mac missing", b(addrB, "", cidrsB), `line 3: entry 1 "node-b": vtep_mac: missing`},
		{"vtep_mac zero", b(addrB, "00:00:00:00:00:00", cidrsB), `line 3: entry 1 "node-b": vtep_mac: missing`},
		{"vtep_mac invalid", b(addrB, "0e:00:00:00:0b", cidrsB),
			`line 3: entry 1 "node-b": vtep_mac "0e:00:00:00:0b": not a MAC address; want six bytes like 0e:00:00:00:00:01`},
		{"vtep_mac multicast", b(addrB, "01:00:5e:00:00:01", cidrsB),
			`line 3: entry 1 "node-b": vtep_mac 01:00:5e:00:00:01: multicast; want a unicast MAC`},
		{"vtep_mac broadcast", b(addrB, "ff:ff:ff:ff:ff:ff", cidrsB),
			`line 3: entry 1 "node-b": vtep_mac ff:ff:ff:ff:ff:ff: multicast; want a unicast MAC`},

		// Pod CIDRs.
		{"pod_cidrs missing", withEntry(`{"name": "node-b", "address": "192.168.1.11", "vtep_mac": "0e:00:00:00:00:0b"}`),
			`line 3: entry 1 "node-b": pod_cidrs: missing; want one IPv4 prefix, one IPv6 prefix, or both`},
		{"pod_cidrs empty", b(addrB, macB, ``),
			`line 3: entry 1 "node-b": pod_cidrs: missing; want one IPv4 prefix, one IPv6 prefix, or both`},
		{"pod_cidr invalid", b(addrB, macB, `"10.244.1.0/24", "fd00::/129"`),
			`line 3: entry 1 "node-b": pod_cidrs[1]: netip.ParsePrefix("fd00::/129"): prefix length out of range`},
		{"pod_cidr not a prefix", b(addrB, macB, `"10.244.1.0"`),
			`line 3: entry 1 "node-b": pod_cidrs[0]: netip.ParsePrefix("10.244.1.0"): no '/'`},
		{"pod_cidr host bits", b(addrB, macB, `"10.244.1.1/24"`),
			`line 3: entry 1 "node-b": pod_cidrs[0] 10.244.1.1/24: host bits set; want 10.244.1.0/24`},
		{"pod_cidr IPv4-mapped", b(addrB, macB, `"::ffff:10.244.1.0/120"`),
			`line 3: entry 1 "node-b": pod_cidrs[0] ::ffff:10.244.1.0/120: IPv4-mapped; write it as IPv4`},
		{"two IPv4 pod CIDRs", b(addrB, macB, `"10.244.1.0/24", "fd00:10:244:1::/64", "10.245.1.0/24"`),
			`line 3: entry 1 "node-b": pod_cidrs[2] 10.245.1.0/24: a second IPv4 prefix after pod_cidrs[0] 10.244.1.0/24; want at most one per family`},
		{"two IPv6 pod CIDRs", b(addrB, macB, `"fd00:10:244:1::/64", "fd00:10:244:2::/64"`),
			`line 3: entry 1 "node-b": pod_cidrs[1] fd00:10:244:2::/64: a second IPv6 prefix after pod_cidrs[0] fd00:10:244:1::/64; want at most one per family`},

		// Between entries.
		{"duplicate name", withEntry(peerLine("node-a", addrB, macB, cidrsB)),
			`line 3: entry 1 "node-a": name: also the name of entry 0 "node-a"`},
		{"duplicate address", b("192.168.1.10", macB, cidrsB),
			`line 3: entry 1 "node-b": address 192.168.1.10: also the address of entry 0 "node-a"`},
		{"duplicate vtep_mac", b(addrB, "0e:00:00:00:00:0a", cidrsB),
			`line 3: entry 1 "node-b": vtep_mac 0e:00:00:00:00:0a: also the VTEP MAC of entry 0 "node-a"`},
		{"same pod CIDR", b(addrB, macB, `"10.244.0.0/24"`),
			`line 3: entry 1 "node-b": pod_cidrs[0] 10.244.0.0/24: overlaps 10.244.0.0/24 of entry 0 "node-a"`},
		{"pod CIDR inside another", b(addrB, macB, `"10.244.1.0/24", "fd00:10:244::/80"`),
			`line 3: entry 1 "node-b": pod_cidrs[1] fd00:10:244::/80: overlaps fd00:10:244::/64 of entry 0 "node-a"`},
		{"pod CIDR around another", b(addrB, macB, `"10.0.0.0/8"`),
			`line 3: entry 1 "node-b": pod_cidrs[0] 10.0.0.0/8: overlaps 10.244.0.0/24 of entry 0 "node-a"`},
		{"overlap between peers", "[\n" +
			peerLine("node-b", addrB, macB, `"10.244.1.0/24"`) + ",\n" +
			peerLine("node-c", "192.168.1.12", "0e:00:00:00:00:0c", `"10.244.2.0/24"`) + ",\n" +
			peerLine("node-d", "192.168.1.13", "0e:00:00:00:00:0d", `"10.244.1.128/25"`) + "\n]",
			`line 4: entry 2 "node-d": pod_cidrs[0] 10.244.1.128/25: overlaps 10.244.1.0/24 of entry 0 "node-b"`},

		// Against this node.
		{"overlaps this node", "[\n" + peerLine("node-b", addrB, macB, `"10.244.0.0/16"`) + "]",
			`line 2: entry 0 "node-b": pod_cidrs[0] 10.244.0.0/16: overlaps 10.244.0.0/24 of this node`},
		{"this node's address", "[\n" + peerLine("node-b", "192.168.1.10", macB, cidrsB) + "]",
			`line 2: entry 0 "node-b": address 192.168.1.10: also the address of this node`},
		{"this node's VTEP MAC", "[\n" + peerLine("node-b", addrB, "0e:00:00:00:00:0a", cidrsB) + "]",
			`line 2: entry 0 "node-b": vtep_mac 0e:00:00:00:00:0a: also the VTEP MAC of this node`},
		{"own entry, other pod CIDRs", "[\n" + peerLine("node-a", "192.168.1.10", "0e:00:00:00:00:0a", `"10.244.0.0/24"`) + "]",
			`line 2: entry 0 "node-a": pod_cidrs [10.244.0.0/24]: this node's entry, but this node's pod CIDRs are [10.244.0.0/24 fd00:10:244::/64]`},
		{"own entry, other address", "[\n" + peerLine("node-a", "192.168.1.99", "0e:00:00:00:00:0a", `"10.244.0.0/24"`) + "]",
			`line 2: entry 0 "node-a": address 192.168.1.99: this node's entry, but this node's underlay address is 192.168.1.10`},
		{"own entry, other VTEP MAC", "[\n" + peerLine("node-a", "192.168.1.10", "0e:00:00:00:00:99", `"10.244.0.0/24"`) + "]",
			`line 2: entry 0 "node-a": vtep_mac 0e:00:00:00:00:99: this node's entry, but this node's VTEP MAC is 0e:00:00:00:00:0a`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParsePeers([]byte(tc.data), testSelf)
			if err == nil {
				t.Fatalf("ParsePeers = %+v, want error %q", got, tc.want)
			}
			if want := "overlay: peers: " + tc.want; err.Error() != want {
				t.Errorf("ParsePeers error\n got %s\nwant %s", err, want)
			}
			if got != nil {
				t.Errorf("ParsePeers = %+v with an error, want nil", got)
			}
			var ee *EntryError
			if strings.Contains(tc.want, "entry ") && !errors.As(err, &ee) {
				t.Errorf("ParsePeers error %q is not an *EntryError", err)
			}
		})
	}
}

// TestPeersRoundTrip checks the fixed interface: json.Marshal of nodes,
// as `tapswitchctl node -o json` prints each, is a peers file.
func TestPeersRoundTrip(t *testing.T) {
	self := Node{Name: "node-a", Address: testSelf.Address, VTEPMAC: testSelf.VTEPMAC, PodCIDRs: testSelf.PodCIDRs}
	data, err := json.MarshalIndent([]Node{self, nodeB, nodeC}, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	const wantB = `{
    "name": "node-b",
    "address": "192.168.1.11",
    "vtep_mac": "0e:00:00:00:00:0b",
    "pod_cidrs": [
      "10.244.1.0/24",
      "fd00:10:244:1::/64"
    ]
  }`
	if !strings.Contains(string(data), wantB) {
		t.Errorf("json.Marshal = %s\nwant it to hold %s", data, wantB)
	}
	path := filepath.Join(t.TempDir(), "peers.json")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := ReadPeers(path, testSelf)
	if err != nil {
		t.Fatalf("ReadPeers: %v", err)
	}
	if want := []Node{nodeB, nodeC}; !reflect.DeepEqual(got, want) {
		t.Errorf("ReadPeers = %+v, want %+v", got, want)
	}
}

func TestReadPeersErrors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.json")
	if _, err := ReadPeers(missing, testSelf); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("ReadPeers(missing) error = %v, want one that is os.ErrNotExist", err)
	}
	bad := filepath.Join(dir, "peers.json")
	if err := os.WriteFile(bad, []byte(withEntry(peerLine("node-b", "", "0e:00:00:00:00:0b", `"10.244.1.0/24"`))), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := ReadPeers(bad, testSelf)
	if want := "overlay: peers file " + bad + `: line 3: entry 1 "node-b": address: missing`; err == nil || err.Error() != want {
		t.Errorf("ReadPeers error = %v, want %s", err, want)
	}
	var ee *EntryError
	if !errors.As(err, &ee) || ee.Line != 3 || ee.Index != 1 || ee.Name != "node-b" {
		t.Errorf("ReadPeers error = %#v, want an *EntryError for line 3, entry 1, node-b", err)
	}
}

// TestCheckNodes checks the checks the Kubernetes source shares: errors
// name a node by its index in the slice and its name, with no line.
func TestCheckNodes(t *testing.T) {
	bad := nodeC
	bad.VTEPMAC = nodeB.VTEPMAC
	for _, tc := range []struct {
		name  string
		nodes []Node
		want  string
	}{
		{"good", []Node{nodeB, nodeC}, ""},
		{"none", nil, ""},
		{"one bad", []Node{nodeB, {Name: "node-x"}}, `entry 1 "node-x": address: missing`},
		{"clash", []Node{nodeB, bad}, `entry 1 "node-c": vtep_mac 0e:00:00:00:00:0b: also the VTEP MAC of entry 0 "node-b"`},
		{"overlap reported on the later", []Node{
			{Name: "n0", Address: netip.MustParseAddr("10.0.0.1"), VTEPMAC: mustMAC("0e:00:00:00:00:01"), PodCIDRs: prefixes("10.244.5.0/24")},
			{Name: "n1", Address: netip.MustParseAddr("10.0.0.2"), VTEPMAC: mustMAC("0e:00:00:00:00:02"), PodCIDRs: prefixes("10.244.0.0/16")},
		}, `entry 1 "n1": pod_cidrs[0] 10.244.0.0/16: overlaps 10.244.5.0/24 of entry 0 "n0"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckNodes(tc.nodes)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("CheckNodes = %v, want nil", err)
			case tc.want != "" && (err == nil || err.Error() != tc.want):
				t.Errorf("CheckNodes = %v, want %s", err, tc.want)
			}
		})
	}
}

func TestNodeCheck(t *testing.T) {
	if err := nodeB.Check(); err != nil {
		t.Errorf("Check(node-b) = %v, want nil", err)
	}
	n := nodeB
	n.PodCIDRs = []netip.Prefix{{}}
	if err := n.Check(); err == nil || err.Error() != "pod_cidrs[0]: invalid prefix" {
		t.Errorf("Check(zero prefix) = %v, want pod_cidrs[0]: invalid prefix", err)
	}
}
