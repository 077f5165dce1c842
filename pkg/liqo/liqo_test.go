package liqo

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	fakediscovery "k8s.io/client-go/discovery/fake"
	fakedynamic "k8s.io/client-go/dynamic/fake"
	clienttesting "k8s.io/client-go/testing"

	"github.com/apiproxy/apiproxy/pkg/remap"
	fixtures "github.com/apiproxy/apiproxy/test/fixtures/liqo"
)

// These unit tests run Resolve against fake clients for the many object shapes; the plugin's
// integration tests run the same paths against real API servers.

const (
	providerID = "provider-id"
	consumerID = "consumer-id"
)

func fakeCluster(name string, servesLiqo bool, objs ...*unstructured.Unstructured) *Cluster {
	listKinds := map[schema.GroupVersionResource]string{
		fixtures.IPResource:            "IPList",
		fixtures.ConfigurationResource: "ConfigurationList",
		fixtures.ConfigMapResource:     "ConfigMapList",
	}
	var runtimeObjs []runtime.Object
	for _, o := range objs {
		runtimeObjs = append(runtimeObjs, o)
	}
	dyn := fakedynamic.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), listKinds, runtimeObjs...)
	disc := &fakediscovery.FakeDiscovery{Fake: &clienttesting.Fake{}}
	if servesLiqo {
		disc.Resources = []*metav1.APIResourceList{
			{GroupVersion: "ipam.liqo.io/v1alpha1", APIResources: []metav1.APIResource{{Name: "ips", Namespaced: true, Kind: "IP"}}},
			{GroupVersion: "networking.liqo.io/v1beta1", APIResources: []metav1.APIResource{{Name: "configurations", Namespaced: true, Kind: "Configuration"}}},
		}
	}
	return &Cluster{Name: name, Dynamic: dyn, Discovery: disc}
}

var seedIP = fixtures.IP("liqo", "api-server-proxy", "10.95.245.141", fixtures.IPStatus("10.70.0.3", "10.70.0.0/16"))

func seedConfiguration(specExt, statusExt any) *unstructured.Unstructured {
	return fixtures.Configuration("liqo-tenant-cl02", "cl02", providerID,
		fixtures.CIDRs{Pod: []string{"10.60.0.0/16"}, External: specExt},
		&fixtures.CIDRs{Pod: []string{"10.61.0.0/16"}, External: statusExt})
}

func resolve(t *testing.T, provider, consumer *Cluster, mutate ...func(*Request)) (*Result, error) {
	t.Helper()
	req := Request{Provider: provider, Consumer: consumer}
	for _, m := range mutate {
		m(&req)
	}
	return Resolve(context.Background(), req)
}

func TestResolveSeedExample(t *testing.T) {
	for _, tc := range []struct {
		name      string
		spec, sta any
	}{
		{"list CIDRs", []string{"10.70.0.0/16"}, []string{"10.81.0.0/16"}},
		{"string CIDRs", "10.70.0.0/16", "10.81.0.0/16"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			provider := fakeCluster("cl02", true, seedIP, fixtures.ClusterIDConfigMap("liqo", providerID))
			consumer := fakeCluster("cl01", true, seedConfiguration(tc.spec, tc.sta))
			res, err := resolve(t, provider, consumer)
			if err != nil {
				t.Fatal(err)
			}
			if res.FinalIP != netip.MustParseAddr("10.81.0.3") || res.ProxyURL != "http://10.81.0.3:8118" {
				t.Errorf("final %s, url %s; want 10.81.0.3 and http://10.81.0.3:8118", res.FinalIP, res.ProxyURL)
			}
			if res.LocalIP != "10.95.245.141" || res.RemappedIP != netip.MustParseAddr("10.70.0.3") || res.RemappedCIDR != "10.70.0.0/16" || res.StatusShape != "status.ip" {
				t.Errorf("IP steps wrong: %+v", res)
			}
			if res.ProviderClusterID != providerID || !strings.Contains(res.ProviderClusterIDSource, "ConfigMap liqo/liqo-clusterid-configmap") {
				t.Errorf("provider ID %q from %q", res.ProviderClusterID, res.ProviderClusterIDSource)
			}
			if res.Configuration == nil || res.Configuration.String() != "liqo-tenant-cl02/cl02" || res.Matched != "external" ||
				res.From.String() != "10.70.0.0/16" || res.To.String() != "10.81.0.0/16" || res.RemappedExternalCIDR() != "10.81.0.0/16" {
				t.Errorf("configuration steps wrong: %+v", res)
			}
			if len(res.Warnings) != 0 {
				t.Errorf("unexpected warnings %v", res.Warnings)
			}
		})
	}
}

