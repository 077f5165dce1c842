package liqo

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// readIP fills the IP object's part of res: which object (and so which proxy) was chosen, local
// IP, remapped IP and, in the current shape, the CIDR it came from.
func readIP(ctx context.Context, req Request, res *Result) error {
	p := req.Provider
	obj, err := chooseIP(ctx, req, res)
	if err != nil {
		return err
	}
	what := fmt.Sprintf("IP %s in %s", res.IP, p.Name)

	if local, found, _ := unstructured.NestedString(obj.Object, "spec", "ip"); found {
		res.LocalIP = local
	}
	status, _, _ := unstructured.NestedFieldNoCopy(obj.Object, "status")
	if status != nil {
		if _, ok := status.(map[string]any); !ok {
			return fail(ErrInvalidValue, "%s: status is a %T, want an object", what, status)
		}
	}
	if v, _, _ := unstructured.NestedFieldNoCopy(obj.Object, "status", "ip"); v != nil && v != "" {
		ip, ok := v.(string)
		if !ok {
			return fail(ErrInvalidValue, "%s: status.ip is a %T, want an IP address string", what, v)
		}
		res.StatusShape = "status.ip"
		addr, err := parseAddr(what, "status.ip", ip)
		if err != nil {
			return err
		}
		res.RemappedIP = addr
		if cidr, found, _ := unstructured.NestedString(obj.Object, "status", "cidr"); found && cidr != "" {
			if _, err := parsePrefix(what, "status.cidr", cidr); err != nil {
				return err
			}
			res.RemappedCIDR = cidr
		}
		return nil
	}
	if raw, _, _ := unstructured.NestedFieldNoCopy(obj.Object, "status", "ipMappings"); raw != nil {
		mappings, ok := raw.(map[string]any)
		if !ok {
			return fail(ErrInvalidValue, "%s: status.ipMappings is a %T, want a map of cluster ID to IP", what, raw)
		}
		if len(mappings) > 0 {
			res.StatusShape = "status.ipMappings"
			return pickMapping(ctx, req, res, what, mappings)
		}
	}
	return fail(ErrStatusNotSet, "%s has no remapped address yet (neither status.ip nor status.ipMappings is set): "+
		"Liqo's IPAM has not processed it; check that spec.ip is the proxy Service's ClusterIP and that Liqo networking is running, then retry", what)
}

// pickMapping chooses the consumer's entry of the older status.ipMappings shape, keyed by the
// cluster ID of each peer.
func pickMapping(ctx context.Context, req Request, res *Result, what string, mappings map[string]any) error {
	keys := make([]string, 0, len(mappings))
	for k := range mappings {
		keys = append(keys, k)
	}
	slices.Sort(keys)

	id, source := req.ConsumerClusterID, "flag --remote-cluster-id"
	var lookupErr error
	if id == "" && req.Consumer != nil {
		id, source, lookupErr = clusterID(ctx, req.Consumer, req.Namespace, "--remote-cluster-id")
	}
	if id == "" {
		if len(keys) != 1 {
			msg := fmt.Sprintf("%s maps several clusters (%s) and the consumer's cluster ID is unknown: pass --remote-cluster-id", what, strings.Join(keys, ", "))
			if lookupErr != nil {
				return &Error{Kind: ErrClusterID, Msg: msg, Err: lookupErr}
			}
			return fail(ErrClusterID, "%s", msg)
		}
		id, source = keys[0], "the only status.ipMappings entry"
		warning := fmt.Sprintf("the consumer's cluster ID is unknown; using the only status.ipMappings entry of %s, %q", what, id)
		if lookupErr != nil {
			warning += " (" + lookupErr.Error() + ")"
		}
		res.Warnings = append(res.Warnings, warning)
	}
	res.ConsumerClusterID, res.ConsumerClusterIDSource = id, source
	raw, ok := mappings[id]
	if !ok {
		return fail(ErrClusterID, "%s has no status.ipMappings entry for the consumer's cluster ID %q (from %s); entries: %s: check --remote-cluster-id",
			what, id, source, strings.Join(keys, ", "))
	}
	s, ok := raw.(string)
	if !ok {
		return fail(ErrInvalidValue, "%s: status.ipMappings[%q] is a %T, want a string", what, id, raw)
	}
	addr, err := parseAddr(what, fmt.Sprintf("status.ipMappings[%q]", id), s)
	if err != nil {
		return err
	}
	res.RemappedIP = addr
	return nil
}

