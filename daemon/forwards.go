package daemon

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"tapswitch/daemon/api"
	"time"
)

// Port forwards (hostPort). In route mode each is a DNAT in the node's
// nftables table (route.go), so the pod sees the client's own address. In
// proxy mode the daemon listens on a host address in its own namespace
// and connects each client to a pod's port through the gateway netstack
// (forwarder.go). The registry below is guarded by d.mu
// together with the pods, so a forward never outlives its pod: a forward is
// added only to a ready pod, and DeletePod and forgetLocked drop a pod's
// forwards in the same critical section that forgets the pod.
//
// Crash safety: the state file is the only thing that outlives the
// process (listeners die with it), so what matters is that it never names
// a forward whose add failed and never loses one whose delete failed. An
// add listens first and saves after (a bind error leaves nothing to undo;
// a failed save closes the listener again); a delete saves first and
// closes after (a failed save leaves the forward as it was). A crash at
// any point leaves the old or the new list on disk.

// forwardKey names a forward: one per protocol and listen address.
type forwardKey struct {
	proto  string
	listen netip.AddrPort
}

func (k forwardKey) String() string { return k.proto + " " + k.listen.String() }

// keyOf is the key that names fw.
func keyOf(fw api.Forward) forwardKey { return forwardKey{proto: fw.Proto, listen: fw.Listen} }

// parseForwardKey checks a protocol and listen address as given by a user.
func parseForwardKey(proto, listen string) (forwardKey, error) {
	if proto == "" {
		proto = api.ProtoTCP
	}
	if proto != api.ProtoTCP && proto != api.ProtoUDP {
		return forwardKey{}, fmt.Errorf("%w: proto %q: want tcp or udp", ErrInvalid, proto)
	}
	ap, err := netip.ParseAddrPort(listen)
	if err != nil {
		return forwardKey{}, fmt.Errorf("%w: listen address %q: want IP:PORT, such as 127.0.0.1:8080 or [::1]:8080", ErrInvalid, listen)
	}
	k := forwardKey{proto: proto, listen: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())}
	if err := k.valid(); err != nil {
		return forwardKey{}, err
	}
	return k, nil
}

// valid checks what ParseAddrPort lets through.
func (k forwardKey) valid() error {
	a := k.listen.Addr()
	switch {
	case a.Zone() != "":
		return fmt.Errorf("%w: listen address %s: zones are not supported", ErrInvalid, k.listen)
	case a.IsMulticast():
		return fmt.Errorf("%w: listen address %s is multicast", ErrInvalid, k.listen)
	case k.listen.Port() == 0:
		return fmt.Errorf("%w: listen address %s: port 0: want 1 to 65535", ErrInvalid, k.listen)
	}
	return nil
}

// parseForwardRequest checks a request and returns the forward it asks
// for, without Target and Created.
func parseForwardRequest(req api.ForwardRequest) (api.Forward, error) {
	k, err := parseForwardKey(req.Proto, req.Listen)
	if err != nil {
		return api.Forward{}, err
	}
	if err := checkName("pod id", req.Pod, maxIDLen); err != nil {
		return api.Forward{}, err
	}
	if req.Port < 1 || req.Port > 65535 {
		return api.Forward{}, fmt.Errorf("%w: pod port %d: want 1 to 65535", ErrInvalid, req.Port)
	}
	return api.Forward{Listen: k.listen, Proto: k.proto, Pod: req.Pod, Port: uint16(req.Port)}, nil
}

// podTarget is the pod's address of the listen address's family, with
// port.
func podTarget(pod api.Pod, listen netip.AddrPort, port uint16) (netip.AddrPort, error) {
	want6 := listen.Addr().Is6()
	for _, p := range pod.IPs {
		if p.Addr().Is6() == want6 {
			return netip.AddrPortFrom(p.Addr(), port), nil
		}
	}
	family := "IPv4"
	if want6 {
		family = "IPv6"
	}
	return netip.AddrPort{}, fmt.Errorf("%w: pod %s has no %s address for listen address %s", ErrInvalid, pod.ID, family, listen)
}

