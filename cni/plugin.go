package cni

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"golang.org/x/sys/unix"

	"tapswitch/daemon/api"
)

// Timeouts of one plugin call's talk with the daemon. An ADD creates a TAP
// and writes two files with fsync; the runtime has its own, longer, bound.
const (
	opTimeout     = 60 * time.Second
	statusTimeout = 10 * time.Second
	// undoTimeout bounds the undo of a failed ADD, which runs even when
	// the failure was opTimeout running out.
	undoTimeout = 10 * time.Second
)

// Funcs are the plugin's command handlers, for skel.PluginMainFuncs.
func Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: cmdAdd, Del: cmdDel, Check: cmdCheck, Status: cmdStatus, GC: cmdGC}
}

// cmdAdd attaches the pod through the daemon, makes its port forwards and
// prints the result. An attachment that exists already is answered with
// its result; what this call made is undone if a later step fails.
func cmdAdd(args *skel.CmdArgs) error {
	conf, err := parseConfig(args.StdinData)
	if err != nil {
		return err
	}
	kargs, err := parseArgs(args.Args)
	if err != nil {
		return err
	}
	macArg := conf.RuntimeConfig.MAC
	if macArg == "" {
		// podman's --mac-address comes as CNI_ARGS MAC=, as the bridge
		// plugin takes it.
		macArg = string(kargs.MAC)
	}
	mac, err := parseMAC(macArg)
	if err != nil {
		return err
	}
	c := api.NewClient(conf.Socket)
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()

	id := PodID(args.ContainerID, args.IfName)
	pod, err := c.AddPod(ctx, api.PodRequest{
		ID: id, NetNS: args.Netns, IfName: args.IfName, MAC: mac, Bandwidth: conf.RuntimeConfig.Bandwidth.request(),
		ContainerID: args.ContainerID, Network: conf.Name,
		PodNamespace: string(kargs.K8S_POD_NAMESPACE), PodName: string(kargs.K8S_POD_NAME),
	})
	made := err == nil
	if isStatus(err, http.StatusConflict) {
		// A repeated ADD for the same attachment gets the existing one.
		if old, gerr := c.Pod(ctx, id); gerr == nil && sameAttachment(old, args) {
			pod, err = old, nil
		}
	}
	if err != nil {
		return daemonError("attach the pod", err)
	}
	undo := func() {
		if !made {
			return
		}
		uctx, ucancel := context.WithTimeout(context.WithoutCancel(ctx), undoTimeout)
		defer ucancel()
		if derr := c.DeletePod(uctx, id); derr != nil {
			fmt.Fprintf(os.Stderr, "tapswitch: undo attachment of %s: %v\n", id, derr)
		}
	}

	if err := ensureForwards(ctx, c, pod, conf.RuntimeConfig.PortMappings); err != nil {
		undo()
		return err
	}
	res, err := addResult(pod, conf)
	if err == nil {
		err = types.PrintResult(res, conf.CNIVersion)
	}
	if err != nil {
		undo()
		return err
	}
	return nil
}

// addResult is ADD's answer: the pod's result, after the interfaces, IPs,
// routes and nameservers of prevResult when a plugin ran before this one
// (a loopback plugin listed first, say), as the spec asks.
func addResult(pod api.Pod, conf *NetConf) (types.Result, error) {
	res, err := Result(pod, conf.CNIVersion)
	if err != nil || conf.PrevResult == nil {
		return res, err
	}
	prev, err := types100.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "cannot convert prevResult", err.Error())
	}
	ours, err := types100.NewResultFromResult(res)
	if err != nil {
		return nil, fmt.Errorf("cni: convert result: %w", err)
	}
	shift := len(prev.Interfaces)
	prev.Interfaces = append(prev.Interfaces, ours.Interfaces...)
	for _, ip := range ours.IPs {
		if ip.Interface != nil {
			ip.Interface = types100.Int(*ip.Interface + shift)
		}
		prev.IPs = append(prev.IPs, ip)
	}
	prev.Routes = append(prev.Routes, ours.Routes...)
	prev.DNS.Nameservers = append(prev.DNS.Nameservers, ours.DNS.Nameservers...)
	out, err := prev.GetAsVersion(conf.CNIVersion)
	if err != nil {
		return nil, fmt.Errorf("cni: convert result to %s: %w", conf.CNIVersion, err)
	}
	return out, nil
}

// sameAttachment reports whether the daemon's pod is the attachment args
// names: same container, interface and network namespace.
func sameAttachment(pod api.Pod, args *skel.CmdArgs) bool {
	return pod.ContainerID == args.ContainerID && pod.IfName == args.IfName && sameFile(pod.NetNS, args.Netns)
}

