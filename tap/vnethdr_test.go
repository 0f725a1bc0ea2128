package tap

import (
	"bytes"
	"testing"

	vswitch "tapswitch/switch"
)

func TestDecodeVnetHdr(t *testing.T) {
	tests := []struct {
		name    string
		in      []byte
		want    vswitch.Offload
		wantErr bool
	}{
		{name: "zero", in: make([]byte, 12), want: vswitch.Offload{}},
		{
			name: "tcpv4 tso with partial csum",
			// flags NEEDS_CSUM, TCPV4, hdr_len 66, gso_size 1448, csum 34+16
			in: []byte{1, 1, 66, 0, 0xa8, 0x05, 34, 0, 16, 0, 0, 0},
			want: vswitch.Offload{GSOType: vswitch.GSOTCPv4, GSOSize: 1448, HdrLen: 66,
				NeedsCsum: true, CsumStart: 34, CsumOffset: 16},
		},
		{
			name: "tcpv6",
			in:   []byte{1, 4, 86, 0, 0x94, 0x05, 54, 0, 16, 0, 0, 0},
			want: vswitch.Offload{GSOType: vswitch.GSOTCPv6, GSOSize: 1428, HdrLen: 86,
				NeedsCsum: true, CsumStart: 54, CsumOffset: 16},
		},
		{
			name: "udp l4",
			in:   []byte{1, 5, 42, 0, 0xc8, 0x05, 34, 0, 6, 0, 0, 0},
			want: vswitch.Offload{GSOType: vswitch.GSOUDPL4, GSOSize: 1480, HdrLen: 42,
				NeedsCsum: true, CsumStart: 34, CsumOffset: 6},
		},
		{name: "data valid", in: []byte{2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, want: vswitch.Offload{DataValid: true}},
		{name: "num_buffers ignored", in: []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7, 1}, want: vswitch.Offload{}},
		{name: "big endian would differ", in: []byte{0, 0, 0x01, 0x02, 0, 0, 0, 0, 0, 0, 0, 0}, want: vswitch.Offload{HdrLen: 0x0201}},
		{name: "ufo", in: []byte{0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, wantErr: true},
		{name: "ecn", in: []byte{0, 0x81, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, wantErr: true},
		{name: "unknown gso type", in: []byte{0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, wantErr: true},
		{name: "unknown flag", in: []byte{4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, wantErr: true},
		{name: "short", in: make([]byte, 11), wantErr: true},
		{name: "nil", in: nil, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decodeVnetHdr(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("decodeVnetHdr(% x) error = %v, want error %v", tt.in, err, tt.wantErr)
			}
			if err == nil && got != tt.want {
				t.Errorf("decodeVnetHdr(% x) = %+v, want %+v", tt.in, got, tt.want)
			}
		})
	}
}

func TestEncodeVnetHdr(t *testing.T) {
	tests := []struct {
		name    string
		in      vswitch.Offload
		want    []byte
		wantErr bool
	}{
		{name: "zero", in: vswitch.Offload{}, want: make([]byte, 12)},
		{
			name: "tcpv4",
			in: vswitch.Offload{GSOType: vswitch.GSOTCPv4, GSOSize: 1448, HdrLen: 66,
				NeedsCsum: true, CsumStart: 34, CsumOffset: 16},
			want: []byte{1, 1, 66, 0, 0xa8, 0x05, 34, 0, 16, 0, 0, 0},
		},
		{name: "both flags", in: vswitch.Offload{NeedsCsum: true, DataValid: true}, want: []byte{3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}},
		{name: "udp l4", in: vswitch.Offload{GSOType: vswitch.GSOUDPL4}, want: []byte{0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}},
		{name: "unknown type", in: vswitch.Offload{GSOType: 99}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Garbage first, so we see that every byte is written.
			b := bytes.Repeat([]byte{0xee}, 12)
			err := encodeVnetHdr(b, tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("encodeVnetHdr(%+v) error = %v, want error %v", tt.in, err, tt.wantErr)
			}
			if err != nil {
				if !bytes.Equal(b, bytes.Repeat([]byte{0xee}, 12)) {
					t.Errorf("encodeVnetHdr(%+v) failed but wrote % x", tt.in, b)
				}
				return
			}
			if !bytes.Equal(b, tt.want) {
				t.Errorf("encodeVnetHdr(%+v) = % x, want % x", tt.in, b, tt.want)
			}
		})
	}
}

func TestVnetHdrRoundTrip(t *testing.T) {
	for _, o := range []vswitch.Offload{
		{},
		{DataValid: true},
		{NeedsCsum: true, CsumStart: 34, CsumOffset: 6},
		{GSOType: vswitch.GSOTCPv4, GSOSize: 1448, HdrLen: 66, NeedsCsum: true, CsumStart: 34, CsumOffset: 16},
		{GSOType: vswitch.GSOTCPv6, GSOSize: 65535, HdrLen: 65535, NeedsCsum: true, CsumStart: 65535, CsumOffset: 65535},
		{GSOType: vswitch.GSOUDPL4, GSOSize: 1, HdrLen: 42, NeedsCsum: true, DataValid: true, CsumStart: 34, CsumOffset: 6},
	} {
		b := make([]byte, vnetHdrLen)
		if err := encodeVnetHdr(b, o); err != nil {
			t.Fatalf("encodeVnetHdr(%+v): %v", o, err)
		}
		got, err := decodeVnetHdr(b)
		if err != nil || got != o {
			t.Errorf("decodeVnetHdr(encodeVnetHdr(%+v)) = %+v, %v", o, got, err)
		}
	}
}

// FuzzDecodeVnetHdr checks decode never panics, and that whatever decodes
// encodes back to the same bytes but num_buffers.
func FuzzDecodeVnetHdr(f *testing.F) {
	f.Add(make([]byte, 12))
	f.Add([]byte{1, 1, 66, 0, 0xa8, 0x05, 34, 0, 16, 0, 0, 0})
	f.Add([]byte{1, 5, 42, 0, 0xc8, 0x05, 34, 0, 6, 0, 9, 9})
	f.Add([]byte{0, 0x81, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		o, err := decodeVnetHdr(b)
		if err != nil {
			return
		}
		out := make([]byte, vnetHdrLen)
		if err := encodeVnetHdr(out, o); err != nil {
			t.Fatalf("encodeVnetHdr(decodeVnetHdr(% x)): %v", b[:vnetHdrLen], err)
		}
		if !bytes.Equal(out[:10], b[:10]) {
			t.Errorf("encodeVnetHdr(decodeVnetHdr(% x)) = % x", b[:vnetHdrLen], out)
		}
	})
}
