package vswitch_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"slices"
	"testing"

	vswitch "tapswitch/switch"
	"tapswitch/switch/porttest"
)

// The ARP tests' hosts: a pod asking on port 0, the pod that owns the bound
// address on port 1, and a bystander port 2.
var (
	askerMAC = porttest.MAC(0x01)
	askerIP  = netip.MustParseAddr("10.0.0.1")
	boundMAC = porttest.MAC(0x02)
	boundIP  = netip.MustParseAddr("10.0.0.2")
	otherMAC = porttest.MAC(0x03) // a second host behind port 1
	otherIP  = netip.MustParseAddr("10.0.0.3")
)

// wantReply is the answer to "who has 10.0.0.2, tell 10.0.0.1", written out
// by hand from RFC 826.
var wantReply = []byte{
	// Ethernet: to the asker, from the bound MAC, type ARP.
	0x02, 0x00, 0x00, 0x00, 0x00, 0x01,
	0x02, 0x00, 0x00, 0x00, 0x00, 0x02,
	0x08, 0x06,
	// htype Ethernet, ptype IPv4, hlen 6, plen 4, op reply.
	0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x02,
	// sender: the bound MAC and address.
	0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 10, 0, 0, 2,
	// target: the asker.
	0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 10, 0, 0, 1,
}

// newARPSwitch returns three ports with boundIP bound to boundMAC on port 1.
func newARPSwitch(t *testing.T) *testSwitch {
	t.Helper()
	ts := newTestSwitch(t, vswitch.Options{}, newPorts(3)...)
	if err := ts.sw.Bind(vswitch.Binding{IP: boundIP, MAC: boundMAC, Port: ts.ids[1]}); err != nil {
		t.Fatalf("Bind(%v) = %v", boundIP, err)
	}
	return ts
}

// arpWith returns a copy of the request for boundIP from the asker with
// fn applied to its ARP payload.
func arpWith(fn func(a []byte)) []byte {
	f := porttest.ARPRequest(askerMAC, askerIP, boundIP)
	fn(f[vswitch.EtherHdrLen:])
	return f
}

func TestARPResponder(t *testing.T) {
	request := porttest.ARPRequest(askerMAC, askerIP, boundIP)
	tests := []struct {
		name      string
		from      int
		frame     []byte
		wantReply []byte // written to the asking port, or nil
		wantTo    []int  // ports the frame itself is forwarded to
	}{
		{
			name:      "bound address on another port",
			from:      0,
			frame:     request,
			wantReply: wantReply,
		},
		{
			name:      "unpadded request",
			from:      0,
			frame:     request[:42],
			wantReply: wantReply,
		},
		{
			name:      "unicast request",
			from:      0,
			frame:     porttest.ARP(1, askerMAC, askerIP, vswitch.MAC{}, boundIP, boundMAC),
			wantReply: wantReply,
		},
		{
			name:   "unknown address",
			from:   0,
			frame:  porttest.ARPRequest(askerMAC, askerIP, netip.MustParseAddr("10.0.0.99")),
			wantTo: []int{1, 2},
		},
		{
			name:   "gratuitous ARP for a bound address",
			from:   0,
			frame:  porttest.ARPRequest(askerMAC, boundIP, boundIP),
			wantTo: []int{1, 2},
		},
		{
			name:   "gratuitous ARP of the owner",
			from:   1,
			frame:  porttest.ARPRequest(boundMAC, boundIP, boundIP),
			wantTo: []int{0, 2},
		},
		{
			name:   "target on the asking port",
			from:   1,
			frame:  porttest.ARPRequest(otherMAC, otherIP, boundIP),
			wantTo: []int{0, 2},
		},
		{
			name:   "reply is forwarded",
			from:   0,
			frame:  porttest.ARP(2, askerMAC, askerIP, boundMAC, boundIP, vswitch.Broadcast),
			wantTo: []int{1, 2},
		},
		{
			name:   "reply claiming a bound address is forwarded",
			from:   2,
			frame:  porttest.ARP(2, porttest.MAC(0x66), boundIP, askerMAC, askerIP, vswitch.Broadcast),
			wantTo: []int{0, 1},
		},
		{
			name:   "no payload",
			from:   0,
			frame:  request[:vswitch.EtherHdrLen],
			wantTo: []int{1, 2},
		},
		{
			name:   "payload one byte short",
			from:   0,
			frame:  request[:41],
			wantTo: []int{1, 2},
		},
		{
			name:   "htype IEEE 802",
			from:   0,
			frame:  arpWith(func(a []byte) { binary.BigEndian.PutUint16(a[0:], 6) }),
			wantTo: []int{1, 2},
		},
		{
			name:   "ptype IPv6",
			from:   0,
			frame:  arpWith(func(a []byte) { binary.BigEndian.PutUint16(a[2:], vswitch.EtherTypeIP6) }),
			wantTo: []int{1, 2},
		},
		{
			name:   "hlen 8",
			from:   0,
			frame:  arpWith(func(a []byte) { a[4] = 8 }),
			wantTo: []int{1, 2},
		},
		{
			name:   "plen 16",
			from:   0,
			frame:  arpWith(func(a []byte) { a[5] = 16 }),
			wantTo: []int{1, 2},
		},
		{
			name:   "op RARP request",
			from:   0,
			frame:  arpWith(func(a []byte) { binary.BigEndian.PutUint16(a[6:], 3) }),
			wantTo: []int{1, 2},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := newARPSwitch(t)
			ts.inject(tt.from, tt.frame)
			ts.settle()

			for i := range ts.ports {
				var want [][]byte
				if i == tt.from && tt.wantReply != nil {
					want = append(want, tt.wantReply)
				}
				if slices.Contains(tt.wantTo, i) {
					want = append(want, tt.frame)
				}
				if got := ts.data(i); !equalFrames(got, want) {
					t.Errorf("port %d got %s, want %s", i, describe(got), describe(want))
					if i == tt.from && len(got) == 1 && tt.wantReply != nil {
						t.Errorf("reply\n% x, want\n% x", got[0], tt.wantReply)
					}
				}
			}
			var wantReplies uint64
			if tt.wantReply != nil {
				wantReplies = 1
			}
			for i := range ts.ports {
				st := ts.stats(i)
				want := uint64(0)
				if i == tt.from {
					want = wantReplies
				}
				if st.ARPReplies != want {
					t.Errorf("port %d ARPReplies = %d, want %d", i, st.ARPReplies, want)
				}
				if st.TotalDrops() != 0 {
					t.Errorf("port %d Drops = %v, want none", i, st.Drops)
				}
			}
		})
	}
}

