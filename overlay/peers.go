package overlay

// The peers file: the static membership of a pod network, the fixed
// interface of DESIGN.md. It is a JSON array with one object per node,
//
//	[{"name": "node-a", "address": "192.168.1.10", "vtep_mac": "0e:8a:00:00:00:01",
//	  "pod_cidrs": ["10.244.1.0/24", "fd00:10:244:1::/64"]}, ...]
//
// and `tapswitchctl node -o json` prints one node's own entry in that form,
// so a static cluster's file is its nodes' outputs put together and is the
// same on every node: each node finds itself in it by name and drops that
// entry.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"slices"
	"strings"
	"unicode"

	vswitch "tapswitch/switch"
)

// Node is one node of the pod network as the peers file and
// `tapswitchctl node -o json` describe it.
type Node struct {
	Name     string         `json:"name"`
	Address  netip.Addr     `json:"address"` // underlay address, where its VXLAN packets go
	VTEPMAC  vswitch.MAC    `json:"vtep_mac"`
	PodCIDRs []netip.Prefix `json:"pod_cidrs"` // at most one per family
}

// EntryError is what is wrong with one entry of a peers file, or with one
// node of a set given to CheckNodes. Its text names the entry and the
// field, as in
//
//	line 7: entry 1 "node-b": vtep_mac 01:00:5e:00:00:01: multicast; want a unicast MAC
type EntryError struct {
	Line  int    // line of the entry's opening brace; 0 when not from a file
	Index int    // position in the array, counted from 0 as in jq's .[1]
	Name  string // the entry's name; "" when it has none
	Err   error  // the field and what is wrong with it
}

func (e *EntryError) Error() string {
	var b strings.Builder
	if e.Line > 0 {
		fmt.Fprintf(&b, "line %d: ", e.Line)
	}
	fmt.Fprintf(&b, "entry %d", e.Index)
	if e.Name != "" {
		fmt.Fprintf(&b, " %q", e.Name)
	}
	b.WriteString(": ")
	b.WriteString(e.Err.Error())
	return b.String()
}

func (e *EntryError) Unwrap() error { return e.Err }

// Check reports the first thing wrong with n on its own, naming the field:
// a name that is empty or holds spaces or control characters; an address
// that is missing, has a zone, is IPv4-mapped, unspecified, multicast or
// the IPv4 broadcast address; a VTEP MAC that is missing or multicast; pod
// CIDRs that are missing, IPv4-mapped, have host bits set, or hold two
// prefixes of one family. Loopback and link-local addresses are allowed, so
// nodes simulated on one host work.
func (n Node) Check() error {
	if err := checkName(n.Name); err != nil {
		return err
	}
	if err := checkAddress(n.Address); err != nil {
		return err
	}
	switch {
	case n.VTEPMAC.Zero():
		return errors.New("vtep_mac: missing")
	case n.VTEPMAC.Multicast():
		return fmt.Errorf("vtep_mac %s: multicast; want a unicast MAC", n.VTEPMAC)
	}
	return checkPodCIDRs(n.PodCIDRs)
}

func checkName(name string) error {
	if name == "" {
		return errors.New("name: missing")
	}
	if i := strings.IndexFunc(name, func(r rune) bool {
		return unicode.IsSpace(r) || unicode.IsControl(r)
	}); i >= 0 {
		return fmt.Errorf("name %q: space or control character at byte %d", name, i)
	}
	return nil
}

func checkAddress(a netip.Addr) error {
	switch {
	case !a.IsValid():
		return errors.New("address: missing")
	case a.Zone() != "":
		return fmt.Errorf("address %s: has a zone; want an address without %%zone", a)
	case a.Is4In6():
		return fmt.Errorf("address %s: IPv4-mapped; write it as %s", a, a.Unmap())
	case a.IsUnspecified():
		return fmt.Errorf("address %s: unspecified", a)
	case a.IsMulticast():
		return fmt.Errorf("address %s: multicast", a)
	case a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return fmt.Errorf("address %s: broadcast", a)
	}
	return nil
}

