package overlay

// Kube: the informer on Node objects that keeps the peers from Kubernetes
// applied and this node's annotations published (see kube.go for what
// the annotations hold).

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// KubeOptions configure a Kube. Client, NodeName, Self and Apply are
// required.
type KubeOptions struct {
	Client   kubernetes.Interface
	NodeName string // this node's Node object: left out of the peers, annotated
	// Self is this node as the peers know it: its underlay address (whose
	// family picks the annotations), VTEP MAC and pod CIDRs. Its name is
	// NodeName. It is published as flannel's annotations and checked
	// against: a peer that shares its address or VTEP MAC, or whose pod
	// CIDRs overlap its own, is skipped.
	Self Node
	VNI  uint32 // 0 means DefaultVNI

	// Apply gets the whole set of peers once the first list of Nodes is
	// in, and again after every change to the set. It gets a slice of its
	// own. It runs on applyLoop, one call at a time, and must not call
	// Close.
	Apply func([]Node)

	Logger *slog.Logger  // nil discards
	Quiet  time.Duration // at most one Apply per Quiet, so a burst of changes leads to one; 0 means 100 ms
	Resync time.Duration // the informer's resync period; 0 means 5 min, as flannel's
}

// Defaults of KubeOptions, and how publishing backs off.
const (
	defaultKubeQuiet  = 100 * time.Millisecond
	defaultKubeResync = 5 * time.Minute
	patchTimeout      = 30 * time.Second
	minPatchDelay     = 200 * time.Millisecond
	maxPatchDelay     = 30 * time.Second
	// A patch needed again within patchCalm of the last one that
	// succeeded means someone else writes the annotations too (a
	// flanneld left running): patches then back off as failures do.
	patchCalm = time.Minute
)

// Kube keeps the peers in Kubernetes' Node objects applied, and this
// node's own annotations published.
//
// It owns a client-go shared informer on Node objects (all of them: a
// peer is any node), run by informerLoop, and two goroutines. applyLoop
// turns the informer's cache into a set of peers and calls Apply when the
// set changes, at most once per Quiet. publishLoop patches this node's annotations whenever
// they are not NodeAnnotations(Self, VNI): at the start, and again when
// someone changes them; it retries a failed patch with a growing delay.
// Close stops the informer and both goroutines and waits for them. The
// informer's handlers only wake the goroutines; nothing blocks them.
// client-go itself logs through klog (list and watch errors), which only
// cmd/ can point at a slog handler.
//
// A node that is not a peer (see NodeFromKube), or clashes with this node
// or an older node (CheckNodes: the same address or VTEP MAC, overlapping
// pod CIDRs), is skipped with one log line giving the reason, logged
// again only when the reason changes. The others are applied.
type Kube struct {
	opts     KubeOptions
	log      *slog.Logger
	ipv6     bool // the underlay's family
	informer cache.SharedIndexInformer
	synced   cache.DoneChecker // our handler has had the first list

	ctx         context.Context // canceled by Close
	cancel      context.CancelFunc
	applyWake   chan struct{} // capacity 1: a change to other nodes is pending
	publishWake chan struct{} // capacity 1: this node's object changed
	wg          sync.WaitGroup
	closeOnce   sync.Once

	// Owned by applyLoop.
	applied []Node
	skipped map[string]string // node name → the reason last logged for skipping it
}

// check checks o and sets its defaults.
func (o *KubeOptions) check() error {
	switch {
	case o.Client == nil || o.NodeName == "" || o.Apply == nil:
		return errors.New("overlay: kube: Client, NodeName and Apply are required")
	case o.Self.Name == "":
		o.Self.Name = o.NodeName
	case o.Self.Name != o.NodeName:
		return fmt.Errorf("overlay: kube: Self.Name %q is not NodeName %q", o.Self.Name, o.NodeName)
	}
	if err := o.Self.Check(); err != nil {
		return fmt.Errorf("overlay: kube: this node: %w", err)
	}
	if o.VNI == 0 {
		o.VNI = DefaultVNI
	}
	if o.VNI > maxVNI {
		return fmt.Errorf("overlay: kube: vni %d: want 1 to %d", o.VNI, maxVNI)
	}
	if o.Quiet <= 0 {
		o.Quiet = defaultKubeQuiet
	}
	if o.Resync <= 0 {
		o.Resync = defaultKubeResync
	}
	return nil
}

