package install

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// SafeNodeIPExample is the address the messages suggest for --node-ip, the default: link-local
// (169.254.0.0/16) is never a Service, pod or routed address, so neither kube-proxy nor the CNI can
// claim it; NodeLocal DNSCache uses 169.254.20.10 the same way (Validate refuses that one and the
// cloud metadata address 169.254.169.254).
const SafeNodeIPExample = DefaultNodeIP

var (
	serviceCIDRResource = schema.GroupVersionResource{Group: "networking.k8s.io", Version: "v1", Resource: "servicecidrs"}
	nodeResource        = schema.GroupVersionResource{Version: "v1", Resource: "nodes"}
	podResource         = schema.GroupVersionResource{Version: "v1", Resource: "pods"}
	serviceResource     = schema.GroupVersionResource{Version: "v1", Resource: "services"}
)

// Range is a CIDR of the cluster and where it was read.
type Range struct {
	CIDR   netip.Prefix
	Source string
	// Assumed marks a range guessed from one address (no ServiceCIDR objects).
	Assumed bool
}

// ClusterRanges reads the cluster's service CIDRs (ServiceCIDR objects, networking.k8s.io/v1;
// without them, the range around the kubernetes Service's address) and pod CIDRs (Node
// .spec.podCIDRs).
func ClusterRanges(ctx context.Context, c *Client) ([]Range, error) {
	var out []Range
	list, err := c.Dynamic.Resource(serviceCIDRResource).List(ctx, metav1.ListOptions{})
	switch {
	case err == nil && len(list.Items) > 0:
		for _, it := range list.Items {
			cidrs, _, _ := unstructured.NestedStringSlice(it.Object, "spec", "cidrs")
			for _, s := range cidrs {
				if p, err := netip.ParsePrefix(s); err == nil {
					out = append(out, Range{CIDR: p.Masked(), Source: "ServiceCIDR " + it.GetName()})
				}
			}
		}
	case err == nil || apierrors.IsNotFound(err):
		svc, err := c.Dynamic.Resource(serviceResource).Namespace(metav1.NamespaceDefault).Get(ctx, "kubernetes", metav1.GetOptions{})
		if err != nil {
			return out, fmt.Errorf("no ServiceCIDR objects, and reading Service default/kubernetes: %w", err)
		}
		ips, _, _ := unstructured.NestedStringSlice(svc.Object, "spec", "clusterIPs")
		if len(ips) == 0 {
			ip, _, _ := unstructured.NestedString(svc.Object, "spec", "clusterIP")
			ips = []string{ip}
		}
		for _, s := range ips {
			a, err := netip.ParseAddr(s)
			if err != nil {
				continue
			}
			// The address is the first of the service range, whose size is unknown: assume the
			// smallest common one (a /16, or a /112 for IPv6) rather than nothing.
			bits := 16
			if a.Is6() {
				bits = 112
			}
			p, _ := a.Prefix(bits)
			out = append(out, Range{CIDR: p, Source: "assumed around Service default/kubernetes " + s + " (no ServiceCIDR objects)", Assumed: true})
		}
	default:
		return out, fmt.Errorf("listing ServiceCIDRs: %w", err)
	}
	nodes, err := c.Dynamic.Resource(nodeResource).List(ctx, metav1.ListOptions{})
	if err != nil {
		return out, fmt.Errorf("listing Nodes for their pod CIDRs: %w", err)
	}
	for _, n := range nodes.Items {
		cidrs, _, _ := unstructured.NestedStringSlice(n.Object, "spec", "podCIDRs")
		if len(cidrs) == 0 {
			if one, _, _ := unstructured.NestedString(n.Object, "spec", "podCIDR"); one != "" {
				cidrs = []string{one}
			}
		}
		for _, s := range cidrs {
			if p, err := netip.ParsePrefix(s); err == nil {
				out = append(out, Range{CIDR: p.Masked(), Source: "pod CIDR of Node " + n.GetName()})
			}
		}
	}
	return out, nil
}

