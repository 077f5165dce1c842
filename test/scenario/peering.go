package scenario

import (
	"context"
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"

	"github.com/apiproxy/apiproxy/test/fixtures/liqo"
)

const liqoNamespace = "liqo"

// peer writes what Liqo would have written after peering: each cluster's ID ConfigMap, the provider's
// IP object for its proxy (current status shape), and the consumer's Configuration for the provider.
func peer(ctx context.Context, provider, consumer *rest.Config) error {
	for _, side := range []struct {
		cfg *rest.Config
		id  string
	}{{provider, ProviderClusterID}, {consumer, ConsumerClusterID}} {
		ns := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": liqoNamespace}}}
		if err := createWithStatus(ctx, side.cfg, ns); err != nil {
			return fmt.Errorf("namespace %s: %w", liqoNamespace, err)
		}
		if err := createWithStatus(ctx, side.cfg, liqo.ClusterIDConfigMap(liqoNamespace, side.id)); err != nil {
			return fmt.Errorf("cluster-ID ConfigMap: %w", err)
		}
	}

	ip := liqo.IP(liqoNamespace, "api-server-proxy", ProviderLocalIP, liqo.IPStatus(ProviderRemappedIP, ProviderExternalCIDR))
	if err := createWithStatus(ctx, provider, ip); err != nil {
		return fmt.Errorf("IP in cl02: %w", err)
	}
	conf := liqo.Configuration(liqoNamespace, "cl02", ProviderClusterID,
		liqo.CIDRs{Pod: []string{"127.90.0.0/16"}, External: []string{ProviderExternalCIDR}},
		&liqo.CIDRs{Pod: []string{"127.91.0.0/16"}, External: []string{ConsumerRemappedCIDR}})
	if err := createWithStatus(ctx, consumer, conf); err != nil {
		return fmt.Errorf("Configuration in cl01: %w", err)
	}
	return nil
}

// createWithStatus creates obj and then writes its status, if it has one, through the status
// subresource, which a create ignores.
func createWithStatus(ctx context.Context, cfg *rest.Config, obj *unstructured.Unstructured) error {
	gvr := liqo.Resource(obj)
	dc, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}
	status, hasStatus := obj.Object["status"]
	created, err := dc.Resource(gvr).Namespace(obj.GetNamespace()).Create(ctx, obj, metav1.CreateOptions{})
	if err != nil || !hasStatus {
		return err
	}
	created.Object["status"] = status
	_, err = dc.Resource(gvr).Namespace(obj.GetNamespace()).UpdateStatus(ctx, created, metav1.UpdateOptions{})
	return err
}
