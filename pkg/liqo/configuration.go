package liqo

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/apiproxy/apiproxy/pkg/remap"
)

// remapIntoRemoteCIDR moves the remapped IP into the CIDR given by the user. The source CIDR is the
// IP's status.cidr when known; otherwise the remapped IP's own network of the same length, the only
// one a same-size remap can come from.
func remapIntoRemoteCIDR(req Request, res *Result) error {
	res.RemoteCIDR = req.RemoteCIDR
	if res.ConsumerClusterID == "" && req.ConsumerClusterID != "" {
		res.ConsumerClusterID, res.ConsumerClusterIDSource = req.ConsumerClusterID, "flag --remote-cluster-id"
	}
	to, err := parsePrefix("--remote-cidr", "value", req.RemoteCIDR)
	if err != nil {
		return err
	}
	from := netip.PrefixFrom(res.RemappedIP, to.Bits()).Masked()
	if res.RemappedCIDR != "" {
		from = netip.MustParsePrefix(res.RemappedCIDR).Masked() // parsed once already by readIP
	}
	final, err := remap.Addr(res.RemappedIP, from, to)
	if err != nil {
		return remapError(err, fmt.Sprintf("cannot remap the address %s of IP %s (CIDR %s) into --remote-cidr %s", res.RemappedIP, res.IP, from, to),
			fmt.Sprintf("give a /%d CIDR of the same family", from.Bits()))
	}
	res.From, res.To, res.Matched, res.FinalIP = from, to, "--remote-cidr", final
	return nil
}

// remapThroughConfiguration finds the consumer's Configuration for the provider and moves the
// remapped IP from the spec CIDR containing it (pod, then external) to the matching status CIDR.
func remapThroughConfiguration(ctx context.Context, req Request, res *Result) error {
	res.ProviderClusterID, res.ProviderClusterIDSource = req.ProviderClusterID, "flag --local-cluster-id"
	if res.ProviderClusterID == "" {
		id, source, err := clusterID(ctx, req.Provider, req.Namespace, "--local-cluster-id")
		if err != nil {
			return err
		}
		res.ProviderClusterID, res.ProviderClusterIDSource = id, source
	}
	cfg, err := findConfiguration(ctx, req.Consumer, res.ProviderClusterID)
	if err != nil {
		return err
	}
	res.Configuration = &ObjectRef{Cluster: req.Consumer.Name, Namespace: cfg.GetNamespace(), Name: cfg.GetName()}
	what := fmt.Sprintf("Configuration %s in %s", res.Configuration, req.Consumer.Name)

	spec, err := readCIDRs(cfg, what, "spec")
	if err != nil {
		return err
	}
	status, err := readCIDRs(cfg, what, "status")
	if err != nil {
		return err
	}
	res.SpecCIDRs, res.StatusCIDRs = &spec.raw, &status.raw
	// Liqo's own rule (liqoctl) before the CIDRs: a Configuration whose condition says the CIDRs are
	// not final gives an address that may change under the user.
	if err := checkCondition(cfg, what, req, res); err != nil {
		return staged(StageCondition, err)
	}
	if len(status.pod)+len(status.external) == 0 {
		return fail(ErrStatusNotSet, "%s has no status.remote.cidr yet: Liqo has not configured the peering's network (condition NetworkCIDRsConfigured); wait and retry", what)
	}

	ip := res.RemappedIP
	for _, kind := range []struct {
		name         string
		spec, status []netip.Prefix
	}{{"pod", spec.pod, status.pod}, {"external", spec.external, status.external}} {
		for i, from := range kind.spec {
			if !from.Contains(ip) {
				continue
			}
			if i >= len(kind.status) {
				return fail(ErrStatusNotSet, "%s: spec.remote.cidr.%s[%d] %s contains %s but status.remote.cidr.%s has no entry %d yet: wait and retry",
					what, kind.name, i, from, ip, kind.name, i)
			}
			to := kind.status[i]
			final, err := remap.Addr(ip, from, to)
			if err != nil {
				return remapError(err, fmt.Sprintf("%s: cannot remap %s from spec.remote.cidr.%s %s to status.remote.cidr.%s %s",
					what, ip, kind.name, from, kind.name, to), "check the CIDRs Liqo assigned to this peering")
			}
			res.From, res.To, res.Matched, res.FinalIP = from, to, kind.name, final
			return nil
		}
	}
	// Liqo leaves an address it cannot place unchanged; so do we, loudly.
	res.FinalIP = ip
	res.Warnings = append(res.Warnings, fmt.Sprintf(
		"the remapped address %s of IP %s lies outside every CIDR of %s (spec.remote.cidr pod %v, external %v): using it UNCHANGED, as Liqo does; the consumer may not reach it",
		ip, res.IP, what, spec.raw.Pod, spec.raw.External))
	return nil
}