// AddForward listens on req.Listen and forwards what comes in to req.Port
// of the pod req.Pod. On any failure nothing of it is left: no listener,
// nothing on disk.
func (d *Daemon) AddForward(req api.ForwardRequest) (api.Forward, error) {
	fw, err := parseForwardRequest(req)
	if err != nil {
		return api.Forward{}, err
	}
	key := keyOf(fw)
	d.mu.Lock()
	defer d.mu.Unlock()
	e, ok := d.pods[fw.Pod]
	switch {
	case !ok:
		return api.Forward{}, fmt.Errorf("%w: pod %s", ErrNotFound, fw.Pod)
	case e.state != podReady:
		return api.Forward{}, fmt.Errorf("%w: pod %s is being attached or deleted", ErrBusy, fw.Pod)
	}
	if other, dup := d.forwards[key]; dup {
		return api.Forward{}, fmt.Errorf("%w: forward %s exists (to pod %s port %d)", ErrConflict, key, other.fw.Pod, other.fw.Port)
	}
	if fw.Target, err = podTarget(e.Pod, fw.Listen, fw.Port); err != nil {
		return api.Forward{}, err
	}
	fw.Created = time.Now().UTC().Truncate(time.Second)
	f := d.newForwarder(fw)
	if err := f.start(); err != nil {
		return api.Forward{}, err
	}
	d.forwards[key] = f
	// Route mode: the forward is a DNAT in the node's table. nft applies
	// a sync whole or not at all; one that failed after it applied (its
	// read-back, or a timeout) is marked stale, and rulesLoop writes the
	// table again without this forward within its period.
	if err := d.syncRulesLocked(); err != nil {
		delete(d.forwards, key)
		f.close()
		return api.Forward{}, err
	}
	if err := d.saveLocked(); err != nil {
		delete(d.forwards, key)
		f.close()
		if serr := d.syncRulesLocked(); serr != nil {
			f.log.Error("remove the forward's rules after a failed save", "err", serr)
		}
		return api.Forward{}, err
	}
	f.log.Info("forward added", "target", fw.Target, "via", f.fw.Via)
	return f.fw, nil
}

// DeleteForward removes the forward on listen (proto "" is tcp): it is
// forgotten on disk, then its listener and connections are closed.
func (d *Daemon) DeleteForward(proto, listen string) error {
	key, err := parseForwardKey(proto, listen)
	if err != nil {
		return err
	}
	d.mu.Lock()
	f, ok := d.forwards[key]
	if !ok {
		d.mu.Unlock()
		return fmt.Errorf("%w: forward %s", ErrNotFound, key)
	}
	delete(d.forwards, key)
	if err := d.saveLocked(); err != nil {
		d.forwards[key] = f
		d.mu.Unlock()
		return err
	}
	if err := d.syncRulesLocked(); err != nil {
		// Forgotten on disk already; rulesLoop tries again.
		f.log.Error("remove the forward's rules; will retry", "err", err)
	}
	d.mu.Unlock()
	// Outside the lock: close waits for the forward's connections to end.
	f.close()
	f.log.Info("forward deleted")
	return nil
}

// Forwards lists the forwards sorted by listen address and protocol.
func (d *Daemon) Forwards() []api.Forward {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]api.Forward, 0, len(d.forwards))
	for _, f := range d.forwards {
		out = append(out, f.fw)
	}
	slices.SortFunc(out, compareForwards)
	return out
}

// sortedForwardsLocked returns the forwarders in the order of
// compareForwards.
func (d *Daemon) sortedForwardsLocked() []*forwarder {
	out := slices.Collect(maps.Values(d.forwards))
	slices.SortFunc(out, func(a, b *forwarder) int { return compareForwards(a.fw, b.fw) })
	return out
}

