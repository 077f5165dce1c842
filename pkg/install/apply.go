package install

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

var metaGetOptions = metav1.GetOptions{}

// DryRun is the --dry-run mode.
type DryRun string

// The --dry-run values.
const (
	DryRunNone   DryRun = "none"
	DryRunClient DryRun = "client"
	DryRunServer DryRun = "server"
)

// ParseDryRun reads --dry-run.
func ParseDryRun(s string) (DryRun, error) {
	switch d := DryRun(s); d {
	case DryRunNone, DryRunClient, DryRunServer:
		return d, nil
	case "":
		return DryRunNone, nil
	}
	return "", fmt.Errorf("--dry-run %q: use none, client or server", s)
}

func (d DryRun) apiDryRun() []string {
	if d == DryRunServer {
		return []string{metav1.DryRunAll}
	}
	return nil
}

// RenderOffline renders for a client dry run: no cluster is contacted, so the webhook gets fresh
// certificates and Liqo's IP resource (which needs the live Service ClusterIP) is left out.
func RenderOffline(o Options, log io.Writer) ([]*unstructured.Unstructured, error) {
	o.DefaultHostAlias()
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if o.Relay {
		return nil, errors.New("--relay reads the peers' CIDRs from the cluster's Liqo Configurations, which a client dry run does not contact: use --dry-run=server")
	}
	if o.Has(RoleProxy) && o.NetworkPolicy != NetworkPolicyFalse {
		// Offline, the peers are unknown: true renders the policy from --allow-source alone.
		o.RenderNetworkPolicy = o.NetworkPolicy == NetworkPolicyTrue
		o.PolicySources = slices.Clone(o.AllowSources)
		fmt.Fprintf(log, "client dry run: the Liqo peers' CIDRs are not read (--network-policy=%s); use --dry-run=server to see the NetworkPolicy and --allow-source install renders\n", o.NetworkPolicy)
	}
	if len(o.AllowSources) > 0 {
		o.ProxyAllowSources = append(slices.Clone(o.AllowSources), loopbackSources...)
	}
	var in RenderInput
	if o.Has(RoleWebhook) {
		c, _, err := EnsureWebhookCerts(nil, nil, o.Namespace, time.Now())
		if err != nil {
			return nil, err
		}
		in.Certs = c
		fmt.Fprintln(log, "client dry run: the webhook certificates are freshly generated (install reuses the ones already stored in the cluster)")
	}
	if o.CreateIP != CreateIPFalse {
		fmt.Fprintf(log, "client dry run: Liqo's IP %s/%s is not rendered (its spec.ip is the live proxy Service ClusterIP); use --dry-run=server to see it\n", o.LiqoNamespace, IPResourceName)
	}
	return Render(o, in)
}

// Install applies the rendered objects with server-side apply (field manager kubectl-apiproxy) and
// returns what the API server answered. Notes for the user go to log.
func Install(ctx context.Context, c *Client, o Options, dryRun DryRun, log io.Writer) ([]*unstructured.Unstructured, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if dryRun == DryRunClient {
		return nil, errors.New("internal error: a client dry run renders offline (RenderOffline)")
	}
	// Decide everything that can fail before changing anything.
	ipName, createIP, err := decideIP(ctx, c, o, log)
	if err != nil {
		return nil, err
	}
	keptNodeIP, err := keepInstalledNodeIP(ctx, c, &o, log)
	if err != nil {
		return nil, err
	}
	o.DefaultHostAlias()
	if err := checkNodeIP(ctx, c, o, keptNodeIP, log); err != nil {
		return nil, err
	}
	warnPullSecrets(ctx, c, o, log)
	if err := decideSources(ctx, c, &o, log); err != nil {
		return nil, err
	}
	if o.Relay {
		if o.AllowTargets, err = relayTargets(ctx, c, o, log); err != nil {
			return nil, err
		}
	}
	in := RenderInput{}
	ns, err := c.get(ctx, gvkNamespace, "", o.Namespace)
	if err != nil {
		return nil, fmt.Errorf("reading namespace %s: %w", o.Namespace, err)
	}
	if ns == nil && dryRun == DryRunServer {
		return nil, fmt.Errorf("namespace %s does not exist yet, and a server-side dry run cannot validate objects inside a namespace it only pretends to create: use --dry-run=client, or create the namespace first", o.Namespace)
	}
	if ns != nil && !ownedByUs(ns, o.Namespace) {
		in.SkipNamespace = true
		fmt.Fprintf(log, "namespace %s exists and was not created by kubectl-apiproxy: leaving its labels alone (uninstall will leave it too)", o.Namespace)
		if o.Has(RoleNode) {
			fmt.Fprint(log, "; the node role needs privileged pods there (label pod-security.kubernetes.io/enforce=privileged)")
		}
		fmt.Fprintln(log)
	}
	if ds, err := c.get(ctx, gvkDaemonSet, o.Namespace, nodeDaemonSetName); err != nil {
		return nil, err
	} else if ds != nil {
		in.NodeRoleInstalled = true
		if o.Has(RoleNode) && !sharesListeners(&unstructured.Unstructured{Object: ds}) {
			in.NodeUpdateInPlace = true
			fmt.Fprintf(log, "the installed node agents (daemonset %s/%s) do not hand their listening sockets over: this update replaces each node's pod in place, "+
				"so %s:%d refuses connections on a node for a few seconds while its pod restarts; later updates start the new pod first and drop nothing\n",
				o.Namespace, nodeDaemonSetName, o.NodeIP, nodeForwardPort)
		}
	}
	if o.Has(RoleWebhook) {
		if in.Certs, err = webhookCerts(ctx, c, o.Namespace, log); err != nil {
			return nil, err
		}
	}
	objs, err := Render(o, in)
	if err != nil {
		return nil, err
	}
	var applied []*unstructured.Unstructured
	var proxyClusterIP string
	for _, obj := range objs {
		got, err := apply(ctx, c, obj, dryRun)
		if err != nil {
			return applied, err
		}
		applied = append(applied, got)
		if got.GetKind() == "Service" && got.GetName() == proxyServiceName {
			proxyClusterIP = serviceIPv4(got.Object)
		}
	}
	if err := pruneUnrendered(ctx, c, o, dryRun, log); err != nil {
		return applied, err
	}
	if createIP {
		ip, err := applyIP(ctx, c, o, ipName, proxyClusterIP, dryRun, log)
		if err != nil {
			return applied, err
		}
		if ip != nil {
			applied = append(applied, ip)
		}
	}
	return applied, nil
}

