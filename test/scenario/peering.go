package scenario

import (
	"context"
	"fmt"
	"time"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"

	"github.com/apiproxy/apiproxy/test/fixtures/liqo"
)

const liqoNamespace = "liqo"

// Peering is the addressing Liqo would have set up: the provider's proxy gets ProviderRemappedIP in
// ProviderExternalCIDR, which the consumer remaps to ConsumerRemappedCIDR (same prefix length), so
// the consumer reaches the proxy at the remapped IP's host part in ConsumerRemappedCIDR.
type Peering struct {
	ProviderRemappedIP, ProviderExternalCIDR, ConsumerRemappedCIDR string
}

// DefaultPeering is the seed's numbers in 127.0.0.0/8, as Up uses them.
var DefaultPeering = Peering{ProviderRemappedIP: ProviderRemappedIP, ProviderExternalCIDR: ProviderExternalCIDR, ConsumerRemappedCIDR: ConsumerRemappedCIDR}

// Peer writes what Liqo would have written after peering: each cluster's ID ConfigMap, the
// provider's IP object for its proxy (current status shape), and the consumer's Configuration for
// the provider, with p's addresses.
func Peer(ctx context.Context, provider, consumer *rest.Config, p Peering) error {
	prov, err := dynamic.NewForConfig(provider)
	if err != nil {
		return err
	}
	cons, err := dynamic.NewForConfig(consumer)
	if err != nil {
		return err
	}
	for _, c := range []struct {
		where string
		dyn   dynamic.Interface
		id    string
	}{{"cl02", prov, ProviderClusterID}, {"cl01", cons, ConsumerClusterID}} {
		if _, err := liqo.CreateObject(ctx, c.dyn, liqo.ClusterIDConfigMap(liqoNamespace, c.id)); err != nil {
			return fmt.Errorf("cluster-ID ConfigMap in %s: %w", c.where, err)
		}
	}
	ip := liqo.IP(liqoNamespace, "api-server-proxy", ProviderLocalIP, liqo.IPStatus(p.ProviderRemappedIP, p.ProviderExternalCIDR))
	if _, err := liqo.CreateObject(ctx, prov, ip); err != nil {
		return fmt.Errorf("IP in cl02: %w", err)
	}
	// Liqo v1.2.0 and later mark the CIDRs final with this condition, at the created generation 1;
	// the CRDs of earlier releases have no conditions and drop it.
	conf := liqo.NetworkCIDRsConfigured(liqo.Configuration(liqoNamespace, "cl02", ProviderClusterID,
		liqo.CIDRs{Pod: []string{"127.90.0.0/16"}, External: []string{p.ProviderExternalCIDR}},
		&liqo.CIDRs{Pod: []string{"127.91.0.0/16"}, External: []string{p.ConsumerRemappedCIDR}}),
		"True", "CIDRsRemapped", 1, time.Now())
	if _, err := liqo.CreateObject(ctx, cons, conf); err != nil {
		return fmt.Errorf("Configuration in cl01: %w", err)
	}
	return nil
}