// NewKube checks opts and starts the informer and the goroutines. It does
// not wait for the API server: Apply is first called once the informer
// has listed the Nodes.
func NewKube(opts KubeOptions) (*Kube, error) {
	if err := opts.check(); err != nil {
		return nil, err
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	nodes := opts.Client.CoreV1().Nodes()
	// The wrapper tells the reflector whether the client can stream its
	// first list (WatchList); client-go's fake cannot.
	lw := cache.ToListWatcherWithWatchListSemantics(&cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return nodes.List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return nodes.Watch(ctx, o)
		},
	}, opts.Client)
	k := &Kube{
		opts:        opts,
		log:         log,
		ipv6:        opts.Self.Address.Is6(),
		informer:    cache.NewSharedIndexInformer(lw, &corev1.Node{}, opts.Resync, cache.Indexers{}),
		applyWake:   make(chan struct{}, 1),
		publishWake: make(chan struct{}, 1),
		skipped:     map[string]string{},
	}
	if err := k.informer.SetTransform(slimNode); err != nil {
		return nil, fmt.Errorf("overlay: kube: %w", err)
	}
	reg, err := k.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    k.onChange,
		UpdateFunc: k.onUpdate,
		DeleteFunc: k.onChange,
	})
	if err != nil {
		return nil, fmt.Errorf("overlay: kube: %w", err)
	}
	k.synced = reg.HasSyncedChecker()
	k.ctx, k.cancel = context.WithCancel(context.Background())
	k.wg.Add(3)
	go k.informerLoop()
	go k.applyLoop()
	go k.publishLoop()
	k.log.Info("watching Node objects", "node", opts.NodeName, "vni", opts.VNI)
	return k, nil
}

// Close stops the informer and the goroutines and waits for them. Apply
// is not called after Close returns. It is safe to call more than once.
func (k *Kube) Close() error {
	k.closeOnce.Do(k.cancel)
	k.wg.Wait()
	return nil
}

// informerLoop runs the informer until Close. RunWithContext returns only
// once the informer's own goroutines (reflector, handlers) have.
func (k *Kube) informerLoop() {
	defer k.wg.Done()
	k.informer.RunWithContext(k.ctx)
}

// slimNode keeps of a Node what a Kube reads, so the cache does not hold
// every node's status (its images alone run to kilobytes).
func slimNode(obj any) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil // a tombstone (cache.DeletedFinalStateUnknown)
	}
	s := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:              n.Name,
			UID:               n.UID,
			ResourceVersion:   n.ResourceVersion,
			CreationTimestamp: n.CreationTimestamp,
		},
		Spec:   corev1.NodeSpec{PodCIDR: n.Spec.PodCIDR, PodCIDRs: n.Spec.PodCIDRs},
		Status: corev1.NodeStatus{Addresses: n.Status.Addresses},
	}
	for k, v := range n.Annotations {
		if strings.HasPrefix(k, annotationPrefix) {
			if s.Annotations == nil {
				s.Annotations = map[string]string{}
			}
			s.Annotations[k] = v
		}
	}
	return s, nil
}

// onChange is the informer's handler for an added or deleted node. Like
// every handler it only wakes a goroutine.
func (k *Kube) onChange(obj any) {
	name := ""
	switch o := obj.(type) {
	case *corev1.Node:
		name = o.Name
	case cache.DeletedFinalStateUnknown:
		name = o.Key // a Node's key is its name: nodes have no namespace
	}
	if name == k.opts.NodeName {
		wake(k.publishWake)
		return
	}
	wake(k.applyWake)
}

// onUpdate wakes applyLoop only if the node changed in what it reads; a
// resync delivers every node unchanged. This node wakes publishLoop
// whatever changed, so a resync checks its annotations again.
func (k *Kube) onUpdate(oldObj, newObj any) {
	o, ok1 := oldObj.(*corev1.Node)
	n, ok2 := newObj.(*corev1.Node)
	if ok1 && ok2 && n.Name != k.opts.NodeName && sameSlimNode(o, n) {
		return
	}
	k.onChange(newObj)
}

// sameSlimNode reports whether a and b, as slimNode left them, are the
// same but for their resource version.
func sameSlimNode(a, b *corev1.Node) bool {
	return a.Name == b.Name && a.UID == b.UID && a.CreationTimestamp.Equal(&b.CreationTimestamp) &&
		maps.Equal(a.Annotations, b.Annotations) &&
		a.Spec.PodCIDR == b.Spec.PodCIDR && slices.Equal(a.Spec.PodCIDRs, b.Spec.PodCIDRs) &&
		slices.Equal(a.Status.Addresses, b.Status.Addresses)
}