func apply(ctx context.Context, c *Client, obj *unstructured.Unstructured, dryRun DryRun) (*unstructured.Unstructured, error) {
	ri, m, err := c.resourceFor(obj.GroupVersionKind(), obj.GetNamespace())
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", obj.GetKind(), obj.GetName(), err)
	}
	// Force: these objects are ours; a manual edit of a field we set (kubectl edit, scale) is taken back.
	got, err := ri.Apply(ctx, obj.GetName(), obj, metav1.ApplyOptions{FieldManager: FieldManager, Force: true, DryRun: dryRun.apiDryRun()})
	if err != nil {
		return nil, fmt.Errorf("applying %s: %w", objectRef(m.Resource.GroupResource(), obj), err)
	}
	return got, nil
}

// ObjectRef is kubectl's "deployment.apps/name" form.
func ObjectRef(obj *unstructured.Unstructured) string {
	gvk := obj.GroupVersionKind()
	return schema.GroupResource{Group: gvk.Group, Resource: strings.ToLower(gvk.Kind)}.String() + "/" + obj.GetName()
}

func objectRef(gr schema.GroupResource, obj *unstructured.Unstructured) string {
	ref := gr.String() + "/" + obj.GetName()
	if obj.GetNamespace() != "" {
		ref = obj.GetNamespace() + " " + ref
	}
	return ref
}

func ownedByUs(obj map[string]any, installNamespace string) bool {
	u := unstructured.Unstructured{Object: obj}
	l := u.GetLabels()
	return l[LabelPartOf] == PartOf && l[LabelInstallNamespace] == installNamespace
}

// webhookCerts reads the stored PKI and keeps or renews it.
func webhookCerts(ctx context.Context, c *Client, namespace string, log io.Writer) (*WebhookCerts, error) {
	caData, err := secretData(ctx, c, namespace, caSecretName)
	if err != nil {
		return nil, err
	}
	tlsData, err := secretData(ctx, c, namespace, tlsSecretName)
	if err != nil {
		return nil, err
	}
	certs, note, err := EnsureWebhookCerts(caData, tlsData, namespace, time.Now())
	if err != nil {
		return nil, err
	}
	fmt.Fprintln(log, note)
	return certs, nil
}

func secretData(ctx context.Context, c *Client, namespace, name string) (map[string][]byte, error) {
	obj, err := c.get(ctx, gvkSecret, namespace, name)
	if err != nil || obj == nil {
		if err != nil {
			err = fmt.Errorf("reading secret %s/%s: %w", namespace, name, err)
		}
		return nil, err
	}
	data, _, _ := unstructured.NestedStringMap(obj, "data")
	out := map[string][]byte{}
	for k, v := range data {
		b, err := decodeB64(v)
		if err != nil {
			return nil, fmt.Errorf("secret %s/%s key %s: %w", namespace, name, k, err)
		}
		out[k] = b
	}
	return out, nil
}