func findConfiguration(ctx context.Context, c *Cluster, providerID string) (*unstructured.Unstructured, error) {
	selector := RemoteClusterIDLabel + "=" + providerID
	list, err := c.Dynamic.Resource(ConfigurationResource).List(ctx, metav1.ListOptions{LabelSelector: selector})
	// An empty list may also mean the resource is not served (some clients answer so): ask
	// discovery before blaming the peering.
	if apierrors.IsNotFound(err) || err == nil && len(list.Items) == 0 {
		if nsErr := servedError(c, ConfigurationResource, "Configuration", "(the consumer is --remote; or give --remote-cidr)"); nsErr != nil {
			return nil, nsErr
		}
	}
	if err != nil {
		return nil, fmt.Errorf("listing Configurations labelled %s in the consumer %s: %w", selector, c.Name, err)
	}
	switch len(list.Items) {
	case 0:
		return nil, fail(ErrNoConfiguration, "no Configuration labelled %s in the consumer %s: is %s peered with the provider? check the provider's cluster ID (--local-cluster-id), or give the remote CIDR with --remote-cidr",
			selector, c.Name, c.Name)
	case 1:
		return &list.Items[0], nil
	}
	var names []string
	for _, cfg := range list.Items {
		names = append(names, cfg.GetNamespace()+"/"+cfg.GetName())
	}
	return nil, fail(ErrSeveralConfigurations, "%d Configurations labelled %s in the consumer %s (%s): remove the stale ones, or give the remote CIDR with --remote-cidr",
		len(list.Items), selector, c.Name, strings.Join(names, ", "))
}

type parsedCIDRs struct {
	raw           CIDRs
	pod, external []netip.Prefix
}

// readCIDRs reads <section>.remote.cidr.{pod,external}, each a string (Liqo rc versions) or a list
// of strings (v1.0+). Every entry must parse: a bad CIDR is an error, never skipped.
func readCIDRs(obj *unstructured.Unstructured, what, section string) (parsedCIDRs, error) {
	var out parsedCIDRs
	for _, f := range []struct {
		name string
		raw  *[]string
		pfx  *[]netip.Prefix
	}{{"pod", &out.raw.Pod, &out.pod}, {"external", &out.raw.External, &out.external}} {
		field := section + ".remote.cidr." + f.name
		v, found, _ := unstructured.NestedFieldNoCopy(obj.Object, section, "remote", "cidr", f.name)
		if !found || v == nil {
			continue
		}
		switch t := v.(type) {
		case string:
			if t != "" {
				*f.raw = []string{t}
			}
		case []any:
			for i, e := range t {
				s, ok := e.(string)
				if !ok {
					return out, fail(ErrInvalidValue, "%s: %s[%d] is a %T, want a CIDR string", what, field, i, e)
				}
				*f.raw = append(*f.raw, s)
			}
		default:
			return out, fail(ErrInvalidValue, "%s: %s is a %T, want a CIDR string or a list of them", what, field, v)
		}
		for i, s := range *f.raw {
			name := field
			if len(*f.raw) > 1 {
				name = fmt.Sprintf("%s[%d]", field, i)
			}
			p, err := parsePrefix(what, name, s)
			if err != nil {
				return out, err
			}
			*f.pfx = append(*f.pfx, p)
		}
	}
	return out, nil
}