func TestResolveIPMappingsShape(t *testing.T) {
	mappings := fixtures.IP("liqo", "api-server-proxy", "10.95.245.141",
		fixtures.LegacyV100RC1to2IPMappingsStatus(map[string]string{consumerID: "10.70.0.2", "other-cluster": "10.70.9.9"}))
	provider := fakeCluster("cl02", true, mappings, fixtures.ClusterIDConfigMap("liqo", providerID))

	t.Run("consumer ID from its ConfigMap", func(t *testing.T) {
		consumer := fakeCluster("cl01", true, seedConfiguration("10.70.0.0/16", "10.81.0.0/16"), fixtures.ClusterIDConfigMap("liqo", consumerID))
		res, err := resolve(t, provider, consumer)
		if err != nil {
			t.Fatal(err)
		}
		if res.StatusShape != "status.ipMappings" || res.ConsumerClusterID != consumerID || res.FinalIP.String() != "10.81.0.2" {
			t.Errorf("got shape %s, consumer %s, final %s; want status.ipMappings, %s, 10.81.0.2", res.StatusShape, res.ConsumerClusterID, res.FinalIP, consumerID)
		}
	})
	t.Run("consumer ID from the flag wins", func(t *testing.T) {
		consumer := fakeCluster("cl01", true, seedConfiguration("10.70.0.0/16", "10.81.0.0/16"), fixtures.ClusterIDConfigMap("liqo", consumerID))
		res, err := resolve(t, provider, consumer, func(r *Request) { r.ConsumerClusterID = "other-cluster" })
		if err != nil {
			t.Fatal(err)
		}
		if res.FinalIP.String() != "10.81.9.9" || res.ConsumerClusterIDSource != "flag --remote-cluster-id" {
			t.Errorf("final %s from %s, want 10.81.9.9 from the flag", res.FinalIP, res.ConsumerClusterIDSource)
		}
	})
	t.Run("unknown ID among several entries", func(t *testing.T) {
		_, err := resolve(t, provider, nil, func(r *Request) { r.RemoteCIDR = "10.81.0.0/16" })
		if !errors.Is(err, ErrClusterID) || !strings.Contains(err.Error(), "--remote-cluster-id") || !strings.Contains(err.Error(), "other-cluster") {
			t.Errorf("err = %v, want ErrClusterID listing the entries and naming --remote-cluster-id", err)
		}
	})
	t.Run("ID not among the entries", func(t *testing.T) {
		_, err := resolve(t, provider, nil, func(r *Request) { r.RemoteCIDR = "10.81.0.0/16"; r.ConsumerClusterID = "nobody" })
		if !errors.Is(err, ErrClusterID) || !strings.Contains(err.Error(), `"nobody"`) {
			t.Errorf("err = %v, want ErrClusterID naming the ID", err)
		}
	})
	t.Run("single entry, no ID known: used with a warning", func(t *testing.T) {
		single := fixtures.IP("liqo", "api-server-proxy", "10.95.245.141", fixtures.LegacyV100RC1to2IPMappingsStatus(map[string]string{"wild-frog": "10.70.0.2"}))
		res, err := resolve(t, fakeCluster("cl02", true, single), nil, func(r *Request) { r.RemoteCIDR = "10.81.0.0/16" })
		if err != nil {
			t.Fatal(err)
		}
		if res.FinalIP.String() != "10.81.0.2" || res.ConsumerClusterID != "wild-frog" || len(res.Warnings) != 1 || !strings.Contains(res.Warnings[0], "only status.ipMappings entry") {
			t.Errorf("final %s, ID %s, warnings %v", res.FinalIP, res.ConsumerClusterID, res.Warnings)
		}
	})
}

