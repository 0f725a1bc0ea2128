package overlay

// Membership from Kubernetes: every Node object that carries flannel's
// vxlan annotations is a peer, so tapswitch nodes and flanneld nodes
// route to each other. Flannel's kube subnet manager (pkg/subnet/kube)
// writes, on each node it runs on,
//
//	flannel.alpha.coreos.com/backend-type:        vxlan
//	flannel.alpha.coreos.com/backend-data:        {"VNI":1,"VtepMAC":"0e:8a:00:00:00:01"}
//	flannel.alpha.coreos.com/public-ip:           192.168.1.10
//	flannel.alpha.coreos.com/kube-subnet-manager: true
//
// and takes the pod CIDRs from spec.podCIDRs, which the controller manager
// allocates. A Kube does the same for this node and reads the others'.
//
// One family of underlay. A node's VXLAN socket speaks one family, that
// of its underlay address (see the package comment), so a node with an
// IPv4 underlay reads and writes public-ip and backend-data, and one with
// an IPv6 underlay public-ipv6 and backend-v6-data. Every pod CIDR of a
// peer, of either family, goes to that one VTEP. Between tapswitch nodes
// that is all there is to dual-stack. A dual-stack flanneld, though, runs
// two VTEPs (flannel.1 over IPv4, flannel-v6.1 over IPv6) and ignores a
// node that lacks the other family's annotations, so tapswitch nodes mix
// with flanneld nodes of a single stack only.

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	vswitch "tapswitch/switch"
)

// Flannel's annotations on Node objects, with flannel's default prefix
// (its --kube-annotation-prefix). The IPv6 pair replaces backend-data and
// public-ip over an IPv6 underlay.
const (
	AnnotationBackendType       = "flannel.alpha.coreos.com/backend-type"
	AnnotationBackendData       = "flannel.alpha.coreos.com/backend-data"
	AnnotationPublicIP          = "flannel.alpha.coreos.com/public-ip"
	AnnotationBackendV6Data     = "flannel.alpha.coreos.com/backend-v6-data"
	AnnotationPublicIPv6        = "flannel.alpha.coreos.com/public-ipv6"
	AnnotationKubeSubnetManager = "flannel.alpha.coreos.com/kube-subnet-manager"
)

// annotationPrefix is what every annotation above starts with; the
// informer's cache keeps only those.
const annotationPrefix = "flannel.alpha.coreos.com/"

// backendData is flannel's vxlan backend data, its vxlanLeaseAttrs
// (backend/vxlan/vxlan.go), fields in flannel's order, so that it marshals
// to the same bytes: {"VNI":1,"VtepMAC":"0e:8a:00:00:00:01"}.
type backendData struct {
	VNI     uint32
	VtepMAC string
}

// NodeAnnotations returns the annotations that describe self as a flannel
// vxlan node of the network vni (0 means DefaultVNI), for its underlay
// address's family.
func NodeAnnotations(self Node, vni uint32) map[string]string {
	if vni == 0 {
		vni = DefaultVNI
	}
	data, _ := json.Marshal(backendData{VNI: vni, VtepMAC: self.VTEPMAC.String()}) // cannot fail
	dataKey, ipKey := familyAnnotations(self.Address.Is6())
	return map[string]string{
		AnnotationBackendType:       "vxlan",
		dataKey:                     string(data),
		ipKey:                       self.Address.String(),
		AnnotationKubeSubnetManager: "true",
	}
}

// familyAnnotations returns the backend-data and public-ip annotations of
// an underlay family.
func familyAnnotations(ipv6 bool) (data, publicIP string) {
	if ipv6 {
		return AnnotationBackendV6Data, AnnotationPublicIPv6
	}
	return AnnotationBackendData, AnnotationPublicIP
}

// NodeFromKube turns a Node object into a peer of the network vni (0
// means DefaultVNI) over an IPv4 underlay, or an IPv6 one when ipv6 is
// set. The pod CIDRs come from spec.podCIDRs (or spec.podCIDR), the
// underlay address from the public-ip annotation (public-ipv6), else the
// node's first InternalIP of the family, and the VTEP MAC from
// backend-data (backend-v6-data).
//
// The error says why the node is no peer: an annotation missing or
// malformed (naming it), a backend type other than vxlan, another VNI, no
// pod CIDRs yet, or what Node.Check finds. A backend-data without a VNI,
// as old flannel versions wrote it, is taken to be of our network.
func NodeFromKube(n *corev1.Node, vni uint32, ipv6 bool) (Node, error) {
	node, err := nodeFromKube(n, vni, ipv6)
	if err != nil {
		return Node{}, fmt.Errorf("overlay: node %q: %w", n.Name, err)
	}
	return node, nil
}

