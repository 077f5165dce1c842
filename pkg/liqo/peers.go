package liqo

import (
	"context"
	"fmt"
	"net/netip"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Peer is one peer of a cluster, as its Configuration describes it.
type Peer struct {
	Configuration   ObjectRef `json:"configuration"`
	RemoteClusterID string    `json:"remoteClusterID,omitempty"`
	// RemappedExternal are the CIDRs under which this cluster reaches the peer's external network
	// (status.remote.cidr.external): where the peer's remapped proxy address lies.
	RemappedExternal []netip.Prefix `json:"remappedExternal"`
	// RemappedPod are the CIDRs this cluster sees the peer's pods as (status.remote.cidr.pod):
	// where traffic from the peer's pods arrives from.
	RemappedPod []netip.Prefix `json:"remappedPod,omitempty"`
}

// Peers lists the peers that the cluster's Configurations describe (in every namespace: Liqo keeps
// them in per-peer tenant namespaces), with their remapped external CIDRs. `install --relay` allows exactly these CIDRs through this cluster's proxy. A Configuration
// whose status is not set yet is an error: allowing less than the user asked for would fail later,
// far from the cause.
func Peers(ctx context.Context, c *Cluster) ([]Peer, error) {
	list, err := c.Dynamic.Resource(ConfigurationResource).List(ctx, metav1.ListOptions{})
	if apierrors.IsNotFound(err) || err == nil && len(list.Items) == 0 {
		if nsErr := servedError(c, ConfigurationResource, "Configuration", "(install --relay and --network-policy read Liqo's network Configurations)"); nsErr != nil {
			return nil, nsErr
		}
	}
	if err != nil {
		return nil, fmt.Errorf("listing Configurations in %s: %w", c.Name, err)
	}
	if len(list.Items) == 0 {
		return nil, fail(ErrNoConfiguration, "no Configuration in %s: this cluster has no Liqo peers", c.Name)
	}
	var peers []Peer
	for i := range list.Items {
		obj := &list.Items[i]
		ref := ObjectRef{Cluster: c.Name, Namespace: obj.GetNamespace(), Name: obj.GetName()}
		what := "Configuration " + ref.String() + " in " + c.Name
		cidrs, err := readCIDRs(obj, what, "status")
		if err != nil {
			return nil, err
		}
		if len(cidrs.external) == 0 {
			return nil, fail(ErrStatusNotSet, "%s has no status.remote.cidr.external yet: wait for Liqo to finish the peering, then re-run", what)
		}
		peers = append(peers, Peer{Configuration: ref, RemoteClusterID: obj.GetLabels()[RemoteClusterIDLabel], RemappedExternal: cidrs.external, RemappedPod: cidrs.pod})
	}
	return peers, nil
}