func TestARPReplyBytes(t *testing.T) {
	if len(wantReply) != 42 {
		t.Fatalf("len(wantReply) = %d, want 42", len(wantReply))
	}
	req := vswitch.Ether(porttest.ARPRequest(askerMAC, askerIP, boundIP))
	dst := bytes.Repeat([]byte{0xee}, 64)
	n := vswitch.WriteARPReply(dst, req, vswitch.Binding{IP: boundIP, MAC: boundMAC, Port: 2})
	if n != 42 || !bytes.Equal(dst[:n], wantReply) {
		t.Errorf("WriteARPReply() = %d, % x, want 42, % x", n, dst[:n], wantReply)
	}
	if !bytes.Equal(dst[42:], bytes.Repeat([]byte{0xee}, 22)) {
		t.Errorf("WriteARPReply() wrote past the reply: % x", dst[42:])
	}
}

func TestBind(t *testing.T) {
	ts := newTestSwitch(t, vswitch.Options{}, newPorts(3)...)
	sw := ts.sw

	errTests := []struct {
		name string
		b    vswitch.Binding
		want error // nil: any error
	}{
		{"unknown port", vswitch.Binding{IP: boundIP, MAC: boundMAC, Port: 99}, vswitch.ErrNoPort},
		{"port zero", vswitch.Binding{IP: boundIP, MAC: boundMAC}, vswitch.ErrNoPort},
		{"invalid address", vswitch.Binding{MAC: boundMAC, Port: ts.ids[1]}, nil},
	}
	for _, tt := range errTests {
		t.Run(tt.name, func(t *testing.T) {
			err := sw.Bind(tt.b)
			if err == nil || (tt.want != nil && !errors.Is(err, tt.want)) {
				t.Errorf("Bind(%+v) = %v, want an error (%v)", tt.b, err, tt.want)
			}
		})
	}
	if got := sw.Bindings(); len(got) != 0 {
		t.Fatalf("Bindings() = %v after failed Binds, want none", got)
	}

	// An IPv4-mapped IPv6 address binds the IPv4 address.
	mapped := netip.AddrFrom16(boundIP.As16())
	if err := sw.Bind(vswitch.Binding{IP: mapped, MAC: boundMAC, Port: ts.ids[1]}); err != nil {
		t.Fatalf("Bind(%v) = %v", mapped, err)
	}
	want := []vswitch.Binding{{IP: boundIP, MAC: boundMAC, Port: ts.ids[1]}}
	if got := sw.Bindings(); !slices.Equal(got, want) {
		t.Errorf("Bindings() = %v, want %v", got, want)
	}

	// Answered twice while bound, flooded once unbound.
	req := porttest.ARPRequest(askerMAC, askerIP, boundIP)
	ts.inject(0, req, req)
	ts.settle()
	sw.Unbind(mapped)
	if got := sw.Bindings(); len(got) != 0 {
		t.Errorf("Bindings() after Unbind = %v, want none", got)
	}
	ts.inject(0, req)
	ts.settle()

	if got, want := ts.data(0), [][]byte{wantReply, wantReply}; !equalFrames(got, want) {
		t.Errorf("port 0 got %s, want %s", describe(got), describe(want))
	}
	if got, want := ts.data(1), [][]byte{req}; !equalFrames(got, want) {
		t.Errorf("port 1 got %s, want %s", describe(got), describe(want))
	}
	if got := ts.stats(0).ARPReplies; got != 2 {
		t.Errorf("port 0 ARPReplies = %d, want 2", got)
	}
	sw.Unbind(boundIP) // unbinding twice is fine
}