func nodeFromKube(n *corev1.Node, vni uint32, ipv6 bool) (Node, error) {
	if vni == 0 {
		vni = DefaultVNI
	}
	a := n.Annotations
	dataKey, ipKey := familyAnnotations(ipv6)
	switch typ, ok := a[AnnotationBackendType]; {
	case !ok:
		return Node{}, fmt.Errorf("annotation %s missing", AnnotationBackendType)
	case typ != "vxlan":
		return Node{}, fmt.Errorf("annotation %s is %q; want \"vxlan\"", AnnotationBackendType, typ)
	}
	switch ksm, ok := a[AnnotationKubeSubnetManager]; {
	case !ok:
		return Node{}, fmt.Errorf("annotation %s missing", AnnotationKubeSubnetManager)
	case ksm != "true":
		// Flannel reads only nodes with "true" too: the others' annotations
		// may be left from a flannel with another subnet manager.
		return Node{}, fmt.Errorf("annotation %s is %q; want \"true\"", AnnotationKubeSubnetManager, ksm)
	}
	raw, ok := a[dataKey]
	if !ok {
		return Node{}, fmt.Errorf("annotation %s missing", dataKey)
	}
	var data struct {
		VNI     *uint32
		VtepMAC *string
	}
	if err := json.Unmarshal([]byte(raw), &data); err != nil {
		return Node{}, fmt.Errorf("annotation %s %q: %w", dataKey, raw, err)
	}
	if data.VtepMAC == nil {
		return Node{}, fmt.Errorf("annotation %s %q: no VtepMAC", dataKey, raw)
	}
	mac, err := vswitch.ParseMAC(*data.VtepMAC)
	if err != nil {
		return Node{}, fmt.Errorf("annotation %s: VtepMAC %q: not a MAC address", dataKey, *data.VtepMAC)
	}
	if data.VNI != nil && *data.VNI != vni {
		return Node{}, fmt.Errorf("annotation %s: VNI %d; want %d, ours", dataKey, *data.VNI, vni)
	}
	addr, err := underlayAddr(n, ipKey, ipv6)
	if err != nil {
		return Node{}, err
	}
	cidrs, err := podCIDRs(n)
	if err != nil {
		return Node{}, err
	}
	node := Node{Name: n.Name, Address: addr, VTEPMAC: mac, PodCIDRs: cidrs}
	if err := node.Check(); err != nil {
		return Node{}, err
	}
	return node, nil
}

// underlayAddr returns the address in the public-ip annotation ipKey,
// else the node's first InternalIP of the family.
func underlayAddr(n *corev1.Node, ipKey string, ipv6 bool) (netip.Addr, error) {
	if s, ok := n.Annotations[ipKey]; ok {
		addr, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Addr{}, fmt.Errorf("annotation %s: %w", ipKey, err)
		}
		if addr.Is6() != ipv6 {
			return netip.Addr{}, fmt.Errorf("annotation %s %s: not %s", ipKey, addr, familyName(ipv6))
		}
		return addr, nil
	}
	for _, na := range n.Status.Addresses {
		if na.Type != corev1.NodeInternalIP {
			continue
		}
		if addr, err := netip.ParseAddr(na.Address); err == nil && addr.Unmap().Is6() == ipv6 {
			return addr.Unmap(), nil
		}
	}
	return netip.Addr{}, fmt.Errorf("annotation %s missing, and no %s InternalIP in status.addresses", ipKey, familyName(ipv6))
}

func familyName(ipv6 bool) string {
	if ipv6 {
		return "IPv6"
	}
	return "IPv4"
}

// podCIDRs returns spec.podCIDRs, or spec.podCIDR where a cluster only
// sets that.
func podCIDRs(n *corev1.Node) ([]netip.Prefix, error) {
	field, list := "spec.podCIDRs", n.Spec.PodCIDRs
	if len(list) == 0 && n.Spec.PodCIDR != "" {
		field, list = "spec.podCIDR", []string{n.Spec.PodCIDR}
	}
	if len(list) == 0 {
		return nil, errors.New("spec.podCIDRs: none assigned yet")
	}
	cidrs := make([]netip.Prefix, 0, len(list))
	for i, s := range list {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("%s[%d]: %w", field, i, err)
		}
		cidrs = append(cidrs, p)
	}
	return cidrs, nil
}

// ClientFromKubeconfig returns a clientset for the cluster of the
// kubeconfig file at path, or, when path is "", for the cluster the
// process runs in as a pod (its service account).
func ClientFromKubeconfig(path string) (kubernetes.Interface, error) {
	var cfg *rest.Config
	var err error
	if path == "" {
		cfg, err = rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("overlay: in-cluster kubernetes config (pass --kubeconfig outside a pod): %w", err)
		}
	} else {
		cfg, err = clientcmd.BuildConfigFromFlags("", path)
		if err != nil {
			return nil, fmt.Errorf("overlay: kubeconfig %s: %w", path, err)
		}
	}
	cfg.UserAgent = fieldManager
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("overlay: kubernetes client: %w", err)
	}
	return c, nil
}
