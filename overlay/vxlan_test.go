package overlay

import (
	"net/netip"
	"strings"
	"testing"

	vswitch "tapswitch/switch"
)

func TestOptionsDefaults(t *testing.T) {
	o, err := VXLANOptions{VTEPMAC: testVTEP, RouterMAC: testRouter}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if o.Name != "vxlan" || o.Local != netip.MustParseAddrPort("0.0.0.0:8472") || o.VNI != 1 || o.MTU != 1450 || o.Logger == nil {
		t.Errorf("withDefaults() = %+v, want vxlan, 0.0.0.0:8472, VNI 1, MTU 1450 and a logger", o)
	}
	o, err = VXLANOptions{Local: netip.MustParseAddrPort("[::ffff:10.0.0.1]:4789"), VTEPMAC: testVTEP, RouterMAC: testRouter}.withDefaults()
	if err != nil || o.Local != netip.MustParseAddrPort("10.0.0.1:4789") {
		t.Errorf("withDefaults() = %v, %v, want 10.0.0.1:4789 unmapped", o.Local, err)
	}
}

func TestOptionsInvalid(t *testing.T) {
	ok := VXLANOptions{VTEPMAC: testVTEP, RouterMAC: testRouter}
	tests := []struct {
		name   string
		change func(*VXLANOptions)
		want   string
	}{
		{"no vtep mac", func(o *VXLANOptions) { o.VTEPMAC = vswitch.MAC{} }, "vtep mac"},
		{"multicast vtep mac", func(o *VXLANOptions) { o.VTEPMAC = vswitch.Broadcast }, "vtep mac"},
		{"no router mac", func(o *VXLANOptions) { o.RouterMAC = vswitch.MAC{} }, "router mac"},
		{"vni over 24 bits", func(o *VXLANOptions) { o.VNI = 1 << 24 }, "vni"},
		{"mtu too small", func(o *VXLANOptions) { o.MTU = 67 }, "mtu"},
		{"mtu too big", func(o *VXLANOptions) { o.MTU = maxMTU + 1 }, "mtu"},
		{"multicast local", func(o *VXLANOptions) { o.Local = netip.MustParseAddrPort("239.1.1.1:8472") }, "multicast"},
		{"zone", func(o *VXLANOptions) { o.Local = netip.MustParseAddrPort("[fe80::1%eth0]:8472") }, "zone"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := ok
			tt.change(&o)
			if _, err := o.withDefaults(); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("withDefaults() error = %v, want one about %s", err, tt.want)
			}
		})
	}
}

func TestSetVTEPs(t *testing.T) {
	p := newVXLAN(mustDefaults(t, VXLANOptions{Local: netip.MustParseAddrPort("192.0.2.1:8472"), VTEPMAC: testVTEP, RouterMAC: testRouter}))
	a := VTEP{Name: "a", Address: netip.MustParseAddr("192.0.2.2"), MAC: vswitch.MAC{2, 0, 0, 0, 0, 0xa}}
	b := VTEP{Address: netip.MustParseAddr("::ffff:192.0.2.3"), MAC: vswitch.MAC{2, 0, 0, 0, 0, 0xb}}
	bad := []VTEP{
		{Name: "v6", Address: netip.MustParseAddr("2001:db8::1"), MAC: vswitch.MAC{2, 0, 0, 0, 0, 1}},
		{Name: "none", MAC: vswitch.MAC{2, 0, 0, 0, 0, 2}},
		{Name: "unspecified", Address: netip.IPv4Unspecified(), MAC: vswitch.MAC{2, 0, 0, 0, 0, 3}},
		{Name: "multicast", Address: netip.MustParseAddr("224.0.0.1"), MAC: vswitch.MAC{2, 0, 0, 0, 0, 4}},
		{Name: "mac broadcast", Address: netip.MustParseAddr("192.0.2.9"), MAC: vswitch.Broadcast},
		{Name: "mac zero", Address: netip.MustParseAddr("192.0.2.9")},
		{Name: "mac ours", Address: netip.MustParseAddr("192.0.2.9"), MAC: testVTEP},
		{Name: "a", Address: netip.MustParseAddr("192.0.2.9"), MAC: vswitch.MAC{2, 0, 0, 0, 0, 5}},
		{Name: "same address", Address: a.Address, MAC: vswitch.MAC{2, 0, 0, 0, 0, 6}},
		{Name: "same mac", Address: netip.MustParseAddr("192.0.2.9"), MAC: a.MAC},
	}
	err := p.SetVTEPs(append([]VTEP{a, b}, bad...))
	if err == nil {
		t.Fatal("SetVTEPs(with bad entries) = nil, want an error")
	}
	for _, v := range bad {
		if !strings.Contains(err.Error(), "vtep "+v.Name+" ") {
			t.Errorf("SetVTEPs error does not name %q: %v", v.Name, err)
		}
	}
	st := p.VTEPStats()
	b.Name, b.Address = "192.0.2.3", b.Address.Unmap()
	if len(st) != 2 || st[0].VTEP != b || st[1].VTEP != a {
		t.Errorf("VTEPStats() = %+v, want %v and %v", st, b, a)
	}

	// Counters follow the name when the MAC and address change.
	p.vteps.Load().byMAC[a.MAC].c.txFrames.Add(3)
	a2 := VTEP{Name: "a", Address: netip.MustParseAddr("192.0.2.20"), MAC: vswitch.MAC{2, 0, 0, 0, 0, 0x2a}}
	if err := p.SetVTEPs([]VTEP{a2}); err != nil {
		t.Fatal(err)
	}
	if st := p.VTEPStats(); len(st) != 1 || st[0].VTEP != a2 || st[0].TxFrames != 3 {
		t.Errorf("VTEPStats() = %+v, want %v with TxFrames 3", st, a2)
	}
	if p.vteps.Load().byMAC[a.MAC] != nil {
		t.Errorf("old MAC %v still a VTEP", a.MAC)
	}
}

func mustDefaults(t testing.TB, o VXLANOptions) VXLANOptions {
	t.Helper()
	o, err := o.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	return o
}
