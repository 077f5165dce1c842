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

// readIP fills the IP object's part of res: local IP, remapped IP and, in the current shape, the
// CIDR it came from.
func readIP(ctx context.Context, req Request, res *Result) error {
	p := req.Provider
	obj, err := p.Dynamic.Resource(IPResource).Namespace(req.Namespace).Get(ctx, req.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		if nsErr := servedError(p, IPResource, "IP", "(the provider is the current context)"); nsErr != nil {
			return nsErr
		}
		return fail(ErrNotFound, "IP %s not found in the provider %s: install the proxy there (kubectl apiproxy install creates it when Liqo is present), or check --liqo-namespace and --name", res.IP, p.Name)
	}
	if err != nil {
		return fmt.Errorf("reading IP %s in %s: %w", res.IP, p.Name, err)
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
