// Package nodenet is the node side of route mode: tapswitchd routes pod
// traffic to the node's kernel through the host port device (tsw0), and
// the kernel forwards it like any CNI's veth traffic. That needs
// forwarding on (EnableForwarding) and a table of the daemon's own,
// `table inet tapswitch`, which Rules keeps:
//
//   - postrouting: masquerade for pod traffic leaving the cluster CIDRs,
//     hairpin masquerade for a pod reaching its own hostPort, and
//     masquerade for the node's loopback connections to hostPorts;
//   - prerouting and output: a DNAT per hostPort, for connections from
//     outside (and from pods) and for those the node itself opens;
//   - localnet_guard: drops loopback addresses arriving from the host port,
//     because loopback hostPorts need route_localnet on it.
//
// Model. Sync rewrites the whole table in one nft transaction, which the
// kernel applies whole or not at all, so the table only ever holds one
// Config's rules; no other table is read or written. Drifted compares the
// table with what the last Sync wrote, so the daemon can notice someone
// else's changes and Sync again.
//
// Everything acts on the network namespace of the calling thread: the nft
// command that knftables runs for each call inherits it, and /proc/sys/net
// is per namespace. The daemon calls from the node's namespace; tests call
// through netnsutil.Do. Rules starts no goroutines; its methods may be
// called from several goroutines and take turns.
package nodenet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"slices"
	"strings"
	"sync"

	"sigs.k8s.io/knftables"
)

// DefaultTable is the name of the daemon's table when Options.Table is
// empty.
const DefaultTable = "tapswitch"

// Options configures New.
type Options struct {
	// Table is the name of the inet table; "" means DefaultTable.
	Table string
	// Logger gets lifecycle messages; nil discards them.
	Logger *slog.Logger
	// NFT runs the transactions; nil means knftables' real one, which runs
	// the nft command. Tests pass knftables.NewFake(knftables.InetFamily,
	// Table).
	NFT knftables.Interface
	// SysctlDir is where sysctls are written; "" means /proc/sys. Tests
	// that use a fake NFT point it at a directory of their own.
	SysctlDir string
}

// Rules keeps the daemon's nftables table. Create it with New.
type Rules struct {
	nft       knftables.Interface
	table     string
	sysctlDir string
	log       *slog.Logger

	// mu makes Sync, Drifted and Delete take turns, so want always
	// describes the last transaction that ran. It is held while nft runs;
	// nothing on the frame path waits for it.
	mu sync.Mutex
	// want is what the table held right after the last Sync: nil after
	// Delete and before the first Sync, which means no table.
	want *snapshot
}

