// Package overlay joins this node's switch to other nodes' pod networks
// over VXLAN (RFC 7348), wire-compatible with flannel's "vxlan" backend.
//
// Model. A VXLAN is a vswitch.Port over one UDP socket of the namespace
// NewVXLAN runs in. It works in flannel's L3 mode: every node has a VTEP
// MAC, the switch's router sends a packet for another node's pod CIDR to
// this port with that node's VTEP MAC as the destination (a vswitch.Route
// with NextHop = the VTEP MAC), and the port looks the MAC up among its
// remote VTEPs (SetVTEPs) to find the node's underlay address. The inner
// frame leaves with our VTEP MAC as its source; pod addresses are not
// touched. A frame that arrives for our VTEP MAC is handed to the switch
// with the router's MAC (VXLANOptions.RouterMAC) as its destination, so
// the router routes it to the local pod.
//
// Wire format. Each UDP datagram is an 8-byte VXLAN header and the inner
// Ethernet frame (no FCS):
//
//	byte 0     flags: 0x08, the I bit (a valid VNI)
//	bytes 1-3  reserved
//	bytes 4-6  VNI, big-endian
//	byte 7     reserved
//
// Datagrams go to the remote VTEP's address at our own UDP port (flannel
// uses one port cluster-wide), from our bound port. They are accepted
// from any source port, since Linux picks the source port by a flow hash.
//
// Goroutines and blocking. The package owns no goroutines. ReadBatch
// blocks in the Go netpoller until a datagram arrives, then receives every
// one that is ready with recvmmsg(2) without blocking again; Close wakes
// it. WriteBatch never waits: it sends with sendmmsg(2) on a non-blocking
// socket. SetVTEPs publishes an immutable snapshot that the frame path
// reads without locks, so it is safe while traffic runs.
//
// Drops. Nothing bad is forwarded; each dropped packet or frame is counted
// once, under the first reason that applies, in Drops:
//
//	rx_unknown_source  the UDP source address is not a remote VTEP's
//	rx_short           shorter than the VXLAN and Ethernet headers
//	rx_bad_flags       the I flag is not set
//	rx_wrong_vni       another VNI
//	rx_too_big         inner frame over MTU plus the Ethernet header
//	rx_not_ours        inner destination is not our VTEP MAC (broadcast
//	                   and multicast included: L3 mode sends only to it)
//	rx_not_ip          inner frame neither IPv4 nor IPv6 (L3 mode carries
//	                   only IP; its neighbours are static, so no ARP)
//	tx_bad_frame       a frame the switch should not have sent: a runt,
//	                   over MaxFrame, or with offload work left (GSO)
//	tx_unknown_vtep    inner destination MAC is no remote VTEP's
//	tx_queue_full      the socket's send buffer is full (EAGAIN, ENOBUFS)
//	tx_error           sendmmsg failed for the datagram (no route, ...)
//
// The reserved header bits are ignored on receipt, as RFC 7348 section 5
// asks. Linux's own VXLAN device is stricter (it drops packets with
// flags it does not know), and extensions that set them (GBP, GPE) are
// not spoken here; an inner frame they mangle still has to be for our
// VTEP MAC and carry IP to pass.
//
// Flannel compatibility. Defaults are flannel's: VNI 1, UDP port 8472
// (4789 is the IANA port), and an inner MTU of 1450, the 1500-byte
// underlay MTU less the 50 bytes of outer IPv4 (20), UDP (8), VXLAN (8)
// and inner Ethernet (14) headers. Over an IPv6 underlay the overhead is
// 70 bytes, so the caller sets MTU 1430 for a 1500-byte underlay. The
// socket family follows the local address: one port carries IPv4 or IPv6
// underlay packets, not both. Outer packets are sent without DF (as Linux
// VXLAN devices do by default), so an underlay with a smaller MTU
// fragments them rather than dropping them. Outer UDP checksums are
// computed; zero checksums are accepted over IPv4 and, as on a Linux
// VXLAN device without udp6zerocsumrx, dropped by the kernel over IPv6.
package overlay
