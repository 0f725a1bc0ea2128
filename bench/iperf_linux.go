package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"
)

// iperfPort is iperf3's port inside the server pod's namespace.
const iperfPort = 5201

// iperfSum is the receiver's total of one iperf3 test (end.sum_received).
type iperfSum struct {
	Seconds       float64 `json:"seconds"`
	Bytes         float64 `json:"bytes"`
	BitsPerSecond float64 `json:"bits_per_second"`
	Packets       int64   `json:"packets"`      // UDP: datagrams sent, by sequence number
	LostPackets   int64   `json:"lost_packets"` // UDP: of those, never received
}

// received is how many UDP datagrams the receiver got.
func (s iperfSum) received() int64 { return s.Packets - s.LostPackets }

// iperf runs one iperf3 test of the given length from client to server
// with extra client flags (-P 4, -u ...) and returns the receiver's totals.
// Each test has a one-off server (-s -1), so tests never meet a server
// still busy with the last one.
func iperf(ctx context.Context, client, server pod, length time.Duration, extra ...string) (iperfSum, error) {
	addr, port := server.ip.Addr(), fmt.Sprint(iperfPort)
	srv := nsCommand(ctx, server.ns, "iperf3", "-s", "-1", "-B", addr.String(), "-p", port)
	var srvOut bytes.Buffer
	srv.Stdout, srv.Stderr = &srvOut, &srvOut
	if err := srv.Start(); err != nil {
		return iperfSum{}, fmt.Errorf("start iperf3 server (make deps?): %w", err)
	}
	srvDone := make(chan error, 1)
	go func() { srvDone <- srv.Wait() }()
	// stopServer waits for the one-off server to finish its test, or
	// ends it; after it, srvOut may be read.
	var once sync.Once
	stopServer := func(grace time.Duration) {
		once.Do(func() {
			select {
			case err := <-srvDone:
				srvDone <- err
			case <-time.After(grace):
				srv.Process.Kill()
				srvDone <- <-srvDone
			}
		})
	}
	defer stopServer(5 * time.Second)
	if err := waitListening(ctx, srv.Process.Pid, addr, iperfPort, srvDone); err != nil {
		stopServer(0)
		return iperfSum{}, fmt.Errorf("iperf3 server: %w: %s", err, bytes.TrimSpace(srvOut.Bytes()))
	}

	secs := fmt.Sprint(int(length.Round(time.Second) / time.Second))
	args := append([]string{"-c", addr.String(), "-p", port, "-J", "-t", secs}, extra...)
	cctx, cancel := context.WithTimeout(ctx, length+30*time.Second)
	defer cancel()
	out, err := nsCommand(cctx, client.ns, "iperf3", args...).Output()
	var res struct {
		Error string `json:"error"`
		End   struct {
			SumReceived *iperfSum `json:"sum_received"`
		} `json:"end"`
	}
	if jerr := json.Unmarshal(out, &res); jerr != nil {
		return iperfSum{}, fmt.Errorf("iperf3 %s: %v, output %q", strings.Join(args, " "), err, out)
	}
	switch {
	case res.Error != "":
		return iperfSum{}, fmt.Errorf("iperf3 %s: %s", strings.Join(args, " "), res.Error)
	case err != nil:
		return iperfSum{}, fmt.Errorf("iperf3 %s: %w", strings.Join(args, " "), err)
	case res.End.SumReceived == nil || res.End.SumReceived.Seconds <= 0:
		return iperfSum{}, fmt.Errorf("iperf3 %s: no end.sum_received in its output", strings.Join(args, " "))
	}
	return *res.End.SumReceived, nil
}

// waitListening waits until process pid has a TCP socket listening on
// addr:port. It reads /proc/PID/net/tcp, which shows the sockets of the
// process's namespace; matching the address also rules out the moment
// before "ip netns exec" entered the namespace. If the process exits
// first, its Wait result is put back on exited.
func waitListening(ctx context.Context, pid int, addr netip.Addr, port int, exited chan error) error {
	a := addr.As4()
	// /proc/net/tcp prints the address as the host-order hex of the
	// network-order u32 (little-endian machines: bytes reversed).
	want := fmt.Sprintf("%02X%02X%02X%02X:%04X", a[3], a[2], a[1], a[0], port)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if listening(fmt.Sprintf("/proc/%d/net/tcp", pid), want) {
			return nil
		}
		select {
		case err := <-exited:
			exited <- err // for the caller's wait
			return fmt.Errorf("exited before listening: %v", err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not listening on %s:%d after 10s", addr, port)
		}
	}
}

// listening reports whether the /proc/net/tcp style file lists a socket
// in state LISTEN (0A) on the local address want.
func listening(file, want string) bool {
	f, err := os.Open(file)
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		// sl local_address rem_address st ...
		if len(fields) > 3 && fields[1] == want && fields[3] == "0A" {
			return true
		}
	}
	return false
}
