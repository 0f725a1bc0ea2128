package overlay

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	vswitch "tapswitch/switch"
)

// VTEP is a remote node's VXLAN tunnel endpoint: what the port needs to
// know of a peer.
type VTEP struct {
	// Name names the peer in VTEPStats (a node name); empty means the
	// address. Counters follow the name when the address or MAC changes.
	Name string
	// Address is the peer's underlay address, of the port's family.
	Address netip.Addr
	// MAC is the peer's VTEP MAC, the next hop of routes to its pods.
	MAC vswitch.MAC
}

// VTEPStats counts one remote VTEP's traffic since a VTEP of its name
// was set: the counters stay through changes of its address or MAC, and
// go when a SetVTEPs leaves the name out. Bytes are inner Ethernet frame bytes, without the VXLAN, UDP
// and IP headers.
type VTEPStats struct {
	VTEP
	TxFrames, TxBytes uint64
	RxFrames, RxBytes uint64
	// LastSeen is when the last packet from the VTEP was accepted; zero
	// if none was.
	LastSeen time.Time
}

// vtepTable is an immutable snapshot of the remote VTEPs, published by
// SetVTEPs and read by the frame path without locks.
type vtepTable struct {
	byMAC  map[vswitch.MAC]*vtep
	byAddr map[netip.Addr]*vtep
	list   []*vtep // by name
}

// vtep is one remote VTEP in a table.
type vtep struct {
	VTEP
	sa sockaddr // Address at the port's UDP port, for sendmmsg
	c  *vtepCounters
}

// vtepCounters outlive a table: SetVTEPs hands them on by name.
type vtepCounters struct {
	txFrames, txBytes atomic.Uint64
	rxFrames, rxBytes atomic.Uint64
	lastSeen          atomic.Int64 // Unix nanoseconds; 0: never
}

// SetVTEPs replaces the remote VTEPs: where a frame for each MAC is sent,
// and the addresses packets are accepted from. It is safe to call while
// traffic runs; each batch sees either the old set or the new one. A VTEP
// that is not valid (an address of the wrong family, unspecified,
// multicast or with a zone; a MAC that is not unicast or is ours; a name,
// address or MAC already taken by an earlier entry) is skipped, the others
// are applied, and the error names each one skipped.
func (p *VXLAN) SetVTEPs(vteps []VTEP) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	old := p.vteps.Load()
	oldByName := make(map[string]*vtepCounters, len(old.list))
	for _, v := range old.list {
		oldByName[v.Name] = v.c
	}
	t := &vtepTable{
		byMAC:  make(map[vswitch.MAC]*vtep, len(vteps)),
		byAddr: make(map[netip.Addr]*vtep, len(vteps)),
	}
	names := make(map[string]bool, len(vteps))
	var errs []error
	for _, in := range vteps {
		v := &vtep{VTEP: in}
		v.Address = v.Address.Unmap()
		if v.Name == "" {
			v.Name = v.Address.String()
		}
		err := p.checkVTEP(v.VTEP)
		switch {
		case err != nil:
		case names[v.Name]:
			err = errors.New("name already used")
		case t.byAddr[v.Address] != nil:
			err = fmt.Errorf("address already used by %s", t.byAddr[v.Address].Name)
		case t.byMAC[v.MAC] != nil:
			err = fmt.Errorf("mac already used by %s", t.byMAC[v.MAC].Name)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("overlay: %s: vtep %s (%v, %s): %w", p.name, v.Name, in.Address, in.MAC, err))
			continue
		}
		v.sa = newSockaddr(v.Address, p.local.Port())
		if v.c = oldByName[v.Name]; v.c == nil {
			v.c = new(vtepCounters)
		}
		names[v.Name] = true
		t.byMAC[v.MAC], t.byAddr[v.Address] = v, v
		t.list = append(t.list, v)
	}
	slices.SortFunc(t.list, func(a, b *vtep) int { return strings.Compare(a.Name, b.Name) })
	p.vteps.Store(t)
	p.log.Info("vteps set", "vteps", len(t.list), "skipped", len(errs))
	return errors.Join(errs...)
}

// checkVTEP reports what makes v unusable on this port, or nil.
func (p *VXLAN) checkVTEP(v VTEP) error {
	a := v.Address
	switch {
	case !a.IsValid():
		return errors.New("no address")
	case a.Zone() != "":
		return errors.New("address with a zone")
	case a.Is4() != p.local.Addr().Is4():
		return fmt.Errorf("address family differs from the local %v", p.local.Addr())
	case a.IsUnspecified() || a.IsMulticast():
		return errors.New("address is not unicast")
	case v.MAC.Multicast() || v.MAC.Zero():
		return errors.New("mac is not unicast")
	case v.MAC == p.vtepMAC:
		return errors.New("mac is our own")
	}
	return nil
}

// VTEPStats returns the counters of each remote VTEP, by name.
func (p *VXLAN) VTEPStats() []VTEPStats {
	t := p.vteps.Load()
	out := make([]VTEPStats, 0, len(t.list))
	for _, v := range t.list {
		st := VTEPStats{
			VTEP:     v.VTEP,
			TxFrames: v.c.txFrames.Load(),
			TxBytes:  v.c.txBytes.Load(),
			RxFrames: v.c.rxFrames.Load(),
			RxBytes:  v.c.rxBytes.Load(),
		}
		if ns := v.c.lastSeen.Load(); ns != 0 {
			st.LastSeen = time.Unix(0, ns)
		}
		out = append(out, st)
	}
	return out
}
