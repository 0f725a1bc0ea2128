// Package ipam hands out pod addresses and keeps them in a crash-safe
// store, so that an address is never lost and never handed out twice.
//
// # Layout
//
// An Allocator serves one IPv4 CIDR and optionally one IPv6 CIDR; a
// dual-stack attachment gets one address of each. In each CIDR the first
// usable address is the gateway (the netstack port), the last usable one
// is the host port tsw0 (IPv4: the one before broadcast; IPv6, which has
// no broadcast: the last address), and the addresses between them go to
// pods, except those in Config.Reserve. The network address is never
// handed out in either family.
//
// Leases are keyed by Key (container ID, interface name) as in the CNI
// spec: Allocate with a known key returns its lease (idempotent ADD),
// Release of an unknown key succeeds (idempotent DEL), GC releases every
// lease not in a live set.
//
// Adopt records a lease for addresses a pod already has, for the daemon's
// saved pods whose leases the store lost (the first start with a store, a
// store moved away, bbolt falling back one commit). It checks what
// Allocate guarantees by construction: one address per family with the
// CIDR's prefix length, a pod address outside every reserve range, not
// leased to another key. Adopting a key's own lease again returns it;
// adopting other addresses for a key that holds some is an error.
//
// Allocation rotates like the reference host-local plugin: each family
// keeps a cursor, the address handed out last, and the search starts
// after it, wrapping at the end. A released address therefore comes back
// only after the whole range has been used once, so a late packet for a
// deleted pod rarely reaches its successor. The search skips used
// addresses and reserve ranges one step each and never enumerates the
// range, so a /64 costs the same as a /24. Adopt does not move the
// cursors. Range sizes are counted in 128 bits and capped at 2^64-1 only
// at the end; a capped range is never exhausted.
//
// # Store
//
// A Store keeps the state; Bolt keeps it in a bbolt file, Mem in memory
// for tests. Both hold the same records:
//
//	bucket "meta"
//	  "stamp"    {"format":1,"v4":"10.244.0.0/24","v6":"fd00::/64"}
//	  "cursor4"  "10.244.0.17"   IPv4 address handed out last
//	  "cursor6"  "fd00::11"      IPv6 address handed out last
//	  "count"    "2"             number of lease records
//	bucket "leases"
//	  container ID + NUL + interface name
//	             {"key":{...},"ips":["10.244.0.17/24","fd00::11/64"],"since":"..."}
//
// Every value ends with a CRC-32C of its key and body: bbolt checksums
// only its meta pages, and a silently flipped bit in a lease would free an
// address that a pod still uses. The count catches what per-record
// checksums cannot: records lost or doubled by a damaged page. Values are
// JSON so that `bbolt get` shows them.
//
// Each change (one Allocate, Adopt, Release or GC) is one bbolt read-write
// transaction, synced to disk before the call returns; a crash leaves the
// store before or after the change, never between. The stamp names the
// CIDRs the leases belong to; it is written with the first commit, and a
// store stamped with other CIDRs is refused rather than re-numbering pods.
// A new store file is initialized beside its path and linked into place,
// so the path is missing or whole. Bolt holds the file's flock from
// OpenBolt to Close: a second daemon fails to open the store.
//
// bbolt checks no page but its meta pages, and its cursors follow branch
// pointers blindly: a branch element pointing back at its own page makes
// a cursor descend until the process dies of "out of memory", which no
// recover catches. So OpenBolt, before any cursor runs, walks the page
// tree itself, reading the file: from the root bucket's page and every
// bucket's root, each page must lie below the meta's high water mark,
// identify itself, be a branch or leaf page, be reached once and no
// deeper than 32 levels, and hold its elements inside it. Damage that
// passes the walk is bounded: bbolt's out-of-range reads become errors
// through a recover and SetPanicOnFault.
//
// Two limits are bbolt's own. It keeps two meta pages and, when the newer
// one does not pass its checksum, opens the store as of the commit
// before. That makes a meta write torn by a power cut safe, but damage to
// that page later loses the last change without an error. And a commit
// whose final sync fails returns an error although bbolt has written its
// meta page, which later transactions read: the change may be in the
// store after all. The Allocator therefore reloads memory from the store
// after every failed commit (below). The daemon's reconciliation of
// leases with existing pods, through Adopt, is the backstop for both.
//
// # Invariants
//
// Checked on load, where a violation is an error naming the store (a
// corrupt or unreadable store is never reset, and decoding never panics):
//   - every record decodes and its checksum matches, and the number of
//     lease records equals the stored count;
//   - the stamp equals the configured CIDRs;
//   - every lease has one address per configured family, in that family's
//     pod addresses, with the CIDR's prefix length;
//   - no address is leased twice.
//
// Kept at run time: a lease's addresses are outside every reserve range
// when it is made by Allocate or Adopt (leases made before a range was
// reserved are kept and listed by ReservedLeases); memory changes only
// after the store commits, so an exhausted family leaves nothing
// allocated. After a failed commit memory is reloaded from the store,
// since the change may be there anyway: memory then matches the store, and
// no address the store holds is handed out again. If the reload fails as
// well, the Allocator refuses changes (ErrBroken) until the daemon
// restarts; Get and List still answer.
//
// # Concurrency
//
// An Allocator is safe for concurrent use. One mutex guards its state and
// is held across each commit, so changes are serialized (bbolt allows one
// writer at a time anyway) and memory matches the store. Get, List and
// InUse take the same mutex and wait at most one commit. The package
// starts no goroutines.
package ipam