func checkPodCIDRs(cidrs []netip.Prefix) error {
	if len(cidrs) == 0 {
		return errors.New("pod_cidrs: missing; want one IPv4 prefix, one IPv6 prefix, or both")
	}
	seen := map[int]int{} // bit length of the family → index of its prefix
	for i, p := range cidrs {
		switch {
		case !p.IsValid():
			return fmt.Errorf("pod_cidrs[%d]: invalid prefix", i)
		case p.Addr().Is4In6():
			return fmt.Errorf("pod_cidrs[%d] %s: IPv4-mapped; write it as IPv4", i, p)
		case p != p.Masked():
			return fmt.Errorf("pod_cidrs[%d] %s: host bits set; want %s", i, p, p.Masked())
		}
		if j, ok := seen[p.Addr().BitLen()]; ok {
			return fmt.Errorf("pod_cidrs[%d] %s: a second %s prefix after pod_cidrs[%d] %s; want at most one per family",
				i, p, family(p.Addr()), j, cidrs[j])
		}
		seen[p.Addr().BitLen()] = i
	}
	return nil
}

func family(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

// CheckNodes checks every node with Check and then the set: names,
// addresses and VTEP MACs unique, pod CIDRs not overlapping between nodes.
// It reports the first problem as an *EntryError naming the node by its
// index in nodes and its name, and a clash on the later of the two nodes.
func CheckNodes(nodes []Node) error {
	entries := make([]entry, len(nodes))
	for i, n := range nodes {
		entries[i] = entry{index: i, node: n}
	}
	return checkEntries(entries)
}

// entry is a node with where it came from, for error messages.
type entry struct {
	line  int  // 0 when not from a file
	index int  // in the file or the slice; -1 for this node when the file does not list it
	self  bool // this node's own settings, not an entry of the file
	node  Node
}

func (e entry) errorf(format string, args ...any) error {
	return &EntryError{Line: e.line, Index: e.index, Name: e.node.Name, Err: fmt.Errorf(format, args...)}
}

// describe names e as the other party of a clash.
func (e entry) describe() string {
	if e.self {
		return "this node"
	}
	return fmt.Sprintf("entry %d %q", e.index, e.node.Name)
}

// checkEntries runs Check on each entry but this node's own settings,
// then the checks between entries.
func checkEntries(entries []entry) error {
	for _, e := range entries {
		if e.self {
			continue // the daemon's flags, checked where they are parsed
		}
		if err := e.node.Check(); err != nil {
			return &EntryError{Line: e.line, Index: e.index, Name: e.node.Name, Err: err}
		}
	}
	names := map[string]entry{}
	addrs := map[netip.Addr]entry{}
	macs := map[vswitch.MAC]entry{}
	for _, e := range entries {
		n := e.node
		if o, ok := names[n.Name]; ok && n.Name != "" {
			return e.errorf("name: also the name of %s", o.describe())
		}
		names[n.Name] = e
		if o, ok := addrs[n.Address]; ok && n.Address.IsValid() {
			return e.errorf("address %s: also the address of %s", n.Address, o.describe())
		}
		addrs[n.Address] = e
		if o, ok := macs[n.VTEPMAC]; ok && !n.VTEPMAC.Zero() {
			return e.errorf("vtep_mac %s: also the VTEP MAC of %s", n.VTEPMAC, o.describe())
		}
		macs[n.VTEPMAC] = e
	}
	return checkOverlaps(entries)
}

// checkOverlaps refuses pod CIDRs of two entries that overlap. Prefixes
// either nest or are disjoint, so once sorted by address and then length,
// any overlap shows between neighbours: O(n log n) for a large cluster.
func checkOverlaps(entries []entry) error {
	type owned struct {
		p     netip.Prefix
		field int // index in pod_cidrs
		owner int // index in entries
	}
	var all []owned
	for i, e := range entries {
		for j, p := range e.node.PodCIDRs {
			all = append(all, owned{p: p, field: j, owner: i})
		}
	}
	slices.SortFunc(all, func(a, b owned) int {
		if c := a.p.Addr().Compare(b.p.Addr()); c != 0 {
			return c
		}
		return a.p.Bits() - b.p.Bits()
	})
	for k := 1; k < len(all); k++ {
		a, b := all[k-1], all[k]
		if a.owner == b.owner || !a.p.Overlaps(b.p) {
			continue
		}
		// Report on the later entry; this node's settings come first.
		if a.owner > b.owner {
			a, b = b, a
		}
		other := entries[a.owner]
		return entries[b.owner].errorf("pod_cidrs[%d] %s: overlaps %s of %s",
			b.field, b.p, a.p, other.describe())
	}
	return nil
}

// ParsePeers parses and checks a peers file's content. self is this node
// as the daemon's flags describe it: the entry named self.Name is this
// node's own, which ParsePeers checks against self's address, VTEP MAC and
// pod CIDRs (where self sets them) and leaves out of the result. Every
// other entry must differ from self in name, address and VTEP MAC, and
// its pod CIDRs must not overlap self's.
//
// An error names the line and column of a JSON syntax error, or the line,
// index and name of a bad entry and its field (an *EntryError).
func ParsePeers(data []byte, self Node) ([]Node, error) {
	peers, err := parsePeers(data, self)
	if err != nil {
		return nil, fmt.Errorf("overlay: peers: %w", err)
	}
	return peers, nil
}

// ReadPeers reads the peers file at path and parses it as ParsePeers does.
func ReadPeers(path string, self Node) ([]Node, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("overlay: %w", err)
	}
	peers, err := parsePeers(data, self)
	if err != nil {
		return nil, fmt.Errorf("overlay: peers file %s: %w", path, err)
	}
	return peers, nil
}

