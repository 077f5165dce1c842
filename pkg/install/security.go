package install

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/apiproxy/apiproxy/pkg/liqo"
)

// NetworkPolicyMode is --network-policy.
type NetworkPolicyMode string

// The values of --network-policy.
const (
	NetworkPolicyAuto  NetworkPolicyMode = "auto"
	NetworkPolicyTrue  NetworkPolicyMode = "true"
	NetworkPolicyFalse NetworkPolicyMode = "false"
)

// AuthMode is --auth: how the proxy authenticates tunnels.
type AuthMode string

// The values of --auth.
const (
	AuthNone        AuthMode = "none"
	AuthTokenReview AuthMode = "tokenreview"
)

const (
	networkPolicyName = "apiproxy-proxy"
	authBindingPrefix = "apiproxy-proxy-auth-"
	// TunnelRoleName is the ClusterRole install --auth tokenreview renders: create on
	// tunnels.apiproxy.io, what a user needs to tunnel; granting it is one clusterrolebinding.
	TunnelRoleName = "apiproxy-tunnel"
)

// The kinds the proxy's security adds (also in managedKinds, for status and uninstall).
var (
	gvkNetworkPolicy      = schema.GroupVersionKind{Group: "networking.k8s.io", Version: "v1", Kind: "NetworkPolicy"}
	gvkClusterRoleBinding = schema.GroupVersionKind{Group: "rbac.authorization.k8s.io", Version: "v1", Kind: "ClusterRoleBinding"}
)

// loopbackSources are always in the proxy's --allow-source when it has one: `connect --via` reaches
// the proxy through a port-forward, which arrives on the pod's loopback.
var loopbackSources = []string{"127.0.0.0/8", "::1/128"}

// AuthBindingName is the ClusterRoleBinding of the proxy's ServiceAccount to system:auth-delegator
// (cluster scoped, so it carries the install namespace).
func AuthBindingName(namespace string) string { return authBindingPrefix + namespace }

// validateSecurity checks --network-policy, --allow-source, --metrics-namespace-selector and --auth.
func (o *Options) validateSecurity() []error {
	var errs []error
	switch o.NetworkPolicy {
	case NetworkPolicyAuto, NetworkPolicyTrue, NetworkPolicyFalse:
	default:
		errs = append(errs, fmt.Errorf("--network-policy %q: use auto (when Liqo Configurations exist), true or false", o.NetworkPolicy))
	}
	switch o.Auth {
	case AuthNone, AuthTokenReview:
	default:
		errs = append(errs, fmt.Errorf("--auth %q: use none or tokenreview", o.Auth))
	}
	for _, s := range o.AllowSources {
		if _, err := netip.ParsePrefix(s); err != nil {
			errs = append(errs, fmt.Errorf("--allow-source %q is not a CIDR: use e.g. 192.168.10.0/24 or fd00:10::/64 (a single address as /32 or /128)", s))
		}
	}
	for _, s := range o.ClusterPodCIDRs {
		if _, err := netip.ParsePrefix(s); err != nil {
			errs = append(errs, fmt.Errorf("--cluster-pod-cidr %q is not a CIDR: give the CNI's pod range, e.g. 192.168.0.0/16 (Calico's default IP pool) or 10.0.0.0/8 (Cilium's cluster-pool default)", s))
		}
	}
	if _, err := metav1.ParseToLabelSelector(o.MetricsNamespaceSelector); err != nil {
		errs = append(errs, fmt.Errorf("--metrics-namespace-selector %q is not a label selector (e.g. kubernetes.io/metadata.name=monitoring): %v", o.MetricsNamespaceSelector, err))
	}
	if !o.Has(RoleProxy) {
		if o.NetworkPolicy == NetworkPolicyTrue || len(o.AllowSources) > 0 || len(o.ClusterPodCIDRs) > 0 || o.Auth == AuthTokenReview {
			errs = append(errs, errors.New("--network-policy=true, --allow-source, --cluster-pod-cidr and --auth tokenreview configure the proxy role: add proxy to --roles"))
		}
	}
	return errs
}