func parseAddr(what, field, s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(strings.TrimSpace(s))
	if err != nil {
		return netip.Addr{}, fail(ErrInvalidValue, "%s: %s %q is not an IP address", what, field, s)
	}
	return a.Unmap(), nil
}

func parsePrefix(what, field, s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(strings.TrimSpace(s))
	if err != nil {
		return netip.Prefix{}, fail(ErrInvalidValue, "%s: %s %q is not a CIDR (want e.g. 10.81.0.0/16 or fd00::/64)", what, field, s)
	}
	return p.Masked(), nil
}

// chooseIP finds the IP object to use and records why in res. An explicit name (--name) is used as
// given; otherwise the IP of kubectl apiproxy's own proxy (found by OwnSelector, whatever its name)
// comes first, and Liqo's DefaultName second: in a cluster that also runs Liqo's own API server
// proxy, the user gets the proxy they installed, and is told which one it is.
func chooseIP(ctx context.Context, req Request, res *Result) (*unstructured.Unstructured, error) {
	p := req.Provider
	ips := p.Dynamic.Resource(IPResource).Namespace(req.Namespace)
	name, by := req.Name, "--name"
	if name == "" {
		list, err := ips.List(ctx, metav1.ListOptions{LabelSelector: OwnSelector})
		if apierrors.IsNotFound(err) || err == nil && len(list.Items) == 0 {
			if nsErr := servedError(p, IPResource, "IP", "(the provider is the current context)"); nsErr != nil {
				return nil, nsErr
			}
		}
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsForbidden(err) {
			return nil, fmt.Errorf("listing the IP objects labelled %s in namespace %s of %s: %w", OwnSelector, req.Namespace, p.Name, err)
		}
		switch {
		case apierrors.IsForbidden(err):
			// RBAC's resourceNames can grant get on one IP object but never list: such a user still
			// gets the default name's answer, told that kubectl apiproxy's own IP object was not looked for.
			name, by = DefaultName, "default name: listing IP objects is forbidden"
			res.Warnings = append(res.Warnings, fmt.Sprintf("you may not list IP objects in namespace %s of %s, so kubectl apiproxy's own IP object (labelled %s) was not looked for: using the default name %s; pass --name to pick another",
				req.Namespace, p.Name, OwnSelector, DefaultName))
		case err == nil && len(list.Items) == 1:
			name, by = list.Items[0].GetName(), "label "+OwnSelector
		case err == nil && len(list.Items) > 1:
			var names []string
			for _, it := range list.Items {
				names = append(names, it.GetNamespace()+"/"+it.GetName()+" (install namespace "+it.GetLabels()[installNamespaceLabel]+")")
			}
			slices.Sort(names)
			return nil, fail(ErrSeveralIPs, "several IP objects of kubectl apiproxy in %s (%s): pick one with --name", p.Name, strings.Join(names, ", "))
		default:
			name, by = DefaultName, "default name: no IP labelled "+OwnSelector
		}
	}
	res.IP = ObjectRef{Cluster: p.Name, Namespace: req.Namespace, Name: name}
	res.IPSelectedBy = by
	obj, err := ips.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		if nsErr := servedError(p, IPResource, "IP", "(the provider is the current context)"); nsErr != nil {
			return nil, nsErr
		}
		return nil, fail(ErrNotFound, "IP %s not found in the provider %s: install the proxy there (kubectl apiproxy install creates it when Liqo is present), or check --liqo-namespace and --name", res.IP, p.Name)
	}
	if err != nil {
		return nil, fmt.Errorf("reading IP %s in %s: %w", res.IP, p.Name, err)
	}
	res.Proxy = describeProxy(obj)
	return obj, nil
}

// describeProxy says whose proxy an IP object stands for: ours carries our labels.
func describeProxy(obj *unstructured.Unstructured) string {
	l := obj.GetLabels()
	if l[partOfLabel] == OwnPartOf {
		if ns := l[installNamespaceLabel]; ns != "" {
			return "kubectl apiproxy's proxy (install namespace " + ns + ")"
		}
		return "kubectl apiproxy's proxy"
	}
	if obj.GetName() == DefaultName {
		return "Liqo's own API server proxy (not installed by kubectl apiproxy)"
	}
	return "a proxy not installed by kubectl apiproxy"
}