// sameFile reports whether two paths name the same file: runtimes may
// name one netns by its bind mount or by /proc/PID/ns/net.
func sameFile(a, b string) bool {
	if a == b {
		return true
	}
	var sa, sb unix.Stat_t
	if unix.Stat(a, &sa) != nil || unix.Stat(b, &sb) != nil {
		return false
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

// ensureForwards makes the pod's port forwards for mappings, keeping the
// ones that exist already.
func ensureForwards(ctx context.Context, c *api.Client, pod api.Pod, mappings []PortMapping) error {
	if len(mappings) == 0 {
		return nil
	}
	reqs, err := forwardRequests(pod.ID, mappings, pod.IPs)
	if err != nil {
		return err
	}
	have, err := c.Forwards(ctx)
	if err != nil {
		return daemonError("list port forwards", err)
	}
	for _, req := range reqs {
		exists := slices.ContainsFunc(have, func(fw api.Forward) bool {
			return fw.Pod == req.Pod && fw.Proto == req.Proto && fw.Listen.String() == req.Listen && int(fw.Port) == req.Port
		})
		if exists {
			continue
		}
		if _, err := c.AddForward(ctx, req); err != nil {
			return daemonError(fmt.Sprintf("forward %s %s to port %d", req.Proto, req.Listen, req.Port), err)
		}
	}
	return nil
}

// cmdDel detaches the pod: its TAP, addresses and port forwards go. It
// succeeds when there is nothing to delete: the netns gone, CNI_NETNS
// empty, the pod unknown, a second DEL. Only a daemon that does not answer,
// or a pod still being attached, fails it (code 11, try again), since the
// address would stay leased.
func cmdDel(args *skel.CmdArgs) error {
	conf, err := parseConfig(args.StdinData)
	if err != nil {
		return err
	}
	c := api.NewClient(conf.Socket)
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()

	id := PodID(args.ContainerID, args.IfName)
	pod, err := c.Pod(ctx, id)
	switch {
	case isStatus(err, http.StatusNotFound):
		// No ready pod, but maybe one being attached by an ADD the
		// runtime gave up on: the delete then answers busy (503, code 11)
		// and the runtime tries again once the ADD is done.
	case err != nil:
		return daemonError("look up the pod", err)
	case pod.ContainerID != args.ContainerID || pod.IfName != args.IfName:
		// Another attachment has this ID (a pod made with tapswitchctl):
		// not ours to delete.
		return nil
	}
	if err := c.DeletePod(ctx, id); err != nil && !isStatus(err, http.StatusNotFound) {
		return daemonError("detach the pod", err)
	}
	return nil
}

// cmdCheck checks the attachment against prevResult and against what the
// daemon finds in the pod's netns.
func cmdCheck(args *skel.CmdArgs) error {
	conf, err := parseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if conf.PrevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "CHECK needs prevResult", "the runtime passed no prevResult")
	}
	prev, err := types100.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "cannot convert prevResult", err.Error())
	}
	c := api.NewClient(conf.Socket)
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()

	id := PodID(args.ContainerID, args.IfName)
	pod, err := c.CheckPod(ctx, id)
	if isStatus(err, http.StatusNotFound) {
		return types.NewError(types.ErrUnknownContainer, "no such attachment",
			fmt.Sprintf("tapswitchd has no pod %s (container %s, interface %s)", id, args.ContainerID, args.IfName))
	}
	var ae *api.APIError
	if errors.As(err, &ae) && ae.Status == http.StatusConflict {
		return types.NewError(ErrCheckFailed, "the attachment differs from what tapswitchd made", ae.Message)
	}
	if err != nil {
		return daemonError("check the pod", err)
	}
	var diffs []string
	if pod.ContainerID != args.ContainerID {
		diffs = append(diffs, fmt.Sprintf("pod %s belongs to container %q", id, pod.ContainerID))
	}
	if !sameFile(pod.NetNS, args.Netns) {
		diffs = append(diffs, fmt.Sprintf("pod is in netns %s, CNI_NETNS is %s", pod.NetNS, args.Netns))
	}
	diffs = append(diffs, resultDiffs(pod, prev)...)
	if len(diffs) > 0 {
		return types.NewError(ErrCheckFailed, "the attachment differs from prevResult", strings.Join(diffs, "; "))
	}
	return nil
}

// ErrCheckFailed is the plugin's own error code (100 and up are free for
// plugins) for a CHECK that found the attachment not as expected.
const ErrCheckFailed uint = 100