func TestResolveRemaps(t *testing.T) {
	for _, tc := range []struct {
		name      string
		ip        *unstructured.Unstructured
		cfg       *unstructured.Unstructured
		want      string
		matched   string
		warning   string
		mutateReq func(*Request)
	}{
		{
			name: "IPv6",
			ip:   fixtures.IP("liqo", "api-server-proxy", "fd00:96::1", fixtures.IPStatus("fd00:70::3", "fd00:70::/64")),
			cfg: fixtures.Configuration("t", "c", providerID, fixtures.CIDRs{External: []string{"fd00:70::/64"}},
				&fixtures.CIDRs{External: []string{"fd00:81::/64"}}),
			want: "fd00:81::3", matched: "external",
		},
		{
			name: "dual stack, IPv6 second",
			ip:   fixtures.IP("liqo", "api-server-proxy", "fd00:96::1", fixtures.IPStatus("fd00:70::3", "fd00:70::/64")),
			cfg: fixtures.Configuration("t", "c", providerID, fixtures.CIDRs{External: []string{"10.70.0.0/16", "fd00:70::/64"}},
				&fixtures.CIDRs{External: []string{"10.81.0.0/16", "fd00:81::/64"}}),
			want: "fd00:81::3", matched: "external",
		},
		{
			name: "pod CIDR first",
			ip:   fixtures.IP("liqo", "api-server-proxy", "10.95.0.1", fixtures.IPStatus("10.60.1.2", "10.60.0.0/16")),
			cfg:  seedConfiguration("10.70.0.0/16", "10.81.0.0/16"),
			want: "10.61.1.2", matched: "pod",
		},
		{
			name: "spec equals status: unchanged",
			ip:   seedIP,
			cfg:  seedConfiguration("10.70.0.0/16", "10.70.0.0/16"),
			want: "10.70.0.3", matched: "external",
		},
		{
			name:    "outside every CIDR: unchanged with a warning",
			ip:      fixtures.IP("liqo", "api-server-proxy", "10.95.0.1", fixtures.IPStatus("192.168.0.3", "192.168.0.0/24")),
			cfg:     seedConfiguration("10.70.0.0/16", "10.81.0.0/16"),
			want:    "192.168.0.3",
			warning: "UNCHANGED",
		},
		{
			name:      "condition not ready, ignored: warning",
			ip:        seedIP,
			cfg:       withCondition(seedConfiguration("10.70.0.0/16", "10.81.0.0/16"), "False", 1),
			want:      "10.81.0.3",
			matched:   "external",
			warning:   "NetworkCIDRsConfigured is False (reason Remapping)",
			mutateReq: func(r *Request) { r.IgnoreConditions = true },
		},
		{
			name:    "condition True at the current generation: no word",
			ip:      seedIP,
			cfg:     withCondition(seedConfiguration("10.70.0.0/16", "10.81.0.0/16"), "True", 1),
			want:    "10.81.0.3",
			matched: "external",
		},
		{
			name:      "provider ID from the flag",
			ip:        seedIP,
			cfg:       fixtures.Configuration("t", "c", "given-id", fixtures.CIDRs{External: "10.70.0.0/16"}, &fixtures.CIDRs{External: "10.82.0.0/16"}),
			want:      "10.82.0.3",
			matched:   "external",
			mutateReq: func(r *Request) { r.ProviderClusterID = "given-id" },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			provider := fakeCluster("cl02", true, tc.ip, fixtures.ClusterIDConfigMap("liqo", providerID))
			consumer := fakeCluster("cl01", true, tc.cfg)
			var mutate []func(*Request)
			if tc.mutateReq != nil {
				mutate = append(mutate, tc.mutateReq)
			}
			res, err := resolve(t, provider, consumer, mutate...)
			if err != nil {
				t.Fatal(err)
			}
			if res.FinalIP.String() != tc.want || res.Matched != tc.matched {
				t.Errorf("final %s matched %q; want %s matched %q", res.FinalIP, res.Matched, tc.want, tc.matched)
			}
			if tc.warning == "" && len(res.Warnings) > 0 || tc.warning != "" && (len(res.Warnings) != 1 || !strings.Contains(res.Warnings[0], tc.warning)) {
				t.Errorf("warnings %q, want one containing %q", res.Warnings, tc.warning)
			}
		})
	}
}

