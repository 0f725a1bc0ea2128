package test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"testing"

	"tapswitch/internal/testutil"
)

func TestMetrics(t *testing.T) {
	testutil.RequireRoot(t)
	addr := freeLoopbackAddr(t)
	d := startDaemon(t, "", "--metrics-addr", addr)
	a, b := addPod(t, d, "met-a"), addPod(t, d, "met-b")
	mustPing(t, a, b.addr())

	body := get(t, d.nodeHTTPClient(), "http://"+addr+"/metrics")
	if v := metric(t, body, `tapswitch_pods`); v != 2 {
		t.Errorf("tapswitch_pods = %v, want 2", v)
	}
	for _, p := range []string{a.ID, b.ID} {
		for _, name := range []string{"port_rx_frames_total", "port_tx_frames_total", "port_arp_replies_total"} {
			if v := metric(t, body, fmt.Sprintf(`tapswitch_%s{port=%q}`, name, p)); v <= 0 {
				t.Errorf("tapswitch_%s{port=%q} = %v, want > 0", name, p, v)
			}
		}
	}
	// The same metrics on the API socket.
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", d.socket)
	}}}
	if v := metric(t, get(t, hc, "http://tapswitchd/metrics"), `tapswitch_fdb_entries`); v < 2 {
		t.Errorf("tapswitch_fdb_entries on the socket = %v, want >= 2", v)
	}
}

func freeLoopbackAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func get(t *testing.T, hc *http.Client, url string) string {
	t.Helper()
	resp, err := hc.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s, %v", url, resp.Status, err)
	}
	return string(b)
}

// metric returns the value of the sample named exactly series.
func metric(t *testing.T, body, series string) float64 {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no sample %s in:\n%s", series, body)
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