// resultDiffs lists how prevResult's view of the pod's interface differs
// from the daemon's pod. Interfaces, addresses and routes of chained
// plugins are allowed.
func resultDiffs(pod api.Pod, prev *types100.Result) []string {
	idx := -1
	for i, iface := range prev.Interfaces {
		if iface != nil && iface.Name == pod.IfName && iface.Sandbox != "" {
			idx = i
			break
		}
	}
	if idx < 0 {
		return []string{fmt.Sprintf("prevResult has no interface %s in a sandbox", pod.IfName)}
	}
	var diffs []string
	iface := prev.Interfaces[idx]
	if !strings.EqualFold(iface.Mac, pod.MAC.String()) {
		diffs = append(diffs, fmt.Sprintf("interface %s has mac %s, prevResult says %s", pod.IfName, pod.MAC, iface.Mac))
	}
	if !sameFile(iface.Sandbox, pod.NetNS) {
		diffs = append(diffs, fmt.Sprintf("interface %s is in %s, prevResult says %s", pod.IfName, pod.NetNS, iface.Sandbox))
	}
	var prevIPs []string
	for _, ipc := range prev.IPs {
		if ipc != nil && ipc.Interface != nil && *ipc.Interface == idx {
			prevIPs = append(prevIPs, ipc.Address.String())
		}
	}
	var podIPs []string
	for _, p := range pod.IPs {
		podIPs = append(podIPs, p.String())
	}
	// A later plugin may have given the interface more addresses; every
	// one of the pod's must be there.
	for _, ip := range podIPs {
		if !slices.Contains(prevIPs, ip) {
			diffs = append(diffs, fmt.Sprintf("interface %s has addresses %v, prevResult says %v", pod.IfName, podIPs, prevIPs))
			break
		}
	}
	return diffs
}

// cmdStatus reports whether the plugin can serve an ADD: the daemon
// answers and every pod CIDR has a free address.
func cmdStatus(args *skel.CmdArgs) error {
	conf, err := parseConfig(args.StdinData)
	if err != nil {
		return err
	}
	c := api.NewClient(conf.Socket)
	ctx, cancel := context.WithTimeout(context.Background(), statusTimeout)
	defer cancel()
	st, err := c.Status(ctx)
	if errors.Is(err, api.ErrUnavailable) {
		// Without the daemon no frame moves: the pods it attached are
		// cut off too.
		return types.NewError(types.ErrLimitedConnectivity, "tapswitchd is not answering; attached pods have no network", err.Error())
	}
	if err != nil {
		return types.NewError(types.ErrPluginNotAvailable, "tapswitchd status failed", err.Error())
	}
	for _, p := range st.Pools {
		if p.Free == 0 {
			return types.NewError(types.ErrPluginNotAvailable, "no free pod address",
				fmt.Sprintf("all %d pod addresses of %s are in use", p.Size, p.CIDR))
		}
	}
	return nil
}

// cmdGC deletes the pods of this network whose attachment is not in
// cni.dev/valid-attachments. Pods of other networks, and pods made with
// tapswitchctl, are left alone. It goes on after a failed delete and
// reports every failure.
func cmdGC(args *skel.CmdArgs) error {
	conf, err := parseConfig(args.StdinData)
	if err != nil {
		return err
	}
	valid := map[types.GCAttachment]bool{}
	for _, a := range conf.ValidAttachments {
		valid[a] = true
	}
	c := api.NewClient(conf.Socket)
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	pods, err := c.Pods(ctx)
	if err != nil {
		return daemonError("list pods", err)
	}
	var errs []string
	for _, pod := range pods {
		if pod.Network != conf.Name || pod.ContainerID == "" || valid[types.GCAttachment{ContainerID: pod.ContainerID, IfName: pod.IfName}] {
			continue
		}
		// Gone already, or being deleted by a DEL right now: either way
		// not stale any more.
		err := c.DeletePod(ctx, pod.ID)
		if err != nil && !isStatus(err, http.StatusNotFound) && !isStatus(err, http.StatusServiceUnavailable) {
			errs = append(errs, fmt.Sprintf("pod %s: %v", pod.ID, err))
		}
	}
	if len(errs) > 0 {
		return types.NewError(types.ErrInternal, "some stale attachments could not be deleted", strings.Join(errs, "; "))
	}
	return nil
}

// isStatus reports whether err is the daemon's answer with HTTP status.
func isStatus(err error, status int) bool {
	var ae *api.APIError
	return errors.As(err, &ae) && ae.Status == status
}

// daemonError turns a failed daemon call into a CNI error with the spec's
// code: the daemon not answering, or out of addresses, is "try again
// later" (11); a refused request is "invalid environment variables" (4),
// as every field the plugin sends comes from the CNI environment or the
// runtime's arguments, and the daemon's message names it.
func daemonError(what string, err error) error {
	var ae *api.APIError
	switch {
	case errors.Is(err, api.ErrUnavailable):
		return types.NewError(types.ErrTryAgainLater, "tapswitchd is not answering; try again later",
			fmt.Sprintf("%s: %v", what, err))
	case errors.As(err, &ae) && ae.Status == http.StatusServiceUnavailable:
		return types.NewError(types.ErrTryAgainLater, "the attachment is being made or deleted; try again later", ae.Message)
	case errors.As(err, &ae) && ae.Status == http.StatusInsufficientStorage:
		return types.NewError(types.ErrTryAgainLater, "no free pod address; try again later", ae.Message)
	case errors.As(err, &ae) && ae.Status == http.StatusBadRequest:
		return types.NewError(types.ErrInvalidEnvironmentVariables, "tapswitchd refused the request", ae.Message)
	case errors.As(err, &ae):
		return types.NewError(types.ErrInternal, "tapswitchd could not "+what, ae.Message)
	}
	return types.NewError(types.ErrInternal, "tapswitchd could not "+what, err.Error())
}
