// Package liqo computes the address a consumer cluster uses to reach the API server proxy of a
// provider cluster through a Liqo network fabric, from Liqo's own resources read with the dynamic
// client (this project has no Liqo Go dependency):
//
//   - in the provider, the IP object (ipam.liqo.io/v1alpha1 ips, default liqo/api-server-proxy):
//     spec.ip is the proxy Service's ClusterIP, its status the address Liqo remapped it to;
//   - in the consumer, the Configuration (networking.liqo.io/v1beta1) of the peering with the
//     provider: spec.remote.cidr are the provider's CIDRs, status.remote.cidr the CIDRs the consumer
//     sees them as;
//   - in both, the cluster-ID ConfigMap, to pick the right entries.
//
// The remapped IP is found in a spec CIDR and moved to the matching status CIDR (package remap):
// 10.70.0.3 in 10.70.0.0/16 with status 10.81.0.0/16 gives 10.81.0.3. Resolve records every step in
// a Result, so commands can show how the address was obtained.
package liqo

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
)

// The resources read, with the group, version and plural Liqo serves them under.
var (
	IPResource            = schema.GroupVersionResource{Group: "ipam.liqo.io", Version: "v1alpha1", Resource: "ips"}
	ConfigurationResource = schema.GroupVersionResource{Group: "networking.liqo.io", Version: "v1beta1", Resource: "configurations"}
	configMapResource     = schema.GroupVersionResource{Version: "v1", Resource: "configmaps"}
)

// Defaults of a Liqo installation, and the labels and keys Liqo uses.
const (
	DefaultNamespace = "liqo"
	DefaultName      = "api-server-proxy"
	DefaultProxyPort = 8118

	// RemoteClusterIDLabel marks a Configuration with the ID of the peer it describes.
	RemoteClusterIDLabel = "liqo.io/remote-cluster-id"
	// ClusterIDSelector selects the ConfigMap holding a cluster's own ID under ClusterIDKey.
	ClusterIDSelector = "app.kubernetes.io/name=clusterid-configmap"
	ClusterIDKey      = "CLUSTER_ID"

	// OwnSelector finds the objects kubectl apiproxy installed (the labels pkg/install writes; this
	// package cannot import it). OwnPartOf is the label's value.
	OwnSelector           = partOfLabel + "=" + OwnPartOf
	OwnPartOf             = "apiproxy"
	partOfLabel           = "app.kubernetes.io/part-of"
	installNamespaceLabel = "apiproxy.io/install-namespace"
)

// Cluster is one cluster to read from.
type Cluster struct {
	// Name names the cluster in messages and results: the kubeconfig context, usually.
	Name    string
	Dynamic dynamic.Interface
	// Discovery tells "the CRD is not served" from "the object does not exist" when a read fails.
	Discovery discovery.DiscoveryInterface
}

// NewCluster builds the clients of a Cluster from a client configuration.
func NewCluster(name string, cfg *rest.Config) (*Cluster, error) {
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("dynamic client for %s: %w", name, err)
	}
	disc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("discovery client for %s: %w", name, err)
	}
	return &Cluster{Name: name, Dynamic: dyn, Discovery: disc}, nil
}

// Request says where to look. Provider is the cluster running the proxy; Consumer the cluster that
// wants to reach it. Empty fields take the defaults above.
type Request struct {
	Provider *Cluster
	// Consumer may be nil when RemoteCIDR is set: then only the provider is read.
	Consumer *Cluster
	// Namespace is the Liqo namespace, in both clusters (DefaultNamespace).
	Namespace string
	// Name is the IP object's name; empty picks the IP object of kubectl apiproxy's own proxy
	// (labelled OwnSelector) when there is one, else DefaultName.
	Name string
	// ProxyPort is the proxy's port, for Result.ProxyURL (DefaultProxyPort).
	ProxyPort int
	// ProviderClusterID overrides the provider's cluster-ID ConfigMap (flag --local-cluster-id).
	ProviderClusterID string
	// ConsumerClusterID overrides the consumer's cluster-ID ConfigMap (flag --remote-cluster-id).
	ConsumerClusterID string
	// RemoteCIDR, when set, is the CIDR the consumer sees the provider's external CIDR as (the
	// Configuration's status.remote.cidr.external): the consumer is then not read at all.
	RemoteCIDR string
	// IgnoreConditions uses a Configuration whose NetworkCIDRsConfigured condition is not True or is
	// stale, with a warning (flag --ignore-liqo-conditions); by default that is an error.
	IgnoreConditions bool
	// Now is the clock for the condition's age in messages (time.Now when nil).
	Now func() time.Time
}

