package overlay

import (
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	vswitch "tapswitch/switch"
)

var (
	_ vswitch.Port        = (*VXLAN)(nil)
	_ vswitch.DropCounter = (*VXLAN)(nil)
)

// Defaults are flannel's vxlan backend's.
const (
	DefaultPort = 8472
	DefaultVNI  = 1
	// DefaultMTU is the largest inner IP packet over a 1500-byte IPv4
	// underlay: 1500 less outer IPv4 (20), UDP (8), VXLAN (8) and inner
	// Ethernet (14). An IPv6 underlay costs 20 bytes more.
	DefaultMTU = 1450
)

// maxMTU is the largest MTU whose frames fit the pool's buffers.
const maxMTU = vswitch.SmallBufSize - vswitch.Headroom - vswitch.EtherHdrLen

// VXLANOptions configure a VXLAN port.
type VXLANOptions struct {
	// Name names the port in the switch's counters (default "vxlan").
	Name string
	// Local is the underlay address and UDP port to bind. The address
	// may be unspecified (0.0.0.0 or ::; invalid means 0.0.0.0) and sets
	// the socket's family; port 0 means DefaultPort. Datagrams go to the
	// same port on the remote VTEPs.
	Local netip.AddrPort
	// VNI is the VXLAN network identifier, 24 bits (0 means DefaultVNI).
	VNI uint32
	// VTEPMAC is this node's VTEP MAC (required, unicast): the source
	// MAC of the frames sent and the destination of those accepted.
	VTEPMAC vswitch.MAC
	// RouterMAC is the gateway's MAC (required, unicast): a frame for
	// VTEPMAC is handed to the switch with this destination MAC, so the
	// switch's router routes it to the local pod.
	RouterMAC vswitch.MAC
	// MTU is the largest inner IP packet (0 means DefaultMTU, which fits
	// a 1500-byte IPv4 underlay; over IPv6 the caller passes 20 less).
	MTU int
	// Logger receives lifecycle messages; nil discards them.
	Logger *slog.Logger
}

// withDefaults checks o and fills in its defaults.
func (o VXLANOptions) withDefaults() (VXLANOptions, error) {
	if o.Name == "" {
		o.Name = "vxlan"
	}
	a := o.Local.Addr().Unmap()
	if !a.IsValid() {
		a = netip.IPv4Unspecified()
	}
	port := o.Local.Port()
	if port == 0 {
		port = DefaultPort
	}
	o.Local = netip.AddrPortFrom(a, port)
	if o.VNI == 0 {
		o.VNI = DefaultVNI
	}
	if o.MTU == 0 {
		o.MTU = DefaultMTU
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case a.Zone() != "":
		return o, fmt.Errorf("overlay: %s: local address %v has a zone", o.Name, a)
	case a.IsMulticast():
		return o, fmt.Errorf("overlay: %s: local address %v is multicast", o.Name, a)
	case o.VNI > maxVNI:
		return o, fmt.Errorf("overlay: %s: vni %d: want 1 to %d", o.Name, o.VNI, maxVNI)
	case o.VTEPMAC.Multicast() || o.VTEPMAC.Zero():
		return o, fmt.Errorf("overlay: %s: vtep mac %s is not unicast", o.Name, o.VTEPMAC)
	case o.RouterMAC.Multicast() || o.RouterMAC.Zero():
		return o, fmt.Errorf("overlay: %s: router mac %s is not unicast", o.Name, o.RouterMAC)
	case o.MTU < 68 || o.MTU > maxMTU: // RFC 791's least MTU
		return o, fmt.Errorf("overlay: %s: mtu %d: want 68 to %d", o.Name, o.MTU, maxMTU)
	}
	return o, nil
}

// newVXLAN returns a port for o, which has its defaults, without its
// socket.
func newVXLAN(o VXLANOptions) *VXLAN {
	p := &VXLAN{
		name:      o.Name,
		caps:      vswitch.Caps{GSO: false, MaxFrame: o.MTU + vswitch.EtherHdrLen, NonBlockingWrite: true},
		local:     o.Local,
		vni:       o.VNI,
		vtepMAC:   o.VTEPMAC,
		routerMAC: o.RouterMAC,
		log:       o.Logger.With("port", o.Name),
		pool:      vswitch.NewPool(vswitch.SmallBufSize),
	}
	p.vteps.Store(&vtepTable{byMAC: map[vswitch.MAC]*vtep{}, byAddr: map[netip.Addr]*vtep{}})
	p.r.init(p)
	p.w.init(p)
	return p
}

// VXLAN is a vswitch.Port that carries frames to and from other nodes'
// VTEPs over one UDP socket. It has one receive queue; ReadBatch has one
// caller at a time, and so has WriteBatch. SetVTEPs, VTEPStats, Drops and
// Close may be called at any time, concurrently with both.
type VXLAN struct {
	name      string
	caps      vswitch.Caps
	local     netip.AddrPort // bound address and port
	vni       uint32
	vtepMAC   vswitch.MAC
	routerMAC vswitch.MAC
	log       *slog.Logger
	pool      *vswitch.Pool

	f      *os.File
	rc     syscall.RawConn
	closed atomic.Bool

	mu    sync.Mutex // serializes SetVTEPs
	vteps atomic.Pointer[vtepTable]

	r reader // state of the one ReadBatch in progress
	w writer // state of the one WriteBatch in progress

	drops [numDropReasons]atomic.Uint64
}

// Name returns the port name from VXLANOptions.Name.
func (p *VXLAN) Name() string { return p.name }

// Caps reports no GSO (the switch segments super-frames first), MTU plus
// the Ethernet header, and writes that never wait.
func (p *VXLAN) Caps() vswitch.Caps { return p.caps }

// Queues returns 1: one socket, one reader.
func (p *VXLAN) Queues() int { return 1 }

// Local returns the bound underlay address and port.
func (p *VXLAN) Local() netip.AddrPort { return p.local }

// Drops returns the drop counters that are not zero, by reason, for the
// switch's statistics (vswitch.DropCounter).
func (p *VXLAN) Drops() map[string]uint64 {
	m := make(map[string]uint64)
	for r := range numDropReasons {
		if n := p.drops[r].Load(); n != 0 {
			m[r.String()] = n
		}
	}
	return m
}

func (p *VXLAN) drop(r dropReason, n int) { p.drops[r].Add(uint64(n)) }

func releaseFrames(frames []*vswitch.Frame) {
	for _, f := range frames {
		f.Release()
	}
}