// ConditionType is the Configuration condition Liqo (v1.2.0 and later) sets once the peering's
// CIDRs are final.
const ConditionType = "NetworkCIDRsConfigured"

// Condition is the NetworkCIDRsConfigured condition of the Configuration used, as found.
type Condition struct {
	Status             string `json:"status"`
	Reason             string `json:"reason,omitempty"`
	Message            string `json:"message,omitempty"`
	ObservedGeneration int64  `json:"observedGeneration"`
	// Generation is the Configuration's metadata.generation: the condition is stale when
	// ObservedGeneration differs.
	Generation         int64     `json:"generation"`
	LastTransitionTime time.Time `json:"lastTransitionTime,omitzero"`
	// Ready is Liqo's rule: Status True and ObservedGeneration == Generation.
	Ready bool `json:"ready"`
	// Ignored says the condition failed the rule and --ignore-liqo-conditions went on anyway.
	Ignored bool `json:"ignored,omitempty"`
}

// checkCondition applies liqoctl's rule to cfg: with a NetworkCIDRsConfigured condition, the
// Configuration is used only when it is True and observed at the current generation. Without the
// condition (Liqo before v1.2.0 never writes it) the Configuration is used as before.
func checkCondition(cfg *unstructured.Unstructured, what string, req Request, res *Result) error {
	conds, _, _ := unstructured.NestedSlice(cfg.Object, "status", "conditions")
	for _, c := range conds {
		m, ok := c.(map[string]any)
		if !ok || m["type"] != ConditionType {
			continue
		}
		cond := &Condition{Generation: cfg.GetGeneration()}
		cond.Status, _ = m["status"].(string)
		cond.Reason, _ = m["reason"].(string)
		cond.Message, _ = m["message"].(string)
		cond.ObservedGeneration, _, _ = unstructured.NestedInt64(m, "observedGeneration")
		if ts, _ := m["lastTransitionTime"].(string); ts != "" {
			cond.LastTransitionTime, _ = time.Parse(time.RFC3339, ts)
		}
		cond.Ready = cond.Status == "True" && cond.ObservedGeneration == cond.Generation
		res.Condition = cond
		if cond.Ready {
			return nil
		}
		problem := describeCondition(cond, req.now())
		if req.IgnoreConditions {
			cond.Ignored = true
			res.Warnings = append(res.Warnings, fmt.Sprintf("%s: %s; going on because of --ignore-liqo-conditions: the CIDRs, and so the address, may still change", what, problem))
			return nil
		}
		return fail(ErrNotReady, "%s is not ready: %s; Liqo itself does not use it yet (\"configuration not remapped yet\"): wait for Liqo's network controllers and retry, or pass --ignore-liqo-conditions to go on anyway", what, problem)
	}
	return nil
}

// describeCondition says why cond fails the rule: its status, reason and age, and staleness.
func describeCondition(cond *Condition, now time.Time) string {
	s := fmt.Sprintf("condition %s is %s", ConditionType, cond.Status)
	if cond.Reason != "" {
		s += " (reason " + cond.Reason + ")"
	}
	if !cond.LastTransitionTime.IsZero() {
		s += " since " + now.Sub(cond.LastTransitionTime).Truncate(time.Second).String()
	}
	if cond.ObservedGeneration != cond.Generation {
		s += fmt.Sprintf(", observed at generation %d but the Configuration is at generation %d (stale)", cond.ObservedGeneration, cond.Generation)
	}
	if cond.Message != "" {
		s += ": " + cond.Message
	}
	return s
}

// remapError explains a failed remap; the kind stays the remap package's sentinel for errors.Is.
func remapError(err error, msg, advice string) error {
	for _, kind := range []error{remap.ErrPrefixLengthMismatch, remap.ErrFamilyMismatch, remap.ErrOutside} {
		if errors.Is(err, kind) {
			return fail(kind, "%s: %s, so no one-to-one remap exists: %s", msg, kind, advice)
		}
	}
	return &Error{Kind: ErrInvalidValue, Msg: msg, Err: err}
}
