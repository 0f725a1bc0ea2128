package daemon

import (
	"net/http"
	"tapswitch/daemon/api"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// switchCollector exports the switch's counters as Prometheus metrics. It
// reads the same snapshot as GET /v1/stats at each scrape, so the frame
// path pays nothing for metrics.
type switchCollector struct {
	d                               *Daemon
	pods, fdb                       *prometheus.Desc
	rxFrames, rxBytes               *prometheus.Desc
	txFrames, txBytes               *prometheus.Desc
	drops, arpReplies, learnRefused *prometheus.Desc
	readErrors, segmented           *prometheus.Desc
	leased, addresses               *prometheus.Desc
	// route mode
	routed, icmpSent, icmpLimited *prometheus.Desc
	noRoute, hostFlows            *prometheus.Desc
}

func newSwitchCollector(d *Daemon) *switchCollector {
	port := []string{"port"}
	desc := func(name, help string, labels []string) *prometheus.Desc {
		return prometheus.NewDesc("tapswitch_"+name, help, labels, nil)
	}
	return &switchCollector{
		d:            d,
		pods:         desc("pods", "Attached pods.", nil),
		fdb:          desc("fdb_entries", "Learned MAC addresses.", nil),
		rxFrames:     desc("port_rx_frames_total", "Frames received from the port.", port),
		rxBytes:      desc("port_rx_bytes_total", "Bytes received from the port.", port),
		txFrames:     desc("port_tx_frames_total", "Frames sent to the port.", port),
		txBytes:      desc("port_tx_bytes_total", "Bytes sent to the port.", port),
		drops:        desc("port_drops_total", "Frames dropped, by reason.", []string{"port", "reason"}),
		arpReplies:   desc("port_arp_replies_total", "ARP requests the switch answered on the port.", port),
		learnRefused: desc("port_learn_refused_total", "Source MACs not learned because the FDB was full.", port),
		readErrors:   desc("port_read_errors_total", "Failed reads from the port.", port),
		segmented:    desc("port_segmented_total", "GSO super-frames segmented in software for the port.", port),
		leased:       desc("ipam_addresses_leased", "Pod addresses leased, by family.", []string{"family"}),
		addresses:    desc("ipam_addresses", "Pod addresses in the CIDR, by family (the gateway, host port and reserved ones not counted).", []string{"family"}),
		routed:       desc("routed_frames_total", "Frames the switch's router sent to the next hop, by the next hop's port (route mode).", []string{"next_hop"}),
		icmpSent:     desc("icmp_errors_sent_total", "ICMP and ICMPv6 errors the router sent, by type (route mode).", []string{"type"}),
		icmpLimited:  desc("icmp_errors_rate_limited_total", "ICMP errors the router did not send for its rate limit (route mode).", nil),
		noRoute:      desc("routed_no_route_total", "Packets the router found no route or local pod for (route mode).", nil),
		hostFlows:    desc("host_flows", "Flows the node forwarded between two local pods, whose replies return through it (route mode).", nil),
	}
}

func (c *switchCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.pods, c.fdb, c.rxFrames, c.rxBytes, c.txFrames, c.txBytes, c.drops, c.arpReplies, c.learnRefused, c.readErrors, c.segmented, c.leased, c.addresses, c.routed, c.icmpSent, c.icmpLimited, c.noRoute, c.hostFlows} {
		ch <- d
	}
}

