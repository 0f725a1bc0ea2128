package daemon

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"tapswitch/daemon/api"
	"tapswitch/internal/netnsutil"
	"tapswitch/ipam"
	vswitch "tapswitch/switch"
	"tapswitch/tap"
)

// Conditions the API maps to HTTP status codes.
var (
	ErrInvalid  = errors.New("invalid request")
	ErrConflict = errors.New("conflict")
	// ErrBusy: another call is attaching or deleting that pod right now;
	// the API answers 503, try again.
	ErrBusy     = errors.New("busy")
	ErrNotFound = errors.New("not found")
)

// DefaultIfName is the pod interface's name when a request names none.
const DefaultIfName = "eth0"

// nameRE is what the CNI spec allows in a container ID and a network
// name. Pod IDs follow it too, and so do the Kubernetes namespace and
// name: those are DNS-1123 names, but podman passes its container name as
// K8S_POD_NAME (happy_turing, or a user's MyDB), and they are only
// recorded and shown.
var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.\-]*$`)

// Length bounds: a pod ID and the Kubernetes names as a DNS-1123
// subdomain; the CNI spec sets none, so ours for the CNI names.
const (
	maxIDLen      = 253
	maxCNINameLen = 1000
)

// checkName checks v, the what of a request, against nameRE and max.
func checkName(what, v string, max int) error {
	if len(v) > max || !nameRE.MatchString(v) {
		return fmt.Errorf("%w: %s %q: use 1 to %d letters, digits, '_', '.' or '-', starting with a letter or digit", ErrInvalid, what, v, max)
	}
	return nil
}

func validateRequest(req *api.PodRequest) error {
	if err := checkName("pod id", req.ID, maxIDLen); err != nil {
		return err
	}
	optional := []struct {
		what, v string
		max     int
	}{
		{"pod namespace", req.PodNamespace, maxIDLen},
		{"pod name", req.PodName, maxIDLen},
		{"container id", req.ContainerID, maxCNINameLen},
		{"network name", req.Network, maxCNINameLen},
	}
	for _, o := range optional {
		if o.v == "" {
			continue
		}
		if err := checkName(o.what, o.v, o.max); err != nil {
			return err
		}
	}
	if req.MAC != nil && (req.MAC.Zero() || req.MAC.Multicast()) {
		return fmt.Errorf("%w: mac %s: want a unicast address", ErrInvalid, req.MAC)
	}
	if req.IfName == "" {
		req.IfName = DefaultIfName
	}
	if err := tap.ValidName(req.IfName); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if !filepath.IsAbs(req.NetNS) {
		return fmt.Errorf("%w: netns path %q: want an absolute path such as /var/run/netns/NAME", ErrInvalid, req.NetNS)
	}
	h, err := netnsutil.Open(req.NetNS)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	h.Close()
	return nil
}

// podMAC derives a pod's MAC from its attachment, so a re-attached pod keeps
// it: locally administered (bit 1 of the first byte), unicast (bit 0 clear).
func podMAC(id, ifname string) vswitch.MAC {
	sum := sha256.Sum256([]byte(id + "/" + ifname))
	var m vswitch.MAC
	copy(m[:], sum[:6])
	m[0] = m[0]&0xfc | 0x02
	return m
}

// AddPod creates the pod's TAP inside its netns, gives it addresses and
// attaches it to the switch. The pod is on disk as pending before its TAP
// exists, so a crash at any point is undone on the next start. On any
// failure nothing of it is left.
func (d *Daemon) AddPod(req api.PodRequest) (api.Pod, error) {
	if err := validateRequest(&req); err != nil {
		return api.Pod{}, err
	}
	pod := api.Pod{
		ID: req.ID, NetNS: req.NetNS, IfName: req.IfName, MAC: podMAC(req.ID, req.IfName), Port: req.ID,
		PodNamespace: req.PodNamespace, PodName: req.PodName, ContainerID: req.ContainerID, Network: req.Network,
		MTU: d.opts.MTU, Offloads: !d.opts.NoOffloads, Queues: d.opts.Queues,
	}
	if req.Offloads != nil {
		pod.Offloads = *req.Offloads
	}
	if req.MAC != nil {
		pod.MAC = *req.MAC
	}
	if err := validateBandwidth(req.Bandwidth, pod.MTU); err != nil {
		return api.Pod{}, err
	}
	if b := req.Bandwidth; b != nil && *b != (api.Bandwidth{}) {
		pod.Bandwidth = new(*b)
	}
	if err := d.reserve(&pod); err != nil {
		return api.Pod{}, err
	}
	pod, err := d.create(pod)
	if err != nil {
		d.unreserve(pod)
		return api.Pod{}, err
	}
	d.log.Info("pod attached", "pod", pod.ID, "netns", pod.NetNS, "ifname", pod.IfName, "mac", pod.MAC, "ips", pod.IPs)
	return pod, nil
}

// reserve claims the pod's ID and addresses, filling in pod.IPs and
// pod.Gateways, and records the pod on disk as a pending add.
func (d *Daemon) reserve(pod *api.Pod) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if e, ok := d.pods[pod.ID]; ok {
		if e.state == podReady {
			return fmt.Errorf("%w: pod %s is already attached", ErrConflict, pod.ID)
		}
		return fmt.Errorf("%w: pod %s is being attached or deleted", ErrBusy, pod.ID)
	}
	if owner := d.macOwnerLocked(pod.MAC); owner != "" {
		return fmt.Errorf("%w: mac %s is in use by %s", ErrConflict, pod.MAC, owner)
	}
	lease, err := d.ipam.Allocate(leaseKey(*pod))
	if errors.Is(err, ErrExhausted) && d.releaseOrphanLeasesLocked() == nil {
		// Leases whose release failed earlier are freed now, not only at
		// the next start.
		lease, err = d.ipam.Allocate(leaseKey(*pod))
	}
	if err != nil {
		return err
	}
	pod.IPs = lease.IPs
	for _, gw := range d.gatewayAddrs() {
		pod.Gateways = append(pod.Gateways, gw.Addr())
		if len(d.opts.DNS) > 0 {
			pod.DNS = append(pod.DNS, gw.Addr())
		}
	}
	d.pods[pod.ID] = &podEntry{Pod: *pod, state: podAdding}
	if err := d.saveLocked(); err != nil {
		d.releaseLocked(*pod)
		delete(d.pods, pod.ID)
		return err
	}
	return nil
}

// macOwnerLocked names the port that has mac, or returns "": the
// gateway, the host port, or a pod (in any state). Two ports with one MAC
// would take each other's frames.
func (d *Daemon) macOwnerLocked(mac vswitch.MAC) string {
	switch mac {
	case gatewayMAC():
		return "the gateway"
	case hostPortMAC():
		return "the host port"
	}
	for _, e := range d.pods {
		if e.MAC == mac {
			return "pod " + e.ID
		}
	}
	return ""
}

// create makes the pod's TAP, attaches it and records the pod as ready.
// On failure it undoes what it made; the reservation stays the caller's.
func (d *Daemon) create(pod api.Pod) (api.Pod, error) {
	port, err := tap.Create(tap.Config{
		NetNS: pod.NetNS, Name: pod.IfName, PortName: pod.Port, MAC: pod.MAC, MTU: pod.MTU,
		Addrs: pod.IPs, Gateways: pod.Gateways, Offloads: pod.Offloads, Queues: pod.Queues,
		Egress: egressLimit(pod), Logger: d.log.With("pod", pod.ID),
	})
	if errors.Is(err, tap.ErrExists) {
		return pod, fmt.Errorf("%w: %w", ErrConflict, err)
	}
	if err != nil {
		return pod, err
	}
	if pod.PortID, err = d.attach(pod, port); err != nil {
		d.deleteTAP(pod)
		return pod, err
	}
	pod.Created = time.Now().UTC().Truncate(time.Second)

	d.mu.Lock()
	e := d.pods[pod.ID]
	e.Pod, e.state = pod, podReady
	err = d.saveLocked()
	if err != nil {
		e.state = podAdding
	}
	d.mu.Unlock()
	if err != nil {
		d.detach(pod)
		d.deleteTAP(pod)
	}
	return pod, err
}

// unreserve forgets a pod whose add failed and releases its addresses.
func (d *Daemon) unreserve(pod api.Pod) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.releaseLocked(pod)
	delete(d.pods, pod.ID)
	if err := d.saveLocked(); err != nil {
		// The pending add stays on disk; the next start removes it.
		d.log.Error("forget failed pod add", "pod", pod.ID, "err", err)
	}
}

// releaseLocked gives the pod's addresses back. A release that cannot be
// written leaves the lease; the next start's reconciliation frees it.
func (d *Daemon) releaseLocked(pod api.Pod) {
	if _, _, err := d.ipam.Release(leaseKey(pod)); err != nil {
		d.log.Error("release addresses; freed at the next start", "pod", pod.ID, "err", err)
	}
}

// attach adds port to the switch and binds the pod's addresses for the
// ARP responder. On failure the port is closed.
func (d *Daemon) attach(pod api.Pod, port vswitch.Port) (vswitch.PortID, error) {
	id, err := d.sw.AddPort(port)
	if err != nil {
		port.Close()
		return 0, fmt.Errorf("attach pod %s: %w", pod.ID, err)
	}
	for _, p := range pod.IPs {
		if err := d.sw.Bind(vswitch.Binding{IP: p.Addr(), MAC: pod.MAC, Port: id}); err != nil {
			pod.PortID = id
			d.detach(pod)
			return 0, fmt.Errorf("attach pod %s: %w", pod.ID, err)
		}
	}
	if l := ingressLimit(pod); l.Rate > 0 {
		if err := d.sw.SetTxLimit(id, l); err != nil {
			pod.PortID = id
			d.detach(pod)
			return 0, fmt.Errorf("attach pod %s: %w", pod.ID, err)
		}
	}
	return id, nil
}

// detach removes the pod's port from the switch, if it has one.
func (d *Daemon) detach(pod api.Pod) {
	if pod.PortID == 0 {
		return
	}
	if err := d.sw.RemovePort(pod.PortID); err != nil {
		d.log.Warn("remove port", "pod", pod.ID, "err", err)
	}
}

// deleteTAP removes the pod's TAP on a failure path, where the first error
// is what the caller reports.
func (d *Daemon) deleteTAP(pod api.Pod) {
	if err := tap.Delete(pod.NetNS, pod.IfName); err != nil {
		d.log.Error("remove tap of failed attach", "pod", pod.ID, "err", err)
	}
}

// DeletePod detaches the pod, removes its TAP and releases its addresses.
// The pod is on disk as a pending delete first, so a crash half-way is
// finished on the next start. If the TAP cannot be removed the pod stays
// listed (detached) and the error says why, so the delete can be retried.
func (d *Daemon) DeletePod(id string) error {
	d.mu.Lock()
	e, ok := d.pods[id]
	switch {
	case !ok:
		d.mu.Unlock()
		return fmt.Errorf("%w: pod %s", ErrNotFound, id)
	case e.state != podReady:
		d.mu.Unlock()
		return fmt.Errorf("%w: pod %s is being attached or deleted", ErrBusy, id)
	}
	e.state = podDeleting
	if err := d.saveLocked(); err != nil {
		e.state = podReady
		d.mu.Unlock()
		return err
	}
	pod := e.Pod
	d.mu.Unlock()

	d.detach(pod)
	if err := tap.Delete(pod.NetNS, pod.IfName); err != nil {
		d.mu.Lock()
		e.PortID, e.state = 0, podReady
		if serr := d.saveLocked(); serr != nil {
			err = errors.Join(err, serr)
		}
		d.mu.Unlock()
		return fmt.Errorf("delete pod %s: %w", id, err)
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	d.dropForwardsLocked(id)
	d.releaseLocked(pod)
	delete(d.pods, id)
	d.log.Info("pod deleted", "pod", id)
	return d.saveLocked()
}

// Pods lists the attached pods sorted by ID.
func (d *Daemon) Pods() []api.Pod {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]api.Pod, 0, len(d.pods))
	for _, e := range d.pods {
		if e.state == podReady {
			out = append(out, e.Pod)
		}
	}
	slices.SortFunc(out, func(a, b api.Pod) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// PodByID returns one pod.
func (d *Daemon) PodByID(id string) (api.Pod, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	e, ok := d.pods[id]
	if !ok || e.state != podReady {
		return api.Pod{}, fmt.Errorf("%w: pod %s", ErrNotFound, id)
	}
	return e.Pod, nil
}

// saveLocked writes every pod, pending ones with their state, and every
// port forward to the state file. d.mu is held.
func (d *Daemon) saveLocked() error {
	pods := make([]savedPod, 0, len(d.pods))
	for _, e := range d.pods {
		pods = append(pods, savedPod{Pod: e.Pod, State: e.state})
	}
	slices.SortFunc(pods, func(a, b savedPod) int { return strings.Compare(a.ID, b.ID) })
	return d.state.write(savedState{Pods: pods, Forwards: d.savedForwardsLocked()})
}

// restore re-attaches the pods of the state file: their TAPs persisted
// while the daemon was down. An add or delete a crash cut short is undone
// or finished; a pod whose netns or TAP is gone is forgotten and its
// addresses released. The address store is reconciled with the saved
// pods: a lease without a pod is released, a pod without its lease has
// its addresses adopted (or is removed if another pod holds them).
func (d *Daemon) restore() error {
	saved, err := d.state.read()
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, sp := range saved.Pods {
		if _, dup := d.pods[sp.ID]; dup {
			return fmt.Errorf("state file %s: pod %s is listed twice", d.state.path, sp.ID)
		}
		pod := sp.Pod
		pod.PortID = 0
		d.pods[pod.ID] = &podEntry{Pod: pod, state: podReady}
	}
	// Leases of attachments the state file does not name go first: the
	// daemon crashed after writing the lease and before the pod, so no
	// TAP uses their addresses, and a saved pod may need one back.
	if err := d.releaseOrphanLeasesLocked(); err != nil {
		return err
	}
	for _, sp := range saved.Pods {
		pod := d.pods[sp.ID].Pod
		if sp.State != podReady {
			d.finishLocked(pod, "interrupted "+string(sp.State))
			continue
		}
		if netnsGone(pod.NetNS) {
			d.forgetLocked(pod, "netns is gone")
			continue
		}
		if err := d.ensureLease(pod); err != nil {
			d.log.Error("pod whose addresses the store cannot lease it; removing it", "pod", pod.ID, "err", err)
			d.finishLocked(pod, "no lease")
			continue
		}
		d.reattachLocked(pod)
	}
	return d.restoreForwardsLocked(saved.Forwards)
}

// netnsGone reports whether the netns at path is gone: no file, or a
// stale one whose namespace is no more (see netnsutil.Gone).
func netnsGone(path string) bool {
	h, err := netnsutil.Open(path)
	if err == nil {
		h.Close()
	}
	return netnsutil.Gone(err)
}

// reattachLocked opens the TAP of a saved pod and attaches it, or forgets
// the pod if its TAP is gone.
func (d *Daemon) reattachLocked(pod api.Pod) {
	port, err := tap.Open(tap.Config{
		NetNS: pod.NetNS, Name: pod.IfName, PortName: pod.Port, MAC: pod.MAC, MTU: pod.MTU,
		Offloads: pod.Offloads, Queues: max(pod.Queues, 1), Logger: d.log.With("pod", pod.ID),
	})
	if errors.Is(err, tap.ErrNotFound) {
		d.forgetLocked(pod, "tap device is gone")
		return
	}
	if err == nil {
		pod.PortID, err = d.attach(pod, port)
	}
	if err != nil {
		d.log.Error("re-attach pod; it stays detached until deleted", "pod", pod.ID, "err", err)
		return
	}
	d.pods[pod.ID].PortID = pod.PortID
	d.log.Info("pod re-attached", "pod", pod.ID)
}

// releaseOrphanLeasesLocked releases the leases of attachments the daemon
// does not know: a crash after the lease was written and before the pod
// was, or a pod forgotten while its release could not be written. Every
// attachment holding a lease is in d.pods whenever d.mu is held.
func (d *Daemon) releaseOrphanLeasesLocked() error {
	live := make([]ipam.Key, 0, len(d.pods))
	for _, e := range d.pods {
		live = append(live, leaseKey(e.Pod))
	}
	released, err := d.ipam.GC(live)
	if err != nil {
		return fmt.Errorf("release leases of unknown pods: %w", err)
	}
	for _, l := range released {
		d.log.Info("lease released: no such pod", "container_id", l.Key.ContainerID, "ifname", l.Key.IfName, "ips", l.IPs)
	}
	return nil
}

// finishLocked removes a saved pod's TAP and forgets the pod: an add (by
// undoing it) or a delete that a crash interrupted, or a pod that lost its
// lease. If the TAP cannot be removed the pod stays, detached, for a later
// delete.
func (d *Daemon) finishLocked(pod api.Pod, why string) {
	if err := tap.Delete(pod.NetNS, pod.IfName); err != nil {
		d.log.Error("remove the TAP of a pod to forget ("+why+"); the pod stays detached until deleted", "pod", pod.ID, "err", err)
		return
	}
	d.forgetLocked(pod, why)
}

func (d *Daemon) forgetLocked(pod api.Pod, why string) {
	d.dropForwardsLocked(pod.ID)
	d.releaseLocked(pod)
	delete(d.pods, pod.ID)
	d.log.Info("pod forgotten", "pod", pod.ID, "reason", why)
}
