package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
)

// losses are the kernel counters that say where datagrams were lost
// between two pods, outside the switch: the sender's interface queue, the
// receiver's interface, and the receiving socket's buffer.
type losses struct {
	senderTxDropped   uint64 // sender's eth0 (a TAP: the switch did not read fast enough)
	receiverRxDropped uint64 // receiver's eth0
	rcvbufErrors      uint64 // receiver's UDP RcvbufErrors (/proc/net/snmp)
}

// readLosses reads v's loss counters.
func readLosses(ctx context.Context, v *variant) (losses, error) {
	var l losses
	tx, _, err := linkDrops(ctx, v.client)
	if err != nil {
		return l, err
	}
	_, rx, err := linkDrops(ctx, v.server)
	if err != nil {
		return l, err
	}
	rcvbuf, err := udpRcvbufErrors(ctx, v.server.ns)
	if err != nil {
		return l, err
	}
	return losses{senderTxDropped: tx, receiverRxDropped: rx, rcvbufErrors: rcvbuf}, nil
}

// since describes, for a progress line, the counters that grew since l0.
func (l losses) since(l0 losses) string {
	var parts []string
	for _, c := range []struct {
		what string
		n    uint64
	}{
		{"sender eth0 tx_dropped", l.senderTxDropped - l0.senderTxDropped},
		{"receiver eth0 rx_dropped", l.receiverRxDropped - l0.receiverRxDropped},
		{"receiver socket buffer full", l.rcvbufErrors - l0.rcvbufErrors},
	} {
		if c.n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", c.what, c.n))
		}
	}
	if len(parts) == 0 {
		return ""
	}
	return "; lost: " + strings.Join(parts, ", ")
}

// linkDrops returns the tx and rx drop counters of p's interface.
func linkDrops(ctx context.Context, p pod) (tx, rx uint64, err error) {
	out, err := exec.CommandContext(ctx, "ip", "-n", p.ns, "-j", "-s", "link", "show", "dev", p.ifname).Output()
	if err != nil {
		return 0, 0, fmt.Errorf("ip -n %s -s link show %s: %w", p.ns, p.ifname, err)
	}
	var links []struct {
		Stats struct {
			RX struct {
				Dropped uint64 `json:"dropped"`
			} `json:"rx"`
			TX struct {
				Dropped uint64 `json:"dropped"`
			} `json:"tx"`
		} `json:"stats64"`
	}
	if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 {
		return 0, 0, fmt.Errorf("ip -n %s -s link show %s: unexpected output %q", p.ns, p.ifname, out)
	}
	return links[0].Stats.TX.Dropped, links[0].Stats.RX.Dropped, nil
}

// udpRcvbufErrors returns the UDP RcvbufErrors counter of namespace ns:
// datagrams dropped because the receiving socket's buffer was full.
func udpRcvbufErrors(ctx context.Context, ns string) (uint64, error) {
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", ns, "cat", "/proc/net/snmp").Output()
	if err != nil {
		return 0, fmt.Errorf("read /proc/net/snmp in %s: %w", ns, err)
	}
	// Two "Udp:" lines: the names, then the values.
	var names []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || fields[0] != "Udp:" {
			continue
		}
		if names == nil {
			names = fields
			continue
		}
		for i, name := range names {
			if name == "RcvbufErrors" && i < len(fields) {
				return strconv.ParseUint(fields[i], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("/proc/net/snmp in %s: no Udp RcvbufErrors", ns)
}
