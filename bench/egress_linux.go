package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	"tapswitch/internal/netnsutil"
)

// The ways out of the pod network: pod → world (egress) and pod → node.
// Each variant has a pod, the node it runs on and a world namespace behind
// a veth from the node, the "internet" of the figures. How the pod's
// packets get there differs:
//
//   - kernel: the pod's default route is the bridge's address; the node
//     routes (ip_forward) and iptables MASQUERADE rewrites the source;
//   - tapswitch (tapswitchd --egress route, the default): the switch
//     routes the pod's packets, with the pod's own address, through the
//     host port tsw0 into the node's kernel, which forwards them and
//     masquerades them by the daemon's nftables table (inet tapswitch);
//     the daemon sets both up inside its node namespace;
//   - tapswitch-proxy (--egress proxy): the daemon's gateway ends the
//     pod's TCP and UDP and a socket of the node carries them on; the node
//     forwards nothing.
//
// Every world knows no route back to the pods: only the node's address on
// the world veth answers, as on a real network.

// The world veths' subnets, from the range RFC 2544 reserves for
// benchmarks, private to their namespaces: the node end is .1, the world
// end .2.
var (
	kernelWorldSubnet    = netip.MustParsePrefix("198.18.1.0/24")
	tapswitchWorldSubnet = netip.MustParsePrefix("198.18.2.0/24")
	proxyWorldSubnet     = netip.MustParsePrefix("198.18.3.0/24")
)

// worldVeth is the node's end of the veth pair to the world.
const worldVeth = "world"

// probePort is the TCP port of the check that the way out works.
const probePort = 7008

// outside is a variant's way out of the pod network.
type outside struct {
	pod   pod // the client, in the pod network
	node  pod // the node's address on the pod network (br0, tsw0), in the node's namespace
	world pod // a server beyond the node
}

// addWorld creates the namespace suffix, the world, connected to the
// namespace node by a veth pair: worldVeth in node with the subnet's .1,
// eth0 in the world with its .2. The world gets no other route.
func addWorld(ctx context.Context, cl *cleanups, node, suffix string, subnet netip.Prefix, mtu int) (pod, error) {
	ns, path, err := addNodeNS(ctx, cl, suffix)
	if err != nil {
		return pod{}, err
	}
	w := pod{ns: ns, path: path, ifname: "eth0", ip: hostInSubnet(subnet, 2)}
	steps := [][]string{
		{"-n", node, "link", "add", worldVeth, "mtu", fmt.Sprint(mtu), "type", "veth", "peer", "name", w.ifname, "mtu", fmt.Sprint(mtu), "netns", ns},
		{"-n", node, "addr", "add", hostInSubnet(subnet, 1).String(), "dev", worldVeth},
		{"-n", node, "link", "set", worldVeth, "up"},
		{"-n", ns, "addr", "add", w.ip.String(), "dev", w.ifname},
		{"-n", ns, "link", "set", w.ifname, "up"},
	}
	for _, args := range steps {
		if err := ipCmd(ctx, args...); err != nil {
			return pod{}, err
		}
	}
	return w, nil
}

// waitOutside waits until v's pod reaches the node (ping) and the world (a
// TCP connection that carries a byte back), for up to 10 s each, so a
// broken way out fails the run before any figure is taken.
func waitOutside(ctx context.Context, v *variant) error {
	o := v.outside
	if err := waitPing(ctx, v.name, o.pod, o.node); err != nil {
		return err
	}
	if err := waitConnect(ctx, o.pod, o.world); err != nil {
		return fmt.Errorf("%s: pod %s → world %s: %w", v.name, o.pod.ip.Addr(), o.world.ip.Addr(), err)
	}
	return nil
}

// waitConnect listens on to's address inside its namespace, connects from
// from's namespace and reads the byte the listener sends, retrying for up
// to 10 s. The byte makes sure the connection reached to: a gateway in
// proxy mode may accept the pod's connection before its own reaches the
// server.
func waitConnect(ctx context.Context, from, to pod) error {
	addr := netip.AddrPortFrom(to.ip.Addr(), probePort).String()
	var ln net.Listener
	err := netnsutil.Do(to.path, func() (err error) {
		ln, err = net.Listen("tcp4", addr)
		return err
	})
	if err != nil {
		return fmt.Errorf("listen in %s: %w", to.ns, err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { probeServeLoop(ln) })
	defer wg.Wait()
	defer ln.Close()

	deadline := time.Now().Add(10 * time.Second)
	for {
		err := probeOnce(ctx, from.path, addr)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no connection to %s within 10s: %w", addr, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// probeServeLoop writes one byte to every connection ln accepts, then
// closes it, until ln is closed.
func probeServeLoop(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		c.SetWriteDeadline(time.Now().Add(time.Second))
		c.Write([]byte{1})
		c.Close()
	}
}

// probeOnce connects from the namespace at nsPath to addr and reads one
// byte, within 2 s.
func probeOnce(ctx context.Context, nsPath, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var c net.Conn
	err := netnsutil.Do(nsPath, func() (err error) {
		c, err = (&net.Dialer{}).DialContext(ctx, "tcp4", addr)
		return err
	})
	if err != nil {
		return err
	}
	defer c.Close()
	deadline, _ := ctx.Deadline()
	c.SetReadDeadline(deadline)
	b := make([]byte, 1)
	if _, err := io.ReadFull(c, b); err != nil {
		return fmt.Errorf("read the listener's byte: %w", err)
	}
	return nil
}

// measureOutside takes the figures of v's way out once: single-stream TCP
// pod → world with the machine's CPU per GB, single-stream TCP pod → node,
// and UDP request/response pod → world, printing each to w.
func measureOutside(ctx context.Context, w io.Writer, v *variant, opts options) error {
	o := v.outside
	m, err := startCPU(v.switchPID)
	if err != nil {
		return err
	}
	egress, err := iperf(ctx, o.pod, o.world, opts.duration)
	if err != nil {
		return fmt.Errorf("pod → world: %w", err)
	}
	machine, sw, err := m.stop()
	if err != nil {
		return err
	}
	gb := egress.Bytes / 1e9
	v.add("egress_tcp_gbps", egress.BitsPerSecond/1e9)
	v.add("egress_cpu_s_per_gb", machine.Seconds()/gb)
	line := fmt.Sprintf("  %-15s TCP pod → world %8.2f Gbit/s, %.2f s/GB machine CPU", v.name, egress.BitsPerSecond/1e9, machine.Seconds()/gb)
	if v.switchPID > 0 {
		line += fmt.Sprintf(", %.2f s/GB switch process", sw.Seconds()/gb)
	}
	progress(w, "%s", line)

	node, err := iperf(ctx, o.pod, o.node, opts.duration)
	if err != nil {
		return fmt.Errorf("pod → node: %w", err)
	}
	v.add("node_tcp_gbps", node.BitsPerSecond/1e9)
	progress(w, "  %-15s TCP pod → node  %8.2f Gbit/s (%s)", v.name, node.BitsPerSecond/1e9, o.node.ifname)

	rtts, err := requestResponse(ctx, o.pod, o.world, opts.rrs)
	if err != nil {
		return fmt.Errorf("pod → world: %w", err)
	}
	rr := percentile(rtts, 50)
	v.add("egress_rr_us", micros(rr))
	progress(w, "  %-15s UDP req/resp pod → world %6.1f µs p50, p99 %.1f µs (%d exchanges)", v.name, micros(rr), micros(percentile(rtts, 99)), len(rtts))
	return nil
}
