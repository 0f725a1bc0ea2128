package daemon

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"tapswitch/daemon/api"
	"tapswitch/internal/netnsutil"
	"tapswitch/tap"
)

// ErrMismatch is wrapped by CheckPod's error when a pod is not as the
// daemon made it; the API answers 409 with what differs.
var ErrMismatch = errors.New("pod is not as attached")

// CheckPod checks that the pod is attached to the switch with its ingress
// limit, and that its TAP is in its netns with the MAC, MTU, addresses,
// default routes and egress qdisc the daemon gave it, up. The error lists
// every difference found.
func (d *Daemon) CheckPod(id string) (api.Pod, error) {
	pod, err := d.PodByID(id)
	if err != nil {
		return api.Pod{}, err
	}
	var diffs []string
	if pod.PortID == 0 {
		diffs = append(diffs, "not attached to the switch (its TAP could not be re-opened; delete and add the pod)")
	} else if l, err := d.sw.TxLimit(pod.PortID); err != nil {
		diffs = append(diffs, fmt.Sprintf("switch port %d: %v", pod.PortID, err))
	} else if want := ingressLimit(pod); l != want {
		diffs = append(diffs, fmt.Sprintf("ingress limit is %d bit/s (burst %d bit), want %d (burst %d)", l.Rate, l.Burst, want.Rate, want.Burst))
	}
	link, err := tap.Inspect(pod.NetNS, pod.IfName)
	switch {
	case netnsutil.Gone(err):
		diffs = append(diffs, fmt.Sprintf("netns %s is gone", pod.NetNS))
	case errors.Is(err, tap.ErrNotFound):
		diffs = append(diffs, fmt.Sprintf("no interface %s in netns %s", pod.IfName, pod.NetNS))
	case err != nil:
		return api.Pod{}, fmt.Errorf("check pod %s: %w", id, err)
	default:
		diffs = append(diffs, linkDiffs(pod, link)...)
	}
	if len(diffs) > 0 {
		return pod, fmt.Errorf("%w: pod %s: %s", ErrMismatch, id, strings.Join(diffs, "; "))
	}
	return pod, nil
}

// linkDiffs lists how link differs from what the daemon made for pod.
// Other addresses and routes are allowed: a chained plugin may add them.
func linkDiffs(pod api.Pod, link tap.Link) []string {
	var diffs []string
	if !link.TAP {
		diffs = append(diffs, fmt.Sprintf("%s is a %s device, not a multiqueue tap", pod.IfName, link.Kind))
	}
	if link.MAC != pod.MAC {
		diffs = append(diffs, fmt.Sprintf("mac is %s, want %s", link.MAC, pod.MAC))
	}
	if link.MTU != pod.MTU {
		diffs = append(diffs, fmt.Sprintf("mtu is %d, want %d", link.MTU, pod.MTU))
	}
	if !link.Up {
		diffs = append(diffs, "link is down")
	}
	for _, a := range pod.IPs {
		if !slices.Contains(link.Addrs, a) {
			diffs = append(diffs, fmt.Sprintf("address %s is missing", a))
		}
	}
	for _, gw := range pod.Gateways {
		if !slices.Contains(link.Gateways, gw) {
			diffs = append(diffs, fmt.Sprintf("default route via %s is missing", gw))
		}
	}
	// The qdisc keeps bytes a second: compare at that grain.
	if want := egressLimit(pod).Rate / 8 * 8; link.EgressRate != want {
		diffs = append(diffs, fmt.Sprintf("egress limit is %d bit/s, want %d", link.EgressRate, want))
	}
	return diffs
}

// Status returns the pools of the pod CIDRs.
func (d *Daemon) Status() api.Status {
	size4, size6 := d.ipam.Size()
	free4, free6 := d.ipam.Free()
	st := api.Status{Pods: d.readyPods()}
	st.Pools = append(st.Pools, api.Pool{CIDR: d.opts.PodCIDR, Size: size4, Free: free4})
	if d.opts.PodCIDR6.IsValid() {
		st.Pools = append(st.Pools, api.Pool{CIDR: d.opts.PodCIDR6, Size: size6, Free: free6})
	}
	return st
}