// parsePeers is ParsePeers without the prefix, for callers that name the
// file themselves.
func parsePeers(data []byte, self Node) ([]Node, error) {
	entries, err := decodePeers(data)
	if err != nil {
		return nil, err
	}
	own := slices.IndexFunc(entries, func(e entry) bool { return self.Name != "" && e.node.Name == self.Name })
	all := entries
	if own < 0 {
		// This node takes part in the checks between entries all the same.
		all = append([]entry{{index: -1, self: true, node: self}}, entries...)
	}
	if err := checkEntries(all); err != nil {
		return nil, err
	}
	if own >= 0 {
		if err := checkOwnEntry(entries[own], self); err != nil {
			return nil, err
		}
	}
	peers := make([]Node, 0, len(entries))
	for i, e := range entries {
		if i != own {
			peers = append(peers, e.node)
		}
	}
	return peers, nil
}

// checkOwnEntry refuses this node's entry when it disagrees with this
// node's settings: the other nodes would send to an address, a MAC or for
// pod CIDRs this node does not have.
func checkOwnEntry(e entry, self Node) error {
	n := e.node
	switch {
	case self.Address.IsValid() && n.Address != self.Address:
		return e.errorf("address %s: this node's entry, but this node's underlay address is %s", n.Address, self.Address)
	case !self.VTEPMAC.Zero() && n.VTEPMAC != self.VTEPMAC:
		return e.errorf("vtep_mac %s: this node's entry, but this node's VTEP MAC is %s", n.VTEPMAC, self.VTEPMAC)
	case len(self.PodCIDRs) > 0 && !samePrefixes(n.PodCIDRs, self.PodCIDRs):
		return e.errorf("pod_cidrs %v: this node's entry, but this node's pod CIDRs are %v", n.PodCIDRs, self.PodCIDRs)
	}
	return nil
}

// samePrefixes reports whether a and b hold the same prefixes in any order.
func samePrefixes(a, b []netip.Prefix) bool {
	if len(a) != len(b) {
		return false
	}
	for _, p := range a {
		if !slices.Contains(b, p) {
			return false
		}
	}
	return true
}

// peerFields are the keys of an entry, in the order of the fixed format.
var peerFields = []string{"name", "address", "vtep_mac", "pod_cidrs"}

