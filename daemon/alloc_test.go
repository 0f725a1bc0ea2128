package daemon

import (
	"errors"
	"net/netip"
	"testing"
)

func TestAddrRangeLayout(t *testing.T) {
	tests := []struct {
		cidr                       string
		gateway, host, first, last string
		size                       uint64
	}{
		{"10.244.0.0/24", "10.244.0.1", "10.244.0.254", "10.244.0.2", "10.244.0.253", 252},
		{"10.1.0.0/29", "10.1.0.1", "10.1.0.6", "10.1.0.2", "10.1.0.5", 4},
		{"fd00::/120", "fd00::1", "fd00::ff", "fd00::2", "fd00::fe", 253},
	}
	for _, tt := range tests {
		t.Run(tt.cidr, func(t *testing.T) {
			r, err := newAddrRange(netip.MustParsePrefix(tt.cidr))
			if err != nil {
				t.Fatal(err)
			}
			got := []string{r.gateway.String(), r.host.String(), r.first.String(), r.last.String()}
			want := []string{tt.gateway, tt.host, tt.first, tt.last}
			for i := range got {
				if got[i] != want[i] {
					t.Errorf("gateway, host, first, last = %v, want %v", got, want)
					break
				}
			}
			if r.size != tt.size {
				t.Errorf("size = %d, want %d", r.size, tt.size)
			}
		})
	}
}

func TestAddrRangeRejects(t *testing.T) {
	for _, cidr := range []string{"10.0.0.0/30", "10.0.0.1/24", "fd00::/126"} {
		if _, err := newAddrRange(netip.MustParsePrefix(cidr)); err == nil {
			t.Errorf("newAddrRange(%s) = nil error, want one", cidr)
		}
	}
}

func TestAddrRangeRotatesAndExhausts(t *testing.T) {
	r, err := newAddrRange(netip.MustParsePrefix("10.1.0.0/29"))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, id := range []string{"a", "b", "c", "d"} {
		p, err := r.allocate(id)
		if err != nil {
			t.Fatalf("allocate(%s): %v", id, err)
		}
		got = append(got, p.String())
	}
	want := "[10.1.0.2/29 10.1.0.3/29 10.1.0.4/29 10.1.0.5/29]"
	if s := fmtList(got); s != want {
		t.Fatalf("allocations = %s, want %s", s, want)
	}
	_, err = r.allocate("e")
	if !errors.Is(err, ErrExhausted) || err.Error() != "pod cidr 10.1.0.0/29 exhausted: 4 of 4 addresses in use: no free address" {
		t.Fatalf("allocate on a full range = %v, want exhausted", err)
	}
	// Released .3 is handed out again only after the range wraps to it.
	r.release(netip.MustParseAddr("10.1.0.3"))
	r.release(netip.MustParseAddr("10.1.0.5"))
	p1, _ := r.allocate("f")
	p2, _ := r.allocate("g")
	if p1.Addr().String() != "10.1.0.3" || p2.Addr().String() != "10.1.0.5" {
		t.Errorf("after release: %v, %v, want 10.1.0.3 then 10.1.0.5 (rotation from the last allocation)", p1, p2)
	}
}

func TestAddrRangeReserve(t *testing.T) {
	r, _ := newAddrRange(netip.MustParsePrefix("10.1.0.0/29"))
	if err := r.reserve(netip.MustParseAddr("10.1.0.2"), "a"); err != nil {
		t.Fatal(err)
	}
	if err := r.reserve(netip.MustParseAddr("10.1.0.2"), "b"); err == nil {
		t.Error("reserve of a taken address by another pod succeeded")
	}
	for _, a := range []string{"10.1.0.1", "10.1.0.6", "10.2.0.2"} {
		if err := r.reserve(netip.MustParseAddr(a), "c"); err == nil {
			t.Errorf("reserve(%s) succeeded, want refused: not a pod address", a)
		}
	}
	if p, _ := r.allocate("d"); p.Addr().String() != "10.1.0.3" {
		t.Errorf("allocate after reserve = %v, want 10.1.0.3", p)
	}
}

func fmtList(l []string) string {
	s := "["
	for i, v := range l {
		if i > 0 {
			s += " "
		}
		s += v
	}
	return s + "]"
}