func compareForwards(a, b api.Forward) int {
	if c := a.Listen.Compare(b.Listen); c != 0 {
		return c
	}
	return strings.Compare(a.Proto, b.Proto)
}

// dropForwardsLocked closes and forgets the forwards of a pod that is being
// forgotten; the caller saves. Closing happens under d.mu: it closes every
// socket the forwarder's goroutines block on, so the wait is short.
func (d *Daemon) dropForwardsLocked(podID string) {
	dropped := false
	for key, f := range d.forwards {
		if f.fw.Pod != podID {
			continue
		}
		delete(d.forwards, key)
		f.close()
		f.log.Info("forward removed with its pod")
		dropped = true
	}
	if dropped {
		if err := d.syncRulesLocked(); err != nil {
			d.log.Error("remove the rules of a pod's forwards; will retry", "pod", podID, "err", err)
		}
	}
}

// savedForwardsLocked returns the forwards as the state file keeps them.
func (d *Daemon) savedForwardsLocked() []api.Forward {
	out := make([]api.Forward, 0, len(d.forwards))
	for _, f := range d.forwards {
		fw := f.fw
		fw.Error = "" // a runtime condition, found again at each start
		out = append(out, fw)
	}
	slices.SortFunc(out, compareForwards)
	return out
}

// restoreForwardsLocked takes back the saved forwards of the pods restore
// kept, saves the state (pods and forwards) and then listens on each. A
// forward whose pod was forgotten is dropped. A forward that cannot listen
// again (its address is taken, or gone from the host) is logged at Error
// and kept, with the reason in its Error, until it is deleted. If the save
// fails nothing is listening yet.
func (d *Daemon) restoreForwardsLocked(saved []api.Forward) error {
	for _, fw := range saved {
		key := keyOf(fw)
		if err := d.checkSavedForwardLocked(fw); err != nil {
			return fmt.Errorf("state file %s: forward %s: %w", d.state.path, key, err)
		}
		e, ok := d.pods[fw.Pod]
		if !ok {
			d.log.Info("forward dropped: its pod is gone", "forward", key.String(), "pod", fw.Pod)
			continue
		}
		target, err := podTarget(e.Pod, fw.Listen, fw.Port)
		if err != nil {
			return fmt.Errorf("state file %s: forward %s: %w", d.state.path, key, err)
		}
		fw.Target, fw.Error = target, ""
		d.forwards[key] = d.newForwarder(fw)
	}
	if d.opts.Egress == EgressRoute {
		d.checkRestoredForwardsLocked()
	}
	if err := d.saveLocked(); err != nil {
		return err
	}
	for _, f := range d.forwards {
		if f.fw.Error != "" {
			continue // not for the node's table (checkRestoredForwardsLocked)
		}
		if err := f.start(); err != nil {
			f.fw.Error = err.Error()
			f.log.Error("listen on restored forward; it stays listed, not listening, until deleted", "err", err)
			continue
		}
		f.log.Info("forward restored", "target", f.fw.Target)
	}
	return nil
}

// checkSavedForwardLocked checks a forward of the state file as a request
// would have been, and that it is listed once.
func (d *Daemon) checkSavedForwardLocked(fw api.Forward) error {
	parsed, err := parseForwardRequest(api.ForwardRequest{Listen: fw.Listen.String(), Proto: fw.Proto, Pod: fw.Pod, Port: int(fw.Port)})
	if err != nil {
		return err
	}
	if keyOf(parsed) != keyOf(fw) {
		return fmt.Errorf("want proto tcp or udp and an unmapped listen address")
	}
	if _, dup := d.forwards[keyOf(fw)]; dup {
		return fmt.Errorf("listed twice")
	}
	return nil
}

// closeForwards closes every forward's listener and connections and waits
// for their goroutines, keeping them listed: they are in the state file,
// and the next start listens again.
func (d *Daemon) closeForwards() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, f := range d.forwards {
		f.close()
	}
}