// decodePeers turns the file's JSON into entries that know their line.
// Keys are matched exactly, unlike encoding/json's case-insensitive match,
// and unknown keys are refused, so a misspelt key is not silently ignored.
func decodePeers(data []byte) ([]entry, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, errors.New("empty; want a JSON array ([] for no peers)")
	}
	var raws []json.RawMessage
	if err := json.Unmarshal(data, &raws); err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			line, col := position(data, se.Offset-1)
			return nil, fmt.Errorf("line %d column %d: %w", line, col, err)
		}
		return nil, fmt.Errorf("want a JSON array of peers, found %s", kind(bytes.TrimSpace(data)))
	}
	if raws == nil {
		return nil, errors.New("null; want a JSON array ([] for no peers)")
	}
	starts, err := valueStarts(data, len(raws))
	if err != nil {
		return nil, err
	}
	entries := make([]entry, len(raws))
	for i, raw := range raws {
		line, _ := position(data, starts[i])
		entries[i] = entry{line: line, index: i}
		if err := decodeEntry(raw, &entries[i].node); err != nil {
			return nil, &EntryError{Line: line, Index: i, Name: entries[i].node.Name, Err: err}
		}
	}
	return entries, nil
}

// valueStarts returns the offset in data of each of the n values of the
// top-level array, which json.Unmarshal has already found valid.
func valueStarts(data []byte, n int) ([]int64, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	if _, err := dec.Token(); err != nil { // [
		return nil, err
	}
	starts := make([]int64, n)
	for i := range starts {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, err
		}
		starts[i] = dec.InputOffset() - int64(len(raw))
	}
	return starts, nil
}

// position returns the 1-based line and column (in bytes) of data[off].
func position(data []byte, off int64) (line, col int) {
	off = max(0, min(off, int64(len(data))))
	before := data[:off]
	line = 1 + bytes.Count(before, []byte("\n"))
	col = int(off) - bytes.LastIndexByte(before, '\n')
	return line, col
}

// decodeEntry fills n from one element of the array. It sets n.Name as
// soon as it has it, so errors about later fields can name the entry.
func decodeEntry(raw json.RawMessage, n *Node) error {
	if raw[0] != '{' {
		return fmt.Errorf("want an object {%q, ...}, found %s", "name", kind(raw))
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return err
	}
	if v, ok := fields["name"]; ok {
		if err := json.Unmarshal(v, &n.Name); err != nil {
			return fmt.Errorf("name: want a string, found %s", kind(v))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(fields)) {
		if !slices.Contains(peerFields, k) {
			return fmt.Errorf("unknown field %q; want %s", k, strings.Join(peerFields, ", "))
		}
	}
	var s string
	if v, ok := fields["address"]; ok {
		if err := json.Unmarshal(v, &s); err != nil {
			return fmt.Errorf("address: want a string, found %s", kind(v))
		}
		if s != "" {
			a, err := netip.ParseAddr(s)
			if err != nil {
				return fmt.Errorf("address: %w", err)
			}
			n.Address = a
		}
	}
	s = ""
	if v, ok := fields["vtep_mac"]; ok {
		if err := json.Unmarshal(v, &s); err != nil {
			return fmt.Errorf("vtep_mac: want a string, found %s", kind(v))
		}
		if s != "" {
			m, err := vswitch.ParseMAC(s)
			if err != nil {
				return fmt.Errorf("vtep_mac %q: not a MAC address; want six bytes like 0e:00:00:00:00:01", s)
			}
			n.VTEPMAC = m
		}
	}
	if v, ok := fields["pod_cidrs"]; ok {
		var elems []json.RawMessage
		if err := json.Unmarshal(v, &elems); err != nil {
			return fmt.Errorf("pod_cidrs: want an array of strings, found %s", kind(v))
		}
		for i, e := range elems {
			var s string
			if err := json.Unmarshal(e, &s); err != nil {
				return fmt.Errorf("pod_cidrs[%d]: want a string, found %s", i, kind(e))
			}
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return fmt.Errorf("pod_cidrs[%d]: %w", i, err)
			}
			n.PodCIDRs = append(n.PodCIDRs, p)
		}
	}
	return nil
}

// kind names the JSON value that starts raw, for "found ..." in messages.
func kind(raw []byte) string {
	if len(raw) == 0 {
		return "nothing"
	}
	switch raw[0] {
	case '{':
		return "an object"
	case '[':
		return "an array"
	case '"':
		return "a string"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	}
	return "a number"
}