func (c *switchCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.d.Stats()
	ch <- prometheus.MustNewConstMetric(c.pods, prometheus.GaugeValue, float64(st.Pods))
	ch <- prometheus.MustNewConstMetric(c.fdb, prometheus.GaugeValue, float64(st.FDBEntries))
	used4, used6 := c.d.ipam.InUse()
	size4, size6 := c.d.ipam.Size()
	ch <- prometheus.MustNewConstMetric(c.leased, prometheus.GaugeValue, float64(used4), "ipv4")
	ch <- prometheus.MustNewConstMetric(c.addresses, prometheus.GaugeValue, float64(size4), "ipv4")
	if c.d.opts.PodCIDR6.IsValid() {
		ch <- prometheus.MustNewConstMetric(c.leased, prometheus.GaugeValue, float64(used6), "ipv6")
		ch <- prometheus.MustNewConstMetric(c.addresses, prometheus.GaugeValue, float64(size6), "ipv6")
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	for _, p := range st.Ports {
		counter(c.rxFrames, p.RxFrames, p.Name)
		counter(c.rxBytes, p.RxBytes, p.Name)
		counter(c.txFrames, p.TxFrames, p.Name)
		counter(c.txBytes, p.TxBytes, p.Name)
		counter(c.arpReplies, p.ARPReplies, p.Name)
		counter(c.learnRefused, p.LearnRefused, p.Name)
		counter(c.readErrors, p.ReadErrors, p.Name)
		counter(c.segmented, p.Segmented, p.Name)
		for reason, v := range p.Drops {
			counter(c.drops, v, p.Name, reason)
		}
		if st.Router != nil {
			counter(c.routed, p.Routed, p.Name)
		}
	}
	if r := st.Router; r != nil {
		for typ, v := range r.ICMPSent {
			counter(c.icmpSent, v, typ)
		}
		counter(c.icmpLimited, r.ICMPRateLimited)
		counter(c.noRoute, r.NoRoute)
		ch <- prometheus.MustNewConstMetric(c.hostFlows, prometheus.GaugeValue, float64(r.HostFlows))
	}
}

// forwardCollector exports the port forwards: how many there are and, per
// forward, its connections, like switchCollector at each scrape.
type forwardCollector struct {
	d                                      *Daemon
	forwards, active                       *prometheus.Desc
	conns, dialErrors, drops, notListening *prometheus.Desc
}

func newForwardCollector(d *Daemon) *forwardCollector {
	fwd := []string{"proto", "listen", "pod"}
	desc := func(name, help string, labels []string) *prometheus.Desc {
		return prometheus.NewDesc("tapswitch_"+name, help, labels, nil)
	}
	return &forwardCollector{
		d:            d,
		forwards:     desc("forwards", "Port forwards.", nil),
		active:       desc("forward_active", "Open TCP connections or UDP flows of the forward.", fwd),
		conns:        desc("forward_connections_total", "TCP connections accepted or UDP flows opened by the forward.", fwd),
		dialErrors:   desc("forward_dial_errors_total", "Connections into the pod that failed (refused, timed out).", fwd),
		drops:        desc("forward_udp_drops_total", "UDP datagrams the forward dropped (flow table full, send failed).", fwd),
		notListening: desc("forward_not_listening", "1 if the forward could not listen again after a restart.", fwd),
	}
}

func (c *forwardCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.forwards, c.active, c.conns, c.dialErrors, c.drops, c.notListening} {
		ch <- d
	}
}

func (c *forwardCollector) Collect(ch chan<- prometheus.Metric) {
	stats := c.d.forwardStats()
	ch <- prometheus.MustNewConstMetric(c.forwards, prometheus.GaugeValue, float64(len(stats)))
	for _, st := range stats {
		labels := []string{st.Proto, st.Listen.String(), st.Pod}
		notListening := 0.0
		if st.Error != "" {
			notListening = 1
		}
		ch <- prometheus.MustNewConstMetric(c.active, prometheus.GaugeValue, float64(st.active), labels...)
		ch <- prometheus.MustNewConstMetric(c.notListening, prometheus.GaugeValue, notListening, labels...)
		ch <- prometheus.MustNewConstMetric(c.conns, prometheus.CounterValue, float64(st.conns), labels...)
		ch <- prometheus.MustNewConstMetric(c.dialErrors, prometheus.CounterValue, float64(st.dialErrors), labels...)
		if st.Proto == api.ProtoUDP {
			ch <- prometheus.MustNewConstMetric(c.drops, prometheus.CounterValue, float64(st.drops), labels...)
		}
	}
}

// gatewayCollector exports the gateway's egress and DNS counters, read at
// each scrape like switchCollector's.
type gatewayCollector struct {
	d                                  *Daemon
	active, flows, refused             *prometheus.Desc
	timeouts, dropped, expired         *prometheus.Desc
	dialFailures, dnsQueries           *prometheus.Desc
	dnsAnswered, dnsFailed, dnsDropped *prometheus.Desc
	unreachable, icmpSent, badSource   *prometheus.Desc
}

func newGatewayCollector(d *Daemon) *gatewayCollector {
	proto := []string{"proto"}
	desc := func(name, help string, labels []string) *prometheus.Desc {
		return prometheus.NewDesc("tapswitch_gateway_"+name, help, labels, nil)
	}
	return &gatewayCollector{
		d:            d,
		active:       desc("egress_flows", "Egress flows open now, by protocol.", proto),
		flows:        desc("egress_flows_total", "Egress flows started, by protocol.", proto),
		refused:      desc("egress_tcp_refused_total", "Egress TCP connects refused by the far side; the pod got a RST.", nil),
		timeouts:     desc("egress_tcp_timeouts_total", "Egress TCP connects that timed out; the pod's SYN went unanswered.", nil),
		dropped:      desc("egress_dropped_total", "Egress SYNs or datagrams dropped at the flow limits or a full socket, by protocol.", proto),
		expired:      desc("egress_udp_expired_total", "Egress UDP flows ended after --udp-idle-timeout.", nil),
		dialFailures: desc("egress_dial_failures_total", "Failed host-side dials of egress flows.", nil),
		unreachable:  desc("egress_unreachable_total", "Egress flows whose destination the node has no route to; the pod got an ICMP error, by protocol.", proto),
		icmpSent:     desc("egress_icmp_sent_total", "ICMP destination unreachable errors sent to pods.", nil),
		badSource:    desc("egress_bad_source_total", "Egress attempts from a source that is not a pod (the host port, outside the pod network), refused.", nil),
		dnsQueries:   desc("dns_queries_total", "DNS queries the gateway forwarded.", nil),
		dnsAnswered:  desc("dns_answered_total", "DNS queries an upstream answered.", nil),
		dnsFailed:    desc("dns_failed_total", "DNS queries no upstream answered (the pod got SERVFAIL).", nil),
		dnsDropped:   desc("dns_dropped_total", "Malformed DNS queries and queries beyond the limits.", nil),
	}
}