// withCondition is u at generation 1 with a NetworkCIDRsConfigured condition observed at
// observedGeneration, changed an hour before testNow.
func withCondition(u *unstructured.Unstructured, status string, observedGeneration int64) *unstructured.Unstructured {
	u = fixtures.NetworkCIDRsConfigured(u.DeepCopy(), status, "Remapping", observedGeneration, testNow.Add(-time.Hour))
	u.SetGeneration(1)
	return u
}

var testNow = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// Liqo's readiness rule: a condition not True, or observed at another generation, stops the
// resolution with an error naming the Configuration, the condition's status, reason and age, and
// the flag; no condition (Liqo before v1.2.0) is no obstacle.
func TestResolveCondition(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  *unstructured.Unstructured
		says []string // empty: success
	}{
		{"False", withCondition(seedConfiguration("10.70.0.0/16", "10.81.0.0/16"), "False", 1),
			[]string{"Configuration liqo-tenant-cl02/cl02 in cl01 is not ready", "NetworkCIDRsConfigured is False", "reason Remapping", "since 1h0m0s", "--ignore-liqo-conditions"}},
		{"Unknown", withCondition(seedConfiguration("10.70.0.0/16", "10.81.0.0/16"), "Unknown", 1),
			[]string{"NetworkCIDRsConfigured is Unknown", "--ignore-liqo-conditions"}},
		{"True but stale", withCondition(seedConfiguration("10.70.0.0/16", "10.81.0.0/16"), "True", 0),
			[]string{"NetworkCIDRsConfigured is True", "observed at generation 0 but the Configuration is at generation 1 (stale)", "--ignore-liqo-conditions"}},
		{"False before the status is set", withCondition(fixtures.Configuration("t", "c", providerID, fixtures.CIDRs{External: []string{"10.70.0.0/16"}}, nil), "False", 1),
			[]string{"not ready", "NetworkCIDRsConfigured is False"}},
		{"no condition (Liqo before v1.2.0)", seedConfiguration("10.70.0.0/16", "10.81.0.0/16"), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			provider := fakeCluster("cl02", true, seedIP, fixtures.ClusterIDConfigMap("liqo", providerID))
			consumer := fakeCluster("cl01", true, tc.cfg)
			res, err := resolve(t, provider, consumer, func(r *Request) { r.Now = func() time.Time { return testNow } })
			if len(tc.says) == 0 {
				if err != nil || res.FinalIP.String() != "10.81.0.3" || res.Condition != nil || len(res.Warnings) != 0 {
					t.Fatalf("err %v, result %+v; want 10.81.0.3 without a word", err, res)
				}
				return
			}
			if err == nil {
				t.Fatalf("no error; final %s", res.FinalIP)
			}
			if !errors.Is(err, ErrNotReady) || StageOf(err) != StageCondition {
				t.Errorf("error %v: kind/stage %s, want ErrNotReady in stage %s", err, StageOf(err), StageCondition)
			}
			for _, s := range tc.says {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q, want it to say %q", err, s)
				}
			}
			if res.Condition == nil || res.Condition.Ready {
				t.Errorf("result condition %+v, want it recorded as not ready", res.Condition)
			}
		})
	}
}

