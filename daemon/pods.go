package daemon

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	vswitch "tapswitch/switch"
	"tapswitch/tap"
)

// Conditions the API maps to HTTP status codes.
var (
	ErrInvalid  = errors.New("invalid request")
	ErrConflict = errors.New("conflict")
	ErrNotFound = errors.New("not found")
)

// DefaultIfName is the pod interface's name when a request names none.
const DefaultIfName = "eth0"

// validID is what the CNI spec allows in a container ID.
var validID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.\-]{0,252}$`)

func validateRequest(req *PodRequest) error {
	if !validID.MatchString(req.ID) {
		return fmt.Errorf("%w: pod id %q: use 1 to 253 letters, digits, '_', '.' or '-', starting with a letter or digit", ErrInvalid, req.ID)
	}
	if req.IfName == "" {
		req.IfName = DefaultIfName
	}
	if err := ValidIfName(req.IfName); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if req.NetNS == "" {
		return fmt.Errorf("%w: netns path is required", ErrInvalid)
	}
	if _, err := os.Stat(req.NetNS); err != nil {
		return fmt.Errorf("%w: netns %s: %v", ErrInvalid, req.NetNS, errors.Unwrap(err))
	}
	return nil
}

// ValidIfName reports whether name can name a Linux network device, by the
// kernel's rules (dev_valid_name in net/core/dev.c) less ':', which marks
// an alias.
func ValidIfName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("interface name is empty")
	case len(name) > 15:
		return fmt.Errorf("interface name %q is longer than 15 bytes", name)
	case name == "." || name == "..":
		return fmt.Errorf("interface name %q is not allowed", name)
	case strings.ContainsAny(name, "/: \t\n\r\v\f\x00"):
		return fmt.Errorf("interface name %q contains '/', ':' or white space", name)
	}
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
// attaches it to the switch. On any failure nothing of it is left.
func (d *Daemon) AddPod(req PodRequest) (Pod, error) {
	if err := validateRequest(&req); err != nil {
		return Pod{}, err
	}
	pod := Pod{ID: req.ID, NetNS: req.NetNS, IfName: req.IfName, MAC: podMAC(req.ID, req.IfName), MTU: d.opts.MTU, Port: req.ID}
	if err := d.reserve(&pod); err != nil {
		return Pod{}, err
	}
	attached := false
	defer func() {
		if !attached {
			d.unreserve(pod)
		}
	}()

	port, err := tap.Create(tap.Config{
		NetNS: pod.NetNS, Name: pod.IfName, PortName: pod.Port, MAC: pod.MAC, MTU: pod.MTU,
		Addrs: pod.IPs, Gateway: pod.Gateways[0], Logger: d.log.With("pod", pod.ID),
	})
	if err != nil {
		if errors.Is(err, tap.ErrExists) {
			return Pod{}, fmt.Errorf("%w: %w", ErrConflict, err)
		}
		return Pod{}, err
	}
	defer func() {
		if !attached {
			if err := tap.Delete(pod.NetNS, pod.IfName); err != nil {
				d.log.Error("cleanup of failed attach", "pod", pod.ID, "err", err)
			}
		}
	}()
	if pod.PortID, err = d.attach(pod, port); err != nil {
		return Pod{}, err
	}
	pod.Created = time.Now().UTC().Truncate(time.Second)

	d.mu.Lock()
	defer d.mu.Unlock()
	d.pods[pod.ID] = &podEntry{Pod: pod, ready: true}
	if err := d.saveLocked(); err != nil {
		d.pods[pod.ID].ready = false
		d.sw.RemovePort(pod.PortID)
		return Pod{}, err
	}
	attached = true
	d.log.Info("pod attached", "pod", pod.ID, "netns", pod.NetNS, "ifname", pod.IfName, "mac", pod.MAC, "ips", pod.IPs)
	return pod, nil
}

// reserve claims the pod's ID and addresses, filling in pod.IPs and
// pod.Gateways.
func (d *Daemon) reserve(pod *Pod) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.pods[pod.ID]; ok {
		return fmt.Errorf("%w: pod %s is already attached", ErrConflict, pod.ID)
	}
	ip4, err := d.v4.allocate(pod.ID)
	if err != nil {
		return err
	}
	pod.IPs = []netip.Prefix{ip4}
	pod.Gateways = []netip.Addr{d.v4.gateway}
	if d.v6 != nil {
		ip6, err := d.v6.allocate(pod.ID)
		if err != nil {
			d.v4.release(ip4.Addr())
			return err
		}
		pod.IPs = append(pod.IPs, ip6)
		pod.Gateways = append(pod.Gateways, d.v6.gateway)
	}
	d.pods[pod.ID] = &podEntry{Pod: Pod{ID: pod.ID}}
	return nil
}

// unreserve undoes reserve.
func (d *Daemon) unreserve(pod Pod) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.releaseLocked(pod)
	delete(d.pods, pod.ID)
}

func (d *Daemon) releaseLocked(pod Pod) {
	for _, p := range pod.IPs {
		if p.Addr().Is4() {
			d.v4.release(p.Addr())
		} else if d.v6 != nil {
			d.v6.release(p.Addr())
		}
	}
}

// attach adds port to the switch and binds the pod's IPv4 address for the
// ARP responder. On failure the port is closed.
func (d *Daemon) attach(pod Pod, port vswitch.Port) (vswitch.PortID, error) {
	id, err := d.sw.AddPort(port)
	if err != nil {
		port.Close()
		return 0, fmt.Errorf("attach pod %s: %w", pod.ID, err)
	}
	for _, p := range pod.IPs {
		if err := d.sw.Bind(vswitch.Binding{IP: p.Addr(), MAC: pod.MAC, Port: id}); err != nil {
			d.sw.RemovePort(id)
			return 0, fmt.Errorf("attach pod %s: %w", pod.ID, err)
		}
	}
	return id, nil
}

// DeletePod detaches the pod, removes its TAP and releases its addresses.
// If the TAP cannot be removed the pod stays listed (detached) and the
// error says why, so the delete can be retried.
func (d *Daemon) DeletePod(id string) error {
	d.mu.Lock()
	e, ok := d.pods[id]
	switch {
	case !ok:
		d.mu.Unlock()
		return fmt.Errorf("%w: pod %s", ErrNotFound, id)
	case !e.ready:
		d.mu.Unlock()
		return fmt.Errorf("%w: pod %s is being attached or deleted", ErrConflict, id)
	}
	e.ready = false
	pod := e.Pod
	d.mu.Unlock()

	if pod.PortID != 0 {
		if err := d.sw.RemovePort(pod.PortID); err != nil {
			d.log.Warn("remove port", "pod", id, "err", err)
		}
	}
	if err := tap.Delete(pod.NetNS, pod.IfName); err != nil {
		d.mu.Lock()
		e.PortID, e.ready = 0, true
		d.saveLocked()
		d.mu.Unlock()
		return fmt.Errorf("delete pod %s: %w", id, err)
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	d.releaseLocked(pod)
	delete(d.pods, id)
	d.log.Info("pod deleted", "pod", id)
	return d.saveLocked()
}

// Pods lists the attached pods sorted by ID.
func (d *Daemon) Pods() []Pod {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]Pod, 0, len(d.pods))
	for _, e := range d.pods {
		if e.ready {
			out = append(out, e.Pod)
		}
	}
	slices.SortFunc(out, func(a, b Pod) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// PodByID returns one pod.
func (d *Daemon) PodByID(id string) (Pod, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	e, ok := d.pods[id]
	if !ok || !e.ready {
		return Pod{}, fmt.Errorf("%w: pod %s", ErrNotFound, id)
	}
	return e.Pod, nil
}

// saveLocked writes the ready pods to the state file. d.mu is held.
func (d *Daemon) saveLocked() error {
	pods := make([]Pod, 0, len(d.pods))
	for _, e := range d.pods {
		if e.ready {
			pods = append(pods, e.Pod)
		}
	}
	slices.SortFunc(pods, func(a, b Pod) int { return strings.Compare(a.ID, b.ID) })
	return d.state.save(pods)
}

// restore re-attaches the pods of the state file: their TAPs persisted
// while the daemon was down. A pod whose netns or TAP is gone is forgotten
// and its addresses released.
func (d *Daemon) restore() error {
	saved, err := d.state.load()
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, pod := range saved {
		if err := d.reserveSavedLocked(pod); err != nil {
			return fmt.Errorf("state file %s: %w", d.state.path, err)
		}
		pod.PortID = 0
		d.pods[pod.ID] = &podEntry{Pod: pod, ready: true}
		if _, err := os.Stat(pod.NetNS); err != nil {
			d.forgetLocked(pod, "netns is gone")
			continue
		}
		port, err := tap.Open(tap.Config{NetNS: pod.NetNS, Name: pod.IfName, PortName: pod.Port, MAC: pod.MAC, MTU: pod.MTU, Logger: d.log.With("pod", pod.ID)})
		if errors.Is(err, tap.ErrNotFound) {
			d.forgetLocked(pod, "tap device is gone")
			continue
		}
		if err != nil {
			d.log.Error("re-attach pod, it stays detached until deleted", "pod", pod.ID, "err", err)
			continue
		}
		if d.pods[pod.ID].PortID, err = d.attach(pod, port); err != nil {
			d.log.Error("re-attach pod, it stays detached until deleted", "pod", pod.ID, "err", err)
			continue
		}
		d.log.Info("pod re-attached", "pod", pod.ID)
	}
	return d.saveLocked()
}

func (d *Daemon) reserveSavedLocked(pod Pod) error {
	if _, dup := d.pods[pod.ID]; dup {
		return fmt.Errorf("pod %s is listed twice", pod.ID)
	}
	for _, p := range pod.IPs {
		r := d.v4
		if p.Addr().Is6() {
			r = d.v6
		}
		if r == nil || !r.prefix.Contains(p.Addr()) {
			return fmt.Errorf("pod %s has address %s outside the pod cidrs (was the daemon started with other --pod-cidr flags?)", pod.ID, p)
		}
		if err := r.reserve(p.Addr(), pod.ID); err != nil {
			return err
		}
	}
	return nil
}

func (d *Daemon) forgetLocked(pod Pod, why string) {
	d.releaseLocked(pod)
	delete(d.pods, pod.ID)
	d.log.Info("pod forgotten", "pod", pod.ID, "reason", why)
}