func (c *gatewayCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.active, c.flows, c.refused, c.timeouts, c.dropped, c.expired, c.dialFailures, c.unreachable, c.icmpSent, c.badSource, c.dnsQueries, c.dnsAnswered, c.dnsFailed, c.dnsDropped} {
		ch <- d
	}
}

func (c *gatewayCollector) Collect(ch chan<- prometheus.Metric) {
	if c.d.gw == nil {
		return
	}
	e, dns := c.d.gw.EgressStats(), c.d.gw.DNSStats()
	gauge := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge(c.active, e.TCPActive, "tcp")
	gauge(c.active, e.UDPActive, "udp")
	counter(c.flows, e.TCPTotal, "tcp")
	counter(c.flows, e.UDPTotal, "udp")
	counter(c.dropped, e.TCPDropped, "tcp")
	counter(c.dropped, e.UDPDropped, "udp")
	counter(c.refused, e.TCPRefused)
	counter(c.timeouts, e.TCPTimeouts)
	counter(c.expired, e.UDPExpired)
	counter(c.dialFailures, e.DialFailures)
	counter(c.unreachable, e.TCPUnreachable, "tcp")
	counter(c.unreachable, e.UDPUnreachable, "udp")
	counter(c.icmpSent, e.ICMPSent)
	counter(c.badSource, e.BadSource)
	counter(c.dnsQueries, dns.Queries)
	counter(c.dnsAnswered, dns.Answered)
	counter(c.dnsFailed, dns.Failed)
	counter(c.dnsDropped, dns.Dropped)
}

// peerCollector exports the overlay's traffic per peer, read at each
// scrape like switchCollector's. Without an overlay it exports nothing.
type peerCollector struct {
	d                                  *Daemon
	peers, txFrames, txBytes, rxFrames *prometheus.Desc
	rxBytes, lastSeen                  *prometheus.Desc
}

func newPeerCollector(d *Daemon) *peerCollector {
	peer := []string{"peer"}
	desc := func(name, help string, labels []string) *prometheus.Desc {
		return prometheus.NewDesc("tapswitch_"+name, help, labels, nil)
	}
	return &peerCollector{
		d:        d,
		peers:    desc("peers", "Other nodes of the overlay.", nil),
		txFrames: desc("peer_tx_frames_total", "Frames sent to the peer over VXLAN.", peer),
		txBytes:  desc("peer_tx_bytes_total", "Bytes of inner frames sent to the peer.", peer),
		rxFrames: desc("peer_rx_frames_total", "Frames received from the peer over VXLAN.", peer),
		rxBytes:  desc("peer_rx_bytes_total", "Bytes of inner frames received from the peer.", peer),
		lastSeen: desc("peer_last_seen_seconds", "Unix time of the last packet from the peer (0: none yet).", peer),
	}
}

func (c *peerCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.peers, c.txFrames, c.txBytes, c.rxFrames, c.rxBytes, c.lastSeen} {
		ch <- d
	}
}

func (c *peerCollector) Collect(ch chan<- prometheus.Metric) {
	ps, err := c.d.Peers()
	if err != nil {
		return // no overlay
	}
	ch <- prometheus.MustNewConstMetric(c.peers, prometheus.GaugeValue, float64(len(ps)))
	for _, p := range ps {
		for _, m := range []struct {
			d *prometheus.Desc
			v uint64
		}{{c.txFrames, p.TxFrames}, {c.txBytes, p.TxBytes}, {c.rxFrames, p.RxFrames}, {c.rxBytes, p.RxBytes}} {
			ch <- prometheus.MustNewConstMetric(m.d, prometheus.CounterValue, float64(m.v), p.Name)
		}
		seen := 0.0
		if !p.LastSeen.IsZero() {
			seen = float64(p.LastSeen.UnixNano()) / 1e9
		}
		ch <- prometheus.MustNewConstMetric(c.lastSeen, prometheus.GaugeValue, seen, p.Name)
	}
}

// metricsHandler serves the metrics of the switch, the port forwards, the
// gateway and the address pools, and the Go runtime's.
func (d *Daemon) metricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		newSwitchCollector(d),
		newForwardCollector(d),
		newGatewayCollector(d),
		newPeerCollector(d),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slogPrinter{d}})
}

// slogPrinter hands promhttp's errors to the daemon's logger.
type slogPrinter struct{ d *Daemon }

func (p slogPrinter) Println(v ...any) { p.d.log.Warn("metrics", "err", v) }
