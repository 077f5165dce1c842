package install

import (
	"context"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
)

// Kinds this package creates, in deletion order (the webhook first, so pods are no longer sent to a
// webhook being removed; the namespace last).
var (
	gvkMutatingWebhook = schema.GroupVersionKind{Group: "admissionregistration.k8s.io", Version: "v1", Kind: "MutatingWebhookConfiguration"}
	gvkIP              = schema.GroupVersionKind{Group: "ipam.liqo.io", Version: "v1alpha1", Kind: "IP"}
	gvkDeployment      = schema.GroupVersionKind{Group: "apps", Version: "v1", Kind: "Deployment"}
	gvkDaemonSet       = schema.GroupVersionKind{Group: "apps", Version: "v1", Kind: "DaemonSet"}
	gvkPDB             = schema.GroupVersionKind{Group: "policy", Version: "v1", Kind: "PodDisruptionBudget"}
	gvkService         = schema.GroupVersionKind{Version: "v1", Kind: "Service"}
	gvkSecret          = schema.GroupVersionKind{Version: "v1", Kind: "Secret"}
	gvkRole            = schema.GroupVersionKind{Group: "rbac.authorization.k8s.io", Version: "v1", Kind: "Role"}
	gvkRoleBinding     = schema.GroupVersionKind{Group: "rbac.authorization.k8s.io", Version: "v1", Kind: "RoleBinding"}
	gvkServiceAccount  = schema.GroupVersionKind{Version: "v1", Kind: "ServiceAccount"}
	gvkNamespace       = schema.GroupVersionKind{Version: "v1", Kind: "Namespace"}
	gvkPod             = schema.GroupVersionKind{Version: "v1", Kind: "Pod"}
	// The webhook's ConfigMap reader (envFrom).
	gvkClusterRole = schema.GroupVersionKind{Group: "rbac.authorization.k8s.io", Version: "v1", Kind: "ClusterRole"}

	managedKinds = []schema.GroupVersionKind{gvkMutatingWebhook, gvkIP, gvkDeployment, gvkDaemonSet, gvkPDB, gvkService, gvkSecret, gvkNetworkPolicy, gvkRoleBinding, gvkRole, gvkClusterRoleBinding, gvkClusterRole, gvkServiceAccount, gvkNamespace}
)

// IPCRDName is Liqo's IP CustomResourceDefinition.
const IPCRDName = "ips.ipam.liqo.io"

// Client talks to one cluster through the dynamic client, with a RESTMapper built from discovery
// (in memory, per command: a CRD installed a second ago is seen).
type Client struct {
	Dynamic   dynamic.Interface
	Discovery discovery.DiscoveryInterface
	Mapper    meta.ResettableRESTMapper
	// Typed serves the watches of --wait and uninstall, events and pod logs.
	Typed kubernetes.Interface
}

// NewClient builds a Client from a REST config.
func NewClient(cfg *rest.Config) (*Client, error) {
	// Status and --wait list every managed kind on each poll: at client-go's default 5 QPS the
	// rate limiter, not the cluster, would decide how long a short --timeout lasts.
	if cfg.QPS == 0 && cfg.RateLimiter == nil {
		cfg = rest.CopyConfig(cfg)
		cfg.QPS, cfg.Burst = 50, 100
	}
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	typed, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return &Client{
		Typed:     typed,
		Dynamic:   dyn,
		Discovery: dc,
		Mapper:    restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc)),
	}, nil
}

// resourceFor maps a kind to its dynamic resource; namespace is ignored for cluster-scoped kinds.
func (c *Client) resourceFor(gvk schema.GroupVersionKind, namespace string) (dynamic.ResourceInterface, *meta.RESTMapping, error) {
	m, err := c.Mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return nil, nil, err
	}
	if m.Scope.Name() == meta.RESTScopeNameRoot {
		return c.Dynamic.Resource(m.Resource), m, nil
	}
	return c.Dynamic.Resource(m.Resource).Namespace(namespace), m, nil
}

// IPCRDServed reports whether the API server serves Liqo's ipam.liqo.io/v1alpha1 ips.
func (c *Client) IPCRDServed() (bool, error) {
	list, err := c.Discovery.ServerResourcesForGroupVersion(gvkIP.GroupVersion().String())
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("discovering %s: %w", gvkIP.GroupVersion(), err)
	}
	for _, r := range list.APIResources {
		if r.Name == "ips" {
			return true, nil
		}
	}
	return false, nil
}

// served reports whether a kind is served (a missing CRD is not an error for listing).
func (c *Client) served(gvk schema.GroupVersionKind) (bool, error) {
	_, err := c.Mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if meta.IsNoMatchError(err) {
		return false, nil
	}
	return err == nil, err
}

// get returns nil, nil when the object does not exist.
func (c *Client) get(ctx context.Context, gvk schema.GroupVersionKind, namespace, name string) (map[string]any, error) {
	ri, _, err := c.resourceFor(gvk, namespace)
	if err != nil {
		return nil, err
	}
	obj, err := ri.Get(ctx, name, metaGetOptions)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return obj.Object, nil
}