func wake(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default: // a wake-up is pending already
	}
}

// applyLoop applies the peers once the first list is in, and again after
// changes, at most once per Quiet.
func (k *Kube) applyLoop() {
	defer k.wg.Done()
	select {
	case <-k.ctx.Done():
		return
	case <-k.synced.Done():
	}
	first := true
	for {
		peers := k.peers()
		if first || !sameNodes(peers, k.applied) {
			k.log.Info("peers changed", "peers", len(peers))
			k.applied = peers
			k.opts.Apply(cloneNodes(peers))
			first = false
		}
		select {
		case <-k.ctx.Done():
			return
		case <-k.applyWake:
		}
		// Let the rest of a burst arrive: this recompute covers it.
		t := time.NewTimer(k.opts.Quiet)
		select {
		case <-k.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		select {
		case <-k.applyWake:
		default:
		}
	}
}

// peers returns the peers among the cached Nodes, and logs each node
// skipped the first time, or when the reason changes.
func (k *Kube) peers() []Node {
	var objs []*corev1.Node
	for _, o := range k.informer.GetStore().List() {
		if n, ok := o.(*corev1.Node); ok && n.Name != k.opts.NodeName {
			objs = append(objs, n)
		}
	}
	// Oldest first: on a clash the node that came later is skipped, so a
	// new node never takes a working one's place.
	slices.SortFunc(objs, func(a, b *corev1.Node) int {
		if c := a.CreationTimestamp.Compare(b.CreationTimestamp.Time); c != 0 {
			return c
		}
		return cmp.Compare(a.Name, b.Name)
	})
	reasons := map[string]error{}
	var peers []Node
	for _, o := range objs {
		n, err := NodeFromKube(o, k.opts.VNI, k.ipv6)
		if err != nil {
			reasons[o.Name] = err
			continue
		}
		peers = append(peers, n)
	}
	peers = k.dropClashes(peers, reasons)
	k.logSkipped(objs, reasons)
	return peers
}

// dropClashes removes from peers each node CheckNodes refuses together
// with this node and the others, recording why in reasons, and returns
// the rest. It checks again after each removal: clashes are rare, and
// one check is O(n log n).
func (k *Kube) dropClashes(peers []Node, reasons map[string]error) []Node {
	for {
		entries := make([]entry, 0, 1+len(peers))
		entries = append(entries, entry{index: -1, self: true, node: k.opts.Self})
		for i, n := range peers {
			entries = append(entries, entry{index: i, node: n})
		}
		err := checkEntries(entries)
		if err == nil {
			return peers
		}
		var ee *EntryError
		if !errors.As(err, &ee) || ee.Index < 0 || ee.Index >= len(peers) {
			// checkEntries blames the later node of a clash, and this node
			// comes first, so this does not happen.
			k.log.Error("checking the peers from Node objects failed; applying none", "err", err)
			return nil
		}
		name := peers[ee.Index].Name
		reasons[name] = fmt.Errorf("overlay: node %q: %s", name, entryRef.ReplaceAllString(ee.Err.Error(), `node "`))
		peers = slices.Delete(peers, ee.Index, ee.Index+1)
	}
}

// entryRef matches how an EntryError names the other node of a clash
// (entry.describe): by its index, which means nothing here and changes as
// nodes come and go, so it is replaced by "node" in the reason logged.
var entryRef = regexp.MustCompile(`entry -?[0-9]+ "`)

// logSkipped logs each node in reasons whose reason is new, and each node
// no longer skipped that is still there.
func (k *Kube) logSkipped(objs []*corev1.Node, reasons map[string]error) {
	now := make(map[string]string, len(reasons))
	for _, o := range objs {
		err, skipped := reasons[o.Name]
		if !skipped {
			if _, was := k.skipped[o.Name]; was {
				k.log.Info("node no longer skipped", "node", o.Name)
			}
			continue
		}
		now[o.Name] = err.Error()
		if k.skipped[o.Name] != err.Error() {
			k.log.Warn("node skipped", "node", o.Name, "err", err)
		}
	}
	k.skipped = now
}

// publishLoop patches this node's annotations whenever they differ from
// what they should be.
func (k *Kube) publishLoop() {
	defer k.wg.Done()
	select {
	case <-k.ctx.Done():
		return
	case <-k.synced.Done():
	}
	want := NodeAnnotations(k.opts.Self, k.opts.VNI)
	var (
		p        pace
		patched  string // our Node's version (seenAs) before our last patch, until the cache is past it
		reported bool   // that our Node object is missing
	)
	for {
		n, found := k.ownNode()
		switch {
		case !found:
			if !reported {
				k.log.Warn("this node's Node object not found; publishing its annotations once it is there", "node", k.opts.NodeName)
				reported = true
			}
		case patched != "" && seenAs(n, want) == patched:
			// The cache has not seen our patch yet; its event wakes us.
		case hasAnnotations(n, want):
			patched = ""
		case time.Now().Before(p.next):
			if !k.sleep(time.Until(p.next)) {
				return
			}
			continue
		default:
			reported, patched = false, ""
			if k.publish(want, &p) {
				patched = seenAs(n, want)
			}
			continue
		}
		select {
		case <-k.ctx.Done():
			return
		case <-k.publishWake:
		}
	}
}

// pace spaces out the patches of publishLoop.
type pace struct {
	delay time.Duration // between patches: grows while they fail or are undone
	next  time.Time     // not to patch before
	last  time.Time     // when a patch last succeeded
}

// publish patches this node's annotations to want, logs how it went, and
// sets when the next patch may be. It reports whether the patch succeeded.
func (k *Kube) publish(want map[string]string, p *pace) bool {
	err := k.patch(want)
	now := time.Now()
	grow := func() { p.delay = min(max(2*p.delay, minPatchDelay), maxPatchDelay) }
	switch {
	case err != nil:
		grow()
		k.log.Warn("publishing this node's annotations failed; retrying", "err", err, "retry_in", p.delay)
	case !p.last.IsZero() && now.Sub(p.last) < patchCalm:
		grow()
		k.log.Warn("this node's annotations were changed soon after publishing; published them again (is flanneld running here too?)",
			"node", k.opts.NodeName, "next_in", p.delay)
	case !p.last.IsZero():
		p.delay = 0
		k.log.Info("this node's annotations were changed; published them again", "node", k.opts.NodeName)
	default:
		p.delay = 0
		k.log.Info("published this node's annotations", "node", k.opts.NodeName, "annotations", want)
	}
	p.next = now.Add(p.delay)
	if err != nil {
		return false
	}
	p.last = now
	return true
}

// ownNode returns this node's Node object from the informer's cache.
func (k *Kube) ownNode() (*corev1.Node, bool) {
	o, found, err := k.informer.GetStore().GetByKey(k.opts.NodeName)
	if err != nil || !found {
		return nil, false
	}
	n, ok := o.(*corev1.Node)
	return n, ok
}

// seenAs tells versions of n apart: its resource version and its values
// of the annotations in want. The values tell them apart where resource
// versions do not (client-go's fake leaves them empty).
func seenAs(n *corev1.Node, want map[string]string) string {
	var b strings.Builder
	b.WriteString(n.ResourceVersion)
	for _, key := range slices.Sorted(maps.Keys(want)) {
		v, ok := n.Annotations[key]
		fmt.Fprintf(&b, "\x00%t%s", ok, v)
	}
	return b.String()
}

func hasAnnotations(n *corev1.Node, want map[string]string) bool {
	for key, v := range want {
		if got, ok := n.Annotations[key]; !ok || got != v {
			return false
		}
	}
	return true
}

// patch sets the annotations want on this node's Node object with a JSON
// merge patch (RFC 7386), which leaves its other annotations alone.
func (k *Kube) patch(want map[string]string) error {
	body, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": want}})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(k.ctx, patchTimeout)
	defer cancel()
	_, err = k.opts.Client.CoreV1().Nodes().Patch(ctx, k.opts.NodeName, types.MergePatchType, body,
		metav1.PatchOptions{FieldManager: fieldManager})
	if err != nil {
		return fmt.Errorf("overlay: patch node %s: %w", k.opts.NodeName, err)
	}
	return nil
}

// fieldManager names tapswitch in the Node's managedFields and as the
// clients' user agent.
const fieldManager = "tapswitchd"

// sleep waits d, or until Close; it reports false on Close.
func (k *Kube) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-k.ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