func (r Request) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// Result is the computation, step by step. Addresses are netip values (text in JSON and YAML);
// CIDRs read from objects stay strings, as found.
type Result struct {
	Provider string `json:"provider,omitempty"`
	Consumer string `json:"consumer,omitempty"`

	// IP is the provider's IP object; StatusShape is "status.ip" (current Liqo) or
	// "status.ipMappings" (v1.0.0-rc.1/rc.2).
	IP          ObjectRef `json:"ip"`
	StatusShape string    `json:"statusShape"`
	// IPSelectedBy says how IP was chosen ("--name", "label ...", "default name ..."), and Proxy
	// whose proxy it stands for (kubectl apiproxy's, or Liqo's own).
	IPSelectedBy string `json:"ipSelectedBy"`
	Proxy        string `json:"proxy"`
	// LocalIP is spec.ip (the proxy Service ClusterIP), as found.
	LocalIP string `json:"localIP,omitempty"`
	// RemappedIP is the address the provider's fabric exposes the proxy at, and RemappedCIDR the
	// CIDR it was taken from (status.cidr; empty in the ipMappings shape).
	RemappedIP   netip.Addr `json:"remappedIP"`
	RemappedCIDR string     `json:"remappedCIDR,omitempty"`

	// Cluster IDs and where they came from ("flag", "ConfigMap NS/NAME in CLUSTER", ...).
	ConsumerClusterID       string `json:"consumerClusterID,omitempty"`
	ConsumerClusterIDSource string `json:"consumerClusterIDSource,omitempty"`
	ProviderClusterID       string `json:"providerClusterID,omitempty"`
	ProviderClusterIDSource string `json:"providerClusterIDSource,omitempty"`

	// Configuration is the consumer's Configuration for the provider; SpecCIDRs and StatusCIDRs
	// its spec.remote.cidr and status.remote.cidr. All empty when RemoteCIDR was given.
	Configuration *ObjectRef `json:"configuration,omitempty"`
	SpecCIDRs     *CIDRs     `json:"specCIDRs,omitempty"`
	StatusCIDRs   *CIDRs     `json:"statusCIDRs,omitempty"`
	// Condition is the Configuration's NetworkCIDRsConfigured condition; nil when it has none
	// (Liqo before v1.2.0) or no Configuration was read.
	Condition  *Condition `json:"networkCIDRsConfigured,omitempty"`
	RemoteCIDR string     `json:"remoteCIDR,omitempty"`

	// From and To are the CIDRs the remap used ("pod" or "external" says which pair); all zero when
	// the remapped IP lay outside every CIDR and was kept unchanged.
	From     netip.Prefix `json:"fromCIDR,omitzero"`
	To       netip.Prefix `json:"toCIDR,omitzero"`
	Matched  string       `json:"matchedCIDR,omitempty"`
	FinalIP  netip.Addr   `json:"finalIP"`
	ProxyURL string       `json:"proxyURL"`
	Warnings []string     `json:"warnings,omitempty"`
}

// ObjectRef names an object in a cluster.
type ObjectRef struct {
	Cluster   string `json:"cluster,omitempty"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
}

func (o ObjectRef) String() string { return o.Namespace + "/" + o.Name }

// CIDRs are a Configuration's pod and external CIDRs; the first of each list is the primary one.
type CIDRs struct {
	Pod      []string `json:"pod,omitempty"`
	External []string `json:"external,omitempty"`
}

// RemappedExternalCIDR is the CIDR the address was remapped into, for tables: the one used, or the
// primary external status CIDR when none was, or "" when none is known.
func (r *Result) RemappedExternalCIDR() string {
	switch {
	case r.To.IsValid():
		return r.To.String()
	case r.RemoteCIDR != "":
		return r.RemoteCIDR
	case r.StatusCIDRs != nil && len(r.StatusCIDRs.External) > 0:
		return r.StatusCIDRs.External[0]
	}
	return ""
}

// Resolve reads the provider's IP object and, unless RemoteCIDR is set, the consumer's
// Configuration for the provider, and returns the address the consumer reaches the proxy at. Every
// error names the object involved and what to do, is tagged with its Stage (StageOf), and comes
// with the Result as far as it got; an address outside every CIDR is kept
// unchanged, as Liqo does, with a warning in Result.Warnings.
func Resolve(ctx context.Context, req Request) (*Result, error) {
	if req.Provider == nil {
		return nil, fmt.Errorf("no provider cluster given")
	}
	if req.Consumer == nil && req.RemoteCIDR == "" {
		return nil, fmt.Errorf("no consumer cluster given: name one (--remote) or give the remote CIDR (--remote-cidr)")
	}
	if req.Namespace == "" {
		req.Namespace = DefaultNamespace
	}
	if req.ProxyPort == 0 {
		req.ProxyPort = DefaultProxyPort
	}
	if req.ProxyPort < 1 || req.ProxyPort > 65535 {
		return nil, fmt.Errorf("proxy port %d is out of range 1-65535", req.ProxyPort)
	}
	res := &Result{
		Provider: req.Provider.Name,
	}
	if req.Consumer != nil {
		res.Consumer = req.Consumer.Name
	}
	if err := readIP(ctx, req, res); err != nil {
		return res, staged(StageIP, err)
	}
	if req.RemoteCIDR != "" {
		if err := remapIntoRemoteCIDR(req, res); err != nil {
			return res, staged(StageAddress, err)
		}
	} else if err := remapThroughConfiguration(ctx, req, res); err != nil {
		return res, staged(StageConfiguration, err)
	}
	res.ProxyURL = "http://" + net.JoinHostPort(res.FinalIP.String(), strconv.Itoa(req.ProxyPort))
	return res, nil
}