// decideSources fills o.PolicySources, o.RenderNetworkPolicy and o.ProxyAllowSources from the
// cluster: the Liqo peers' remapped pod and external CIDRs (this cluster's Configurations: the
// addresses their traffic arrives from) and --allow-source. Read afresh on every install, so a new
// peering is followed by re-running install.
func decideSources(ctx context.Context, c *Client, o *Options, log io.Writer) error {
	if !o.Has(RoleProxy) || o.NetworkPolicy == NetworkPolicyFalse && len(o.AllowSources) == 0 {
		return nil
	}
	var peerCIDRs []string
	if o.NetworkPolicy != NetworkPolicyFalse {
		peers, err := liqo.Peers(ctx, &liqo.Cluster{Name: "this cluster", Dynamic: c.Dynamic, Discovery: c.Discovery})
		switch {
		case errors.Is(err, liqo.ErrNotServed) || errors.Is(err, liqo.ErrNoConfiguration):
			if o.NetworkPolicy == NetworkPolicyAuto {
				if errors.Is(err, liqo.ErrNoConfiguration) { // Liqo without peers yet; without Liqo, say nothing
					fmt.Fprintln(log, "no Liqo Configurations in this cluster yet: no NetworkPolicy for the proxy (--network-policy=auto); re-run install after peering")
				}
				break
			}
			fmt.Fprintf(log, "--network-policy=true without Liqo peers (%v): the proxy port is open to this namespace and --allow-source only\n", err)
			o.RenderNetworkPolicy = true
		case err != nil:
			return fmt.Errorf("--network-policy=%s: %w (or install with --network-policy=false)", o.NetworkPolicy, err)
		default:
			o.RenderNetworkPolicy = true
			for _, p := range peers {
				var cidrs []netip.Prefix
				cidrs = append(append(cidrs, p.RemappedPod...), p.RemappedExternal...)
				for _, cidr := range cidrs {
					peerCIDRs = appendUnique(peerCIDRs, cidr.Masked().String())
				}
				fmt.Fprintf(log, "network policy: peer %s (Configuration %s) arrives from %v\n", p.RemoteClusterID, p.Configuration, cidrs)
			}
		}
	}
	for _, s := range o.AllowSources {
		p, _ := netip.ParsePrefix(s) // validated
		peerCIDRs = appendUnique(peerCIDRs, p.Masked().String())
	}
	slices.Sort(peerCIDRs) // stable manifests: a re-install with the same peers changes nothing
	o.PolicySources = peerCIDRs
	if !o.RenderNetworkPolicy && len(o.AllowSources) == 0 {
		return nil // auto without Liqo peers: the proxy admits everyone, as before
	}

	// The proxy's own --allow-source repeats the policy where the CNI does not enforce it: the
	// same CIDRs, this cluster's pod CIDRs for "this namespace" when the policy is rendered, and
	// loopback for port-forwards.
	allow := slices.Clone(peerCIDRs)
	if o.RenderNetworkPolicy {
		pods, err := podRanges(ctx, c, *o, log)
		if err != nil {
			return err
		}
		for _, p := range pods {
			allow = appendUnique(allow, p.String())
		}
	}
	for _, s := range loopbackSources {
		allow = appendUnique(allow, s)
	}
	slices.Sort(allow)
	o.ProxyAllowSources = allow
	return nil
}

func appendUnique(list []string, s string) []string {
	if slices.Contains(list, s) {
		return list
	}
	return append(list, s)
}