// NodeIPCollisions lists the ranges nodeIP lies in, one message each.
func NodeIPCollisions(nodeIP string, ranges []Range) []string {
	a, err := netip.ParseAddr(nodeIP)
	if err != nil {
		return nil
	}
	a = a.Unmap()
	var msgs []string
	for _, r := range ranges {
		if !r.CIDR.Contains(a) {
			continue
		}
		what := "the service CIDR"
		claim := "kube-proxy may route it to a Service that gets this address"
		if strings.HasPrefix(r.Source, "pod CIDR") {
			what, claim = "the pod CIDR", "the CNI may give it to a pod"
		}
		msgs = append(msgs, fmt.Sprintf("--node-ip %s lies inside %s %s (%s): %s; pick an address outside every cluster range, e.g. %s (link-local)",
			nodeIP, what, r.CIDR, r.Source, claim, SafeNodeIPExample))
	}
	return msgs
}

// checkNodeIP refuses a --node-ip inside a service or pod CIDR of the cluster: kube-proxy would send
// the node's API traffic to whichever Service gets that address, or the CNI would give it to a pod.
// --allow-node-ip-overlap (the address is reserved on purpose) and an address kept from the
// installed DaemonSet (refusing would block every upgrade of such an install) only warn. When the
// ranges cannot be read, it warns and goes on: the check is a safeguard, not a prerequisite.
func checkNodeIP(ctx context.Context, c *Client, o Options, kept bool, log io.Writer) error {
	if !o.Has(RoleNode) {
		return nil
	}
	ranges, err := ClusterRanges(ctx, c)
	if err != nil {
		fmt.Fprintf(log, "Warning: cannot check --node-ip %s against the cluster's service and pod CIDRs: %v\n", o.NodeIP, err)
	}
	msgs := NodeIPCollisions(o.NodeIP, ranges)
	switch {
	case len(msgs) == 0:
		return nil
	case kept:
		for _, msg := range msgs {
			fmt.Fprintf(log, "Warning: %s (kept from the installed DaemonSet %s; moving it cuts off the pods created before until they are recreated)\n", msg, nodeDaemonSetName)
		}
		return nil
	case o.AllowNodeIPOverlap:
		for _, msg := range msgs {
			fmt.Fprintf(log, "Warning: %s (allowed by --allow-node-ip-overlap)\n", msg)
		}
		return nil
	}
	return fmt.Errorf("%s; or pass --allow-node-ip-overlap if the address is reserved for this on purpose", strings.Join(msgs, "; "))
}

// keepInstalledNodeIP makes an upgrade keep the address the nodes already serve: without --node-ip,
// the installed DaemonSet's --ip-address wins over the default (which changed from 10.96.0.2 to
// 169.254.20.11), because every pod created since the first install reaches its API server there
// (hostAliases). It says so on log. An explicit --node-ip that moves the address is warned about.
func keepInstalledNodeIP(ctx context.Context, c *Client, o *Options, log io.Writer) (kept bool, err error) {
	if !o.Has(RoleNode) {
		return false, nil
	}
	obj, err := c.get(ctx, gvkDaemonSet, o.Namespace, nodeDaemonSetName)
	if err != nil {
		return false, fmt.Errorf("reading the installed daemonset %s/%s for its node IP: %w", o.Namespace, nodeDaemonSetName, err)
	}
	if obj == nil {
		return false, nil
	}
	installed, _ := nodeAddress(&unstructured.Unstructured{Object: obj})
	if installed == o.NodeIP {
		// Also when given explicitly: it is what the nodes and pods use already.
		return true, nil
	}
	if o.NodeIPSet {
		fmt.Fprintf(log, "Warning: moving the node IP from %s to %s: pods created before this install reach the API server at %s "+
			"(hostAliases) and lose it once the node agents have rolled; recreate them (kubectl rollout restart) after the rollout. "+
			"%s stays on the nodes' %s until uninstall or a reboot\n", installed, o.NodeIP, installed, installed, o.NodeInterface)
		return false, nil
	}
	fmt.Fprintf(log, "keeping the node IP %s of the installed daemonset %s/%s (the default is %s; pass --node-ip to change it)\n",
		installed, o.Namespace, nodeDaemonSetName, DefaultNodeIP)
	o.NodeIP = installed
	return true, nil
}

// sharesListeners says whether the installed node DaemonSet's forwarders hand their listening
// sockets over (--handoff-dir, since this release): only then can a surge pod start next to them.
func sharesListeners(ds *unstructured.Unstructured) bool {
	containers, _, _ := unstructured.NestedSlice(ds.Object, "spec", "template", "spec", "containers")
	for _, c := range containers {
		m, _ := c.(map[string]any)
		if m["name"] != "proxy" {
			continue
		}
		args, _, _ := unstructured.NestedStringSlice(m, "args")
		return slices.Contains(args, "--handoff-dir")
	}
	return false
}