// New checks that nftables works here and returns a Rules for the table.
// With Options.NFT nil it needs the nft command, 1.0.1 or newer, and a
// kernel with nf_tables; its errors say which is missing.
func New(opts Options) (*Rules, error) {
	r := &Rules{
		nft:       opts.NFT,
		table:     opts.Table,
		sysctlDir: opts.SysctlDir,
		log:       opts.Logger,
	}
	if r.table == "" {
		r.table = DefaultTable
	}
	if r.sysctlDir == "" {
		r.sysctlDir = procSys
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	if msg := checkTableName(r.table); msg != "" {
		return nil, fmt.Errorf("nodenet: table name %q: %s", r.table, msg)
	}
	if r.nft == nil {
		// knftables.New runs `nft --version` and `nft --check add table`,
		// which asks the kernel without changing anything.
		nft, err := knftables.New(knftables.InetFamily, r.table)
		if err != nil {
			return nil, newError(err)
		}
		r.nft = nft
	}
	r.log = r.log.With("table", "inet "+r.table)
	return r, nil
}

// newError explains an error from knftables.New.
func newError(err error) error {
	msg := err.Error()
	switch {
	case errors.Is(err, exec.ErrNotFound):
		return fmt.Errorf("nodenet: no nft command: install the nftables package; "+
			"iptables-only nodes are not supported: %w", err)
	case strings.Contains(msg, "Operation not permitted"):
		return fmt.Errorf("nodenet: nft is not allowed to change tables; the daemon needs CAP_NET_ADMIN: %w", err)
	case strings.Contains(msg, "Protocol not supported"), strings.Contains(msg, "Operation not supported"):
		return fmt.Errorf("nodenet: the kernel has no nf_tables (CONFIG_NF_TABLES, modprobe nf_tables): %w", err)
	}
	return fmt.Errorf("nodenet: nftables does not work here (needs nft 1.0.1 or newer and a kernel with nf_tables): %w", err)
}

// Sync makes the table hold exactly cfg's rules. It validates cfg first
// (errors wrap ErrInvalidConfig, and nothing is touched). When an IPv4
// hostPort is reachable on loopback, it sets route_localnet on the host
// port device, which must exist. It then deletes and re-creates the table
// in one transaction: nft applies it whole or not at all, and rewriting
// the table rather than flushing it also replaces chains whose hook or
// priority someone changed and removes objects someone added. Other
// tables are never touched.
func (r *Rules) Sync(ctx context.Context, cfg Config) error {
	if err := cfg.validate(); err != nil {
		return err
	}
	if cfg.needsRouteLocalnet() {
		changed, err := ensureRouteLocalnet(r.sysctlDir, cfg.HostPort)
		if err != nil {
			return err
		}
		if changed {
			r.log.Info("enabled route_localnet for loopback hostPorts", "device", cfg.HostPort)
		}
	}

	tx := r.nft.NewTransaction()
	tx.Add(&knftables.Table{}) // so that the delete finds one
	tx.Delete(&knftables.Table{})
	tx.Add(&knftables.Table{Comment: knftables.PtrTo(tableComment)})
	for _, c := range chains() {
		tx.Add(c)
	}
	rules := ruleset(cfg)
	for _, rule := range rules {
		tx.Add(rule)
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.nft.Run(ctx, tx); err != nil {
		return fmt.Errorf("nodenet: write table inet %s: %w", r.table, err)
	}
	// Read the handles back, so Drifted also notices a rule that was
	// deleted and added again. If the table is not what this transaction
	// wrote (someone changed it in between), remember what was written
	// without handles: Drifted then reports drift.
	want := wrote(rules)
	got, err := r.list(ctx)
	if err == nil && got.sameComments(want) {
		want = got
	}
	r.want = want
	r.log.Debug("wrote table", "rules", len(rules), "host_ports", len(cfg.HostPorts))
	if err != nil {
		return fmt.Errorf("nodenet: read back table inet %s: %w", r.table, err)
	}
	return nil
}

// Drifted reports whether the table differs from what the last Sync wrote:
// it was deleted, a chain was deleted or added, a rule was deleted, added,
// moved, or replaced by one with another comment, or a set, map or other
// object was added. Before the first Sync and after Delete it reports
// whether the table exists.
//
// knftables lists rules with their comments and handles but not their
// bodies, so a rule replaced in place (`nft replace rule ... handle N`)
// with its comment copied is not noticed.
func (r *Rules) Drifted(ctx context.Context) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	got, err := r.list(ctx)
	if knftables.IsNotFound(err) {
		return r.want != nil, nil
	}
	if err != nil {
		return false, fmt.Errorf("nodenet: list table inet %s: %w", r.table, err)
	}
	return r.want == nil || !got.equal(r.want), nil
}

// Delete removes the table; it is no error if there is none. The sysctls
// Sync and EnableForwarding set stay as they are: other software on the
// node may rely on them.
func (r *Rules) Delete(ctx context.Context) error {
	tx := r.nft.NewTransaction()
	// Adding first makes the delete succeed on nft versions without
	// `destroy` (1.0.8) when there is no table.
	tx.Add(&knftables.Table{})
	tx.Delete(&knftables.Table{})

	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.nft.Run(ctx, tx); err != nil {
		return fmt.Errorf("nodenet: delete table inet %s: %w", r.table, err)
	}
	r.want = nil
	r.log.Info("deleted table")
	return nil
}

// snapshot is what Drifted compares: the table's objects other than rules,
// by type and name, and each chain's rules in order.
type snapshot struct {
	objects map[string][]string // "chain" → sorted names; also "set", "map"...
	rules   map[string][]ruleID // chain → its rules in order
}

// ruleID identifies a rule: its comment, and its handle when known (0 when
// not: nft handles start at 1).
type ruleID struct {
	comment string
	handle  int
}

// wrote returns the snapshot of a table just written with rules, handles
// unknown.
func wrote(rules []*knftables.Rule) *snapshot {
	s := &snapshot{objects: map[string][]string{}, rules: map[string][]ruleID{}}
	for _, c := range chains() {
		s.objects["chain"] = append(s.objects["chain"], c.Name)
		s.rules[c.Name] = nil
	}
	slices.Sort(s.objects["chain"])
	for _, rule := range rules {
		s.rules[rule.Chain] = append(s.rules[rule.Chain], ruleID{comment: *rule.Comment})
	}
	return s
}

// list reads the table's snapshot. A missing table is an error for which
// knftables.IsNotFound is true.
func (r *Rules) list(ctx context.Context) (*snapshot, error) {
	all, err := r.nft.ListAll(ctx)
	if err != nil {
		return nil, err
	}
	rules, err := r.nft.ListRules(ctx, "")
	if err != nil {
		return nil, err
	}
	s := &snapshot{objects: map[string][]string{}, rules: map[string][]ruleID{}}
	for typ, names := range all {
		if typ == "table" || typ == "rule" { // nft lists them; they have names or not
			continue
		}
		s.objects[typ] = slices.Sorted(slices.Values(names))
	}
	for _, name := range s.objects["chain"] {
		s.rules[name] = nil
	}
	for _, rule := range rules {
		id := ruleID{}
		if rule.Comment != nil {
			id.comment = *rule.Comment
		}
		if rule.Handle != nil {
			id.handle = *rule.Handle
		}
		s.rules[rule.Chain] = append(s.rules[rule.Chain], id)
	}
	return s, nil
}

// equal reports whether s and o have the same objects and rules, handles
// included.
func (s *snapshot) equal(o *snapshot) bool {
	return s.sameObjects(o) && equalMap(s.rules, o.rules, slices.Equal)
}

// sameComments is equal, ignoring handles.
func (s *snapshot) sameComments(o *snapshot) bool {
	sameComments := func(a, b []ruleID) bool {
		return slices.EqualFunc(a, b, func(x, y ruleID) bool { return x.comment == y.comment })
	}
	return s.sameObjects(o) && equalMap(s.rules, o.rules, sameComments)
}

func (s *snapshot) sameObjects(o *snapshot) bool {
	return equalMap(s.objects, o.objects, slices.Equal)
}

// equalMap reports whether a and b have the same keys and eq holds for
// each key's values.
func equalMap[V any](a, b map[string]V, eq func(V, V) bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k, va := range a {
		vb, ok := b[k]
		if !ok || !eq(va, vb) {
			return false
		}
	}
	return true
}

// checkTableName returns what makes name unusable as the table's name in
// nft's syntax without quoting, or "".
func checkTableName(name string) string {
	if len(name) > 64 {
		return "longer than 64 bytes"
	}
	for i, c := range name {
		letter := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
		if !letter && (i == 0 || !(c >= '0' && c <= '9' || c == '_' || c == '-')) {
			return "want a letter, then letters, digits, _ or -"
		}
	}
	return ""
}