func TestResolveRemoteCIDR(t *testing.T) {
	provider := fakeCluster("cl02", true, seedIP)
	res, err := resolve(t, provider, nil, func(r *Request) { r.RemoteCIDR = "10.81.0.0/16"; r.ProxyPort = 9000 })
	if err != nil {
		t.Fatal(err)
	}
	if res.FinalIP.String() != "10.81.0.3" || res.ProxyURL != "http://10.81.0.3:9000" || res.Configuration != nil {
		t.Errorf("got %s %s %v", res.FinalIP, res.ProxyURL, res.Configuration)
	}
	v6 := fixtures.IP("liqo", "api-server-proxy", "fd00:96::1", fixtures.IPStatus("fd00:70::3", "fd00:70::/64"))
	res, err = resolve(t, fakeCluster("cl02", true, v6), nil, func(r *Request) { r.RemoteCIDR = "fd00:81::/64" })
	if err != nil || res.ProxyURL != "http://[fd00:81::3]:8118" {
		t.Errorf("IPv6 proxy URL: %v, %v", res, err)
	}
}

func TestResolveErrors(t *testing.T) {
	providerWithIP := func(ip *unstructured.Unstructured) *Cluster {
		return fakeCluster("cl02", true, ip, fixtures.ClusterIDConfigMap("liqo", providerID))
	}
	seedConsumer := func() *Cluster { return fakeCluster("cl01", true, seedConfiguration("10.70.0.0/16", "10.81.0.0/16")) }
	for _, tc := range []struct {
		name     string
		provider *Cluster
		consumer *Cluster
		mutate   func(*Request)
		kind     error
		says     []string
	}{
		{name: "IP CRD not served", provider: fakeCluster("cl02", false), consumer: seedConsumer(),
			kind: ErrNotServed, says: []string{"ips.ipam.liqo.io/v1alpha1", "cl02", "is Liqo networking installed?"}},
		{name: "IP missing", provider: fakeCluster("cl02", true), consumer: seedConsumer(),
			kind: ErrNotFound, says: []string{"IP liqo/api-server-proxy not found", "cl02"}},
		{name: "IP missing under another name", provider: providerWithIP(seedIP), consumer: seedConsumer(),
			mutate: func(r *Request) { r.Name = "other" }, kind: ErrNotFound, says: []string{"IP liqo/other not found"}},
		{name: "IP status not set", provider: providerWithIP(fixtures.IP("liqo", "api-server-proxy", "10.95.0.1", nil)), consumer: seedConsumer(),
			kind: ErrStatusNotSet, says: []string{"IP liqo/api-server-proxy in cl02 has no remapped address yet"}},
		{name: "IP status.ip not an address", provider: providerWithIP(fixtures.IP("liqo", "api-server-proxy", "10.95.0.1", fixtures.IPStatus("10.70.0.300", "10.70.0.0/16"))),
			consumer: seedConsumer(), kind: ErrInvalidValue, says: []string{`status.ip "10.70.0.300" is not an IP address`}},
		{name: "IP status.ip not a string", provider: providerWithIP(fixtures.IP("liqo", "api-server-proxy", "10.95.0.1", map[string]any{"ip": int64(3)})),
			consumer: seedConsumer(), kind: ErrInvalidValue, says: []string{"status.ip is a int64"}},
		{name: "IP status.ipMappings not a map", provider: providerWithIP(fixtures.IP("liqo", "api-server-proxy", "10.95.0.1", map[string]any{"ipMappings": "10.70.0.2"})),
			consumer: seedConsumer(), kind: ErrInvalidValue, says: []string{"status.ipMappings is a string"}},
		{name: "IP status.ipMappings empty", provider: providerWithIP(fixtures.IP("liqo", "api-server-proxy", "10.95.0.1", map[string]any{"ipMappings": map[string]any{}})),
			consumer: seedConsumer(), kind: ErrStatusNotSet, says: []string{"no remapped address yet"}},
		{name: "Configuration CRD not served", provider: providerWithIP(seedIP), consumer: fakeCluster("cl01", false),
			kind: ErrNotServed, says: []string{"configurations.networking.liqo.io/v1beta1", "cl01"}},
		{name: "no provider cluster ID", provider: fakeCluster("cl02", true, seedIP), consumer: seedConsumer(),
			kind: ErrClusterID, says: []string{"app.kubernetes.io/name=clusterid-configmap", "--local-cluster-id"}},
		{name: "no Configuration", provider: providerWithIP(seedIP), consumer: fakeCluster("cl01", true),
			kind: ErrNoConfiguration, says: []string{"liqo.io/remote-cluster-id=" + providerID, "cl01", "--remote-cidr"}},
		{name: "several Configurations", provider: providerWithIP(seedIP),
			consumer: fakeCluster("cl01", true, seedConfiguration("10.70.0.0/16", "10.81.0.0/16"),
				fixtures.Configuration("stale", "cl02-old", providerID, fixtures.CIDRs{External: "10.70.0.0/16"}, nil)),
			kind: ErrSeveralConfigurations, says: []string{"2 Configurations", "stale/cl02-old", "liqo-tenant-cl02/cl02"}},
		{name: "Configuration status not set", provider: providerWithIP(seedIP),
			consumer: fakeCluster("cl01", true, fixtures.Configuration("t", "c", providerID, fixtures.CIDRs{External: "10.70.0.0/16"}, nil)),
			kind:     ErrStatusNotSet, says: []string{"Configuration t/c in cl01 has no status.remote.cidr yet"}},
		{name: "CIDR does not parse", provider: providerWithIP(seedIP), consumer: fakeCluster("cl01", true, seedConfiguration("10.70.0.0/16", []string{"10.81.0.0/33"})),
			kind: ErrInvalidValue, says: []string{`status.remote.cidr.external "10.81.0.0/33" is not a CIDR`}},
		{name: "CIDR of the wrong type", provider: providerWithIP(seedIP), consumer: fakeCluster("cl01", true, seedConfiguration(int64(7), "10.81.0.0/16")),
			kind: ErrInvalidValue, says: []string{"spec.remote.cidr.external is a int64"}},
		{name: "prefix lengths differ", provider: providerWithIP(seedIP), consumer: fakeCluster("cl01", true, seedConfiguration("10.70.0.0/16", "10.81.0.0/24")),
			kind: remap.ErrPrefixLengthMismatch, says: []string{"10.70.0.0/16", "10.81.0.0/24", "prefix lengths differ"}},
		{name: "--remote-cidr does not parse", provider: providerWithIP(seedIP), mutate: func(r *Request) { r.RemoteCIDR = "10.81.0.0" },
			kind: ErrInvalidValue, says: []string{`"10.81.0.0" is not a CIDR`}},
		{name: "--remote-cidr of another length", provider: providerWithIP(seedIP), mutate: func(r *Request) { r.RemoteCIDR = "10.81.0.0/24" },
			kind: remap.ErrPrefixLengthMismatch, says: []string{"--remote-cidr 10.81.0.0/24"}},
		{name: "no consumer", provider: providerWithIP(seedIP), says: []string{"--remote"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mutate := []func(*Request){}
			if tc.mutate != nil {
				mutate = append(mutate, tc.mutate)
			}
			res, err := resolve(t, tc.provider, tc.consumer, mutate...)
			if err == nil {
				t.Fatalf("no error; result %+v", res)
			}
			if tc.kind != nil && !errors.Is(err, tc.kind) {
				t.Errorf("err = %v, want kind %v", err, tc.kind)
			}
			for _, s := range tc.says {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("err = %q, want it to say %q", err, s)
				}
			}
		})
	}
}