// securityValues are the template values of the NetworkPolicy and the auth RBAC.
func securityValues(o Options, v *values) error {
	v.NetworkPolicy = o.RenderNetworkPolicy && slices.Contains(o.Roles, RoleProxy)
	v.ProxyAuth = o.Auth == AuthTokenReview
	v.AuthBindingName = AuthBindingName(o.Namespace)
	v.TunnelRoleName = TunnelRoleName
	from := []map[string]any{{"podSelector": map[string]any{}}} // this namespace
	for _, s := range o.PolicySources {
		from = append(from, map[string]any{"ipBlock": map[string]any{"cidr": s}})
	}
	v.PolicyFrom = from
	sel, err := metav1.ParseToLabelSelector(o.MetricsNamespaceSelector)
	if err != nil {
		return err
	}
	b, err := json.Marshal(sel)
	if err != nil {
		return err
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	if m == nil {
		m = map[string]any{}
	}
	v.MetricsFrom = []map[string]any{{"namespaceSelector": m}}
	return nil
}

// pruneUnrendered deletes what an earlier install rendered and this one no longer does (only ours:
// found by name and checked by label): the proxy's NetworkPolicy and auth RBAC (--network-policy,
// --auth), the node forwarders' Secret of --upstream-proxy credentials.
func pruneUnrendered(ctx context.Context, c *Client, o Options, dryRun DryRun, log io.Writer) error {
	type target struct {
		gvk       schema.GroupVersionKind
		namespace string
		name      string
		keep      bool
		flags     string // what decides it, for the message
	}
	var targets []target
	if o.Has(RoleProxy) {
		targets = append(targets,
			target{gvkNetworkPolicy, o.Namespace, networkPolicyName, o.RenderNetworkPolicy, "--network-policy / --auth"},
			target{gvkClusterRoleBinding, "", AuthBindingName(o.Namespace), o.Auth == AuthTokenReview, "--network-policy / --auth"},
			target{gvkClusterRole, "", TunnelRoleName, o.Auth == AuthTokenReview, "--network-policy / --auth"})
	}
	if o.Has(RoleNode) {
		_, creds := o.upstreamProxyCredentials()
		targets = append(targets, target{gvkSecret, o.Namespace, upstreamProxySecretName, creds != "", "--upstream-proxy without credentials"})
	}
	for _, t := range targets {
		if t.keep {
			continue
		}
		obj, err := c.get(ctx, t.gvk, t.namespace, t.name)
		if err != nil || obj == nil || !ownedByUs(obj, o.Namespace) {
			continue // nothing of ours (or the kind is not served)
		}
		ri, _, err := c.resourceFor(t.gvk, t.namespace)
		if err != nil {
			return err
		}
		if err := ri.Delete(ctx, t.name, metav1.DeleteOptions{DryRun: dryRun.apiDryRun()}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("removing %s %s no longer wanted: %w", t.gvk.Kind, t.name, err)
		}
		fmt.Fprintf(log, "%s %s removed: no longer rendered (%s)\n", strings.ToLower(t.gvk.Kind), t.name, t.flags)
	}
	return nil
}

// installedProxyAuth is the auth mode of the installed proxy Deployment ("" without one).
func installedProxyAuth(objs []*unstructured.Unstructured) AuthMode {
	for _, o := range objs {
		if o.GetKind() != "Deployment" || o.GetName() != "apiproxy-proxy" {
			continue
		}
		cs, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
		for _, c := range cs {
			if m, ok := c.(map[string]any); ok && m["name"] == "proxy" {
				args, _, _ := unstructured.NestedStringSlice(m, "args")
				return ProxyAuthMode(args)
			}
		}
	}
	return ""
}

// ProxyAuthMode reads the auth mode from the proxy container's arguments ("none" without --auth).
func ProxyAuthMode(args []string) AuthMode {
	for i, a := range args {
		if a == "--auth" && i+1 < len(args) {
			return AuthMode(args[i+1])
		}
		if v, ok := strings.CutPrefix(a, "--auth="); ok {
			return AuthMode(v)
		}
	}
	return AuthNone
}

// podRanges are this cluster's pod CIDRs for the proxy's --allow-source ("this namespace" of the
// NetworkPolicy, which the agent repeats because not every CNI enforces policies): --cluster-pod-cidr
// when given, else Node .spec.podCIDRs. CNIs with their own IPAM (Calico IP pools, Cilium's
// cluster-pool, the AWS VPC CNI) give pods addresses outside those, and the agent would reset this
// cluster's own pods that the NetworkPolicy admits. So the running pods' addresses are checked
// against the ranges: one outside them stops the install (with read ranges) or warns (with
// --cluster-pod-cidr, the user's statement of the ranges).
func podRanges(ctx context.Context, c *Client, o Options, log io.Writer) ([]netip.Prefix, error) {
	var ranges []netip.Prefix
	source := "--cluster-pod-cidr"
	if len(o.ClusterPodCIDRs) > 0 {
		for _, s := range o.ClusterPodCIDRs {
			p, _ := netip.ParsePrefix(s) // validated
			ranges = append(ranges, p.Masked())
		}
	} else {
		source = "Node .spec.podCIDRs"
		read, err := ClusterRanges(ctx, c)
		if err != nil {
			fmt.Fprintf(log, "Warning: cannot read this cluster's pod CIDRs (%v): in-cluster clients of the proxy need --allow-source or --cluster-pod-cidr\n", err)
		}
		for _, r := range read {
			if strings.HasPrefix(r.Source, "pod CIDR") && !slices.Contains(ranges, r.CIDR) {
				ranges = append(ranges, r.CIDR)
			}
		}
	}
	outside, err := podsOutside(ctx, c, ranges)
	if err != nil {
		fmt.Fprintf(log, "Warning: cannot list pods to check that their addresses lie in the pod CIDRs (%s) the proxy will admit (%v)\n", source, err)
		return ranges, nil
	}
	if len(outside) == 0 {
		return ranges, nil
	}
	msg := fmt.Sprintf("%d pod(s) of this cluster have addresses outside the pod CIDRs %v (from %s), e.g. %s: the proxy's --allow-source would reset them although the NetworkPolicy admits them. "+
		"Give the CNI's pod ranges with --cluster-pod-cidr (repeatable; Calico: kubectl get ippools, Cilium: its cluster-pool-ipv4-cidr), or --allow-source for the clients that need the proxy",
		len(outside), ranges, source, strings.Join(outside[:min(3, len(outside))], ", "))
	if len(o.ClusterPodCIDRs) > 0 {
		fmt.Fprintln(log, "Warning:", msg)
		return ranges, nil
	}
	return nil, errors.New(msg)
}

// podsOutside names up to a page of running pods (not hostNetwork) whose addresses lie in none of
// ranges ("namespace/name (address)").
func podsOutside(ctx context.Context, c *Client, ranges []netip.Prefix) ([]string, error) {
	list, err := c.Dynamic.Resource(podResource).List(ctx, metav1.ListOptions{Limit: 2000})
	if err != nil {
		return nil, err
	}
	var out []string
	for _, p := range list.Items {
		if host, _, _ := unstructured.NestedBool(p.Object, "spec", "hostNetwork"); host {
			continue
		}
		ips, _, _ := unstructured.NestedSlice(p.Object, "status", "podIPs")
		for _, v := range ips {
			s, _ := v.(map[string]any)["ip"].(string)
			a, err := netip.ParseAddr(s)
			if err != nil {
				continue
			}
			if !slices.ContainsFunc(ranges, func(r netip.Prefix) bool { return r.Contains(a.Unmap()) }) {
				out = append(out, fmt.Sprintf("%s/%s (%s)", p.GetNamespace(), p.GetName(), s))
				break
			}
		}
	}
	return out, nil
}
