package plugin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"sigs.k8s.io/yaml"

	"github.com/apiproxy/apiproxy/pkg/liqo"
	fixtures "github.com/apiproxy/apiproxy/test/fixtures/liqo"
	"github.com/apiproxy/apiproxy/test/harness"
)

// getIPWorld is the state shared by the get-ip integration tests: the seed's provider cl02 and
// consumer cl01, plus "bare", a cluster without Liqo's CRDs, in one merged kubeconfig.
//
// cl02 holds several IP objects (one per --name) and cl01 several Configurations, each labelled with
// its own provider cluster ID (picked with --local-cluster-id), so one start of the API servers
// serves every case. cl01 and cl02 serve Liqo's own CRDs at one pinned version (liqo.Versions), or,
// for the shapes of Liqo's release candidates only, the legacy stand-ins.
type getIPWorld struct {
	kubeconfig       string
	cl01Kubeconfig   string
	cl01, cl02, bare *harness.Cluster
	// version is the Liqo release whose CRDs cl01 and cl02 serve; "" for the legacy stand-ins.
	version string
}

const (
	getIPProviderID = "cl02-cluster-id"
	getIPConsumerID = "cl01-cluster-id"
	// getIPLimitedUser may get the IP object api-server-proxy by name in cl02, but not list IPs.
	getIPLimitedUser = "ip-getter"
)

// startGetIPWorld starts the clusters with Liqo's CRDs at version and writes the objects Liqo's
// released CRDs accept, with the NetworkCIDRsConfigured condition where the version has it.
func startGetIPWorld(t *testing.T, version string) *getIPWorld {
	t.Helper()
	crds := func() []*apiextensionsv1.CustomResourceDefinition { return fixtures.MustCRDs(t, version) }
	cs := harness.StartClusters(t,
		harness.Options{Name: "cl01", CRDs: crds()},
		harness.Options{Name: "cl02", CRDs: crds()},
		harness.Options{Name: "bare"},
	)
	w := &getIPWorld{cl01: cs[0], cl02: cs[1], bare: cs[2], cl01Kubeconfig: cs[0].Kubeconfig, version: version}
	w.kubeconfig = harness.WriteMergedKubeconfig(t, w.cl01, w.cl02, w.bare)

	ctx := context.Background()
	provider, consumer := w.cl02.Dynamic(t), w.cl01.Dynamic(t)
	// Provider cl02: its cluster ID, and the IP objects.
	fixtures.Create(ctx, t, provider, fixtures.ClusterIDConfigMap("liqo", getIPProviderID))
	fixtures.Create(ctx, t, provider, fixtures.IP("liqo", "api-server-proxy", "10.95.245.141", fixtures.IPStatus("10.70.0.3", "10.70.0.0/16")))
	fixtures.Create(ctx, t, provider, fixtures.IP("liqo", "pending", "10.95.245.143", nil))
	fixtures.Create(ctx, t, provider, fixtures.IP("liqo", "outside", "10.95.245.144", fixtures.IPStatus("192.168.7.3", "192.168.7.0/24")))
	// A user allowed to get api-server-proxy by name only: RBAC's resourceNames cannot grant list.
	grantOnly(t, w.cl02, "liqo", getIPLimitedUser, rbacv1.PolicyRule{
		APIGroups: []string{"ipam.liqo.io"}, Resources: []string{"ips"}, ResourceNames: []string{"api-server-proxy"}, Verbs: []string{"get"},
	}, rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"get", "list"}})

	// Consumer cl01: its cluster ID, and the Configurations.
	fixtures.Create(ctx, t, consumer, fixtures.ClusterIDConfigMap("liqo", getIPConsumerID))
	list := func(s ...string) []string { return s }
	anHourAgo := time.Now().Add(-time.Hour)
	ready := func(u *unstructured.Unstructured) *unstructured.Unstructured {
		return fixtures.NetworkCIDRsConfigured(u, "True", "CIDRsRemapped", 1, anHourAgo)
	}
	for _, cfg := range []*unstructured.Unstructured{
		// The seed's peering, dual stack.
		ready(fixtures.Configuration("liqo-tenant-cl02", "cl02", getIPProviderID,
			fixtures.CIDRs{Pod: list("10.60.0.0/16"), External: list("10.70.0.0/16", "fd00:70::/64")},
			&fixtures.CIDRs{Pod: list("10.61.0.0/16"), External: list("10.81.0.0/16", "fd00:81::/64")})),
		ready(fixtures.Configuration("liqo-tenant-mismatch", "mismatch", "id-mismatch", fixtures.CIDRs{External: list("10.70.0.0/16")}, &fixtures.CIDRs{External: list("10.81.0.0/24")})),
		fixtures.Configuration("liqo-tenant-pending", "pending", "id-pending", fixtures.CIDRs{External: list("10.70.0.0/16")}, nil),
		ready(fixtures.Configuration("liqo-tenant-a", "twin-a", "id-several", fixtures.CIDRs{External: list("10.70.0.0/16")}, &fixtures.CIDRs{External: list("10.81.0.0/16")})),
		ready(fixtures.Configuration("liqo-tenant-b", "twin-b", "id-several", fixtures.CIDRs{External: list("10.70.0.0/16")}, &fixtures.CIDRs{External: list("10.82.0.0/16")})),
		// Liqo v1.2.0 is still remapping this peering: its CIDRs are not final.
		fixtures.NetworkCIDRsConfigured(fixtures.Configuration("liqo-tenant-remapping", "remapping", "id-cond-false",
			fixtures.CIDRs{External: list("10.70.0.0/16")}, &fixtures.CIDRs{External: list("10.84.0.0/16")}), "False", "Remapping", 1, anHourAgo),
		// Its condition was True, then the spec changed (generation 2) and Liqo has not caught up.
		ready(fixtures.Configuration("liqo-tenant-stale", "stale", "id-cond-stale",
			fixtures.CIDRs{External: list("10.70.0.0/16")}, &fixtures.CIDRs{External: list("10.85.0.0/16")})),
	} {
		fixtures.Create(ctx, t, consumer, cfg)
	}
	stale, err := consumer.Resource(fixtures.ConfigurationResource).Namespace("liqo-tenant-stale").Patch(ctx, "stale", types.MergePatchType,
		[]byte(`{"spec":{"remote":{"cidr":{"pod":["10.60.0.0/16"]}}}}`), metav1.PatchOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if stale.GetGeneration() != 2 {
		t.Fatalf("the stale Configuration is at generation %d, want 2", stale.GetGeneration())
	}
	return w
}

// grantOnly gives user exactly rules in namespace ns of c (a Role and its RoleBinding).
func grantOnly(t *testing.T, c *harness.Cluster, ns, user string, rules ...rbacv1.PolicyRule) {
	t.Helper()
	ctx := context.Background()
	cs := c.Clientset(t)
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: user}, Rules: rules}
	if _, err := cs.RbacV1().Roles(ns).Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rb := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: user},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: user},
		Subjects:   []rbacv1.Subject{{APIGroup: "rbac.authorization.k8s.io", Kind: "User", Name: user}},
	}
	if _, err := cs.RbacV1().RoleBindings(ns).Create(ctx, rb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// startLegacyGetIPWorld starts cl01 and cl02 with the legacy stand-in CRDs and writes the shapes of
// Liqo's v1.0.0 release candidates, which the released CRDs refuse or drop: status.ipMappings
// (rc.1, rc.2), CIDRs as single strings (rc.1-rc.3); and values no released CRD admits (an IPv6 IP
// object, a CIDR that does not parse), which get-ip must still report well.
func startLegacyGetIPWorld(t *testing.T) *getIPWorld {
	t.Helper()
	cs := harness.StartClusters(t,
		harness.Options{Name: "cl01", CRDs: fixtures.LegacyV100RC1to3CRDs()},
		harness.Options{Name: "cl02", CRDs: fixtures.LegacyV100RC1to3CRDs()},
	)
	w := &getIPWorld{cl01: cs[0], cl02: cs[1], cl01Kubeconfig: cs[0].Kubeconfig}
	w.kubeconfig = harness.WriteMergedKubeconfig(t, w.cl01, w.cl02)
	ctx := context.Background()
	provider, consumer := w.cl02.Dynamic(t), w.cl01.Dynamic(t)
	fixtures.Create(ctx, t, provider, fixtures.ClusterIDConfigMap("liqo", getIPProviderID))
	fixtures.Create(ctx, t, provider, fixtures.IP("liqo", "api-server-proxy", "10.95.245.141", fixtures.IPStatus("10.70.0.3", "10.70.0.0/16")))
	fixtures.Create(ctx, t, provider, fixtures.IP("liqo", "mappings", "10.95.245.142",
		fixtures.LegacyV100RC1to2IPMappingsStatus(map[string]string{getIPConsumerID: "10.70.0.2", "other-cluster": "10.70.9.9"})))
	// The seed's `kubectl get ip` line: one entry, for a cluster ID nobody passes.
	fixtures.Create(ctx, t, provider, fixtures.IP("liqo", "single", "10.95.245.141", fixtures.LegacyV100RC1to2IPMappingsStatus(map[string]string{"wild-frog": "10.70.0.2"})))
	fixtures.Create(ctx, t, provider, fixtures.IP("liqo", "v6", "fd00:96::1", fixtures.IPStatus("fd00:70::3", "fd00:70::/64")))

	fixtures.Create(ctx, t, consumer, fixtures.ClusterIDConfigMap("liqo", getIPConsumerID))
	for _, c := range []struct {
		ns, name, id string
		spec         fixtures.CIDRs
		status       *fixtures.CIDRs
	}{
		{"liqo-tenant-cl02", "cl02", getIPProviderID,
			fixtures.CIDRs{Pod: []string{"10.60.0.0/16"}, External: []string{"10.70.0.0/16", "fd00:70::/64"}},
			&fixtures.CIDRs{Pod: []string{"10.61.0.0/16"}, External: []string{"10.81.0.0/16", "fd00:81::/64"}}},
		{"liqo-tenant-str", "str", "id-string", fixtures.CIDRs{Pod: "10.60.0.0/16", External: "10.70.0.0/16"},
			&fixtures.CIDRs{Pod: "10.61.0.0/16", External: "10.82.0.0/16"}},
		{"liqo-tenant-bad", "bad", "id-badcidr", fixtures.CIDRs{External: "10.70.0.0/16"}, &fixtures.CIDRs{External: []string{"10.81.0.0/16x"}}},
	} {
		fixtures.Create(ctx, t, consumer, fixtures.Configuration(c.ns, c.name, c.id, c.spec, c.status))
	}
	return w
}

// run executes the real command tree in-process, as `kubectl apiproxy --kubeconfig K ARGS...`.
func (w *getIPWorld) run(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	streams, _, out, errOut := genericiooptions.NewTestIOStreams()
	root := NewRootCommand(streams)
	root.SetArgs(append([]string{"--kubeconfig", w.kubeconfig}, args...))
	err = root.ExecuteContext(t.Context())
	return out.String(), errOut.String(), err
}

// TestGetIPOnRealClusters runs get-ip against Liqo's own CRDs, once per pinned Liqo release.
func TestGetIPOnRealClusters(t *testing.T) {
	if testing.Short() {
		t.Skip("needs kube-apiservers: `make unit` (-short) leaves them to `make test`")
	}
	for _, v := range fixtures.Versions {
		t.Run("liqo-"+v, func(t *testing.T) { testGetIP(t, startGetIPWorld(t, v)) })
	}
}

func testGetIP(t *testing.T, w *getIPWorld) {
	seed := []string{"--context", "cl02", "get-ip", "--remote", "cl01"}

	t.Run("default output is the final IP alone", func(t *testing.T) {
		out, errOut, err := w.run(t, seed...)
		if err != nil || out != "10.81.0.3\n" || errOut != "using IP liqo/api-server-proxy in cl02 (default name: no IP labelled app.kubernetes.io/part-of=apiproxy): Liqo's own API server proxy (not installed by kubectl apiproxy)\n" {
			t.Fatalf("stdout %q, stderr %q, err %v; want 10.81.0.3 alone, and on stderr which IP object and proxy", out, errOut, err)
		}
	})

	t.Run("json shows every step", func(t *testing.T) {
		out, _, err := w.run(t, append(seed, "-o", "json")...)
		if err != nil {
			t.Fatal(err)
		}
		var res liqo.Result
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			t.Fatalf("not JSON: %v\n%s", err, out)
		}
		checkSeedResult(t, &res, w.version)
		// The raw document uses the documented field names.
		for _, key := range []string{`"finalIP": "10.81.0.3"`, `"proxyURL": "http://10.81.0.3:8118"`, `"statusShape": "status.ip"`, `"localIP": "10.95.245.141"`,
			`"proxy": "Liqo's own API server proxy (not installed by kubectl apiproxy)"`, `"ipSelectedBy": "default name`} {
			if !strings.Contains(out, key) {
				t.Errorf("JSON lacks %s:\n%s", key, out)
			}
		}
	})

	t.Run("yaml shows every step", func(t *testing.T) {
		out, _, err := w.run(t, append(seed, "-o", "yaml")...)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("-o yaml:\n%s", out)
		var res liqo.Result
		if err := yaml.UnmarshalStrict([]byte(out), &res); err != nil {
			t.Fatalf("not YAML of a Result: %v\n%s", err, out)
		}
		checkSeedResult(t, &res, w.version)
		if !strings.Contains(out, "finalIP: 10.81.0.3\n") {
			t.Errorf("YAML lacks finalIP:\n%s", out)
		}
	})

	t.Run("wide is a table", func(t *testing.T) {
		out, _, err := w.run(t, append(seed, "-o", "wide")...)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 2 {
			t.Fatalf("want a header and one row:\n%s", out)
		}
		header, row := strings.Fields(lines[0]), strings.Fields(lines[1])
		wantHeader := "NAME PROXY LOCAL IP REMAPPED IP CONSUMER REMAPPED EXT CIDR FINAL IP PROXY URL"
		wantRow := "api-server-proxy liqo 10.95.245.141 10.70.0.3 cl01 10.81.0.0/16 10.81.0.3 http://10.81.0.3:8118"
		if strings.Join(header, " ") != wantHeader || strings.Join(row, " ") != wantRow {
			t.Errorf("table:\n%s\nwant columns %q and values %q", out, wantHeader, wantRow)
		}
	})

	t.Run("--remote-cidr skips the consumer", func(t *testing.T) {
		out, _, err := w.run(t, "--context", "cl02", "get-ip", "--remote-cidr", "10.83.0.0/16", "--proxy-port", "9443", "-o", "wide")
		if err != nil || !strings.Contains(out, "10.83.0.3") || !strings.Contains(out, "http://10.83.0.3:9443") {
			t.Errorf("stdout %q, err %v; want 10.83.0.3 on port 9443", out, err)
		}
	})

	t.Run("--remote-kubeconfig reads the consumer from another file", func(t *testing.T) {
		out, _, err := w.run(t, "--context", "cl02", "get-ip", "--remote-kubeconfig", w.cl01Kubeconfig, "--remote", "cl01")
		if err != nil || out != "10.81.0.3\n" {
			t.Errorf("stdout %q, err %v; want 10.81.0.3", out, err)
		}
	})

	t.Run("--remote-kubeconfig alone uses that file's current context", func(t *testing.T) {
		out, _, err := w.run(t, "--context", "cl02", "get-ip", "--remote-kubeconfig", w.cl01Kubeconfig, "-o", "wide")
		if err != nil || !strings.Contains(out, " cl01 ") || !strings.Contains(out, "10.81.0.3") {
			t.Errorf("stdout %q, err %v; want consumer cl01 and 10.81.0.3", out, err)
		}
	})

	t.Run("outside every CIDR: unchanged, with a warning on stderr", func(t *testing.T) {
		out, errOut, err := w.run(t, append(seed, "--name", "outside")...)
		if err != nil || out != "192.168.7.3\n" {
			t.Errorf("stdout %q, err %v; want the address unchanged", out, err)
		}
		if !strings.Contains(errOut, "Warning:") || !strings.Contains(errOut, "UNCHANGED") || !strings.Contains(errOut, "liqo-tenant-cl02/cl02") {
			t.Errorf("stderr %q, want a loud warning naming the Configuration", errOut)
		}
	})

	for _, tc := range []struct {
		name string
		args []string
		says []string
	}{
		{"unknown --remote context", []string{"--context", "cl02", "get-ip", "--remote", "cl99"},
			[]string{`context "cl99"`, "available contexts: bare, cl01, cl02"}},
		{"unknown current context", []string{"--context", "nope", "get-ip", "--remote", "cl01"},
			[]string{`context "nope"`, "available contexts: bare, cl01, cl02"}},
		{"IP CRD not served", []string{"--context", "bare", "get-ip", "--remote", "cl01"},
			[]string{"ips.ipam.liqo.io/v1alpha1", "not served by bare", "is Liqo networking installed?"}},
		{"Configuration CRD not served", []string{"--context", "cl02", "get-ip", "--remote", "bare"},
			[]string{"configurations.networking.liqo.io/v1beta1", "not served by bare", "is Liqo networking installed?"}},
		{"IP object missing", append(seed, "--name", "nope"),
			[]string{"IP liqo/nope not found in the provider cl02", "--name"}},
		{"IP status not set", append(seed, "--name", "pending"),
			[]string{"IP liqo/pending in cl02 has no remapped address yet"}},
		{"IP object missing in another --liqo-namespace", append(seed, "--liqo-namespace", "elsewhere", "--name", "x"),
			[]string{"IP elsewhere/x not found"}},
		{"no Configuration", append(seed, "--local-cluster-id", "id-none"),
			[]string{"no Configuration labelled liqo.io/remote-cluster-id=id-none in the consumer cl01", "--local-cluster-id"}},
		{"several Configurations", append(seed, "--local-cluster-id", "id-several"),
			[]string{"2 Configurations labelled liqo.io/remote-cluster-id=id-several", "liqo-tenant-a/twin-a", "liqo-tenant-b/twin-b"}},
		{"Configuration status not set", append(seed, "--local-cluster-id", "id-pending"),
			[]string{"Configuration liqo-tenant-pending/pending in cl01 has no status.remote.cidr yet"}},
		{"prefix lengths differ", append(seed, "--local-cluster-id", "id-mismatch"),
			[]string{"Configuration liqo-tenant-mismatch/mismatch", "10.70.0.0/16", "10.81.0.0/24", "prefix lengths differ"}},
		{"bad --remote-cidr", []string{"--context", "cl02", "get-ip", "--remote-cidr", "10.83.0.0"},
			[]string{`--remote-cidr "10.83.0.0" is not a CIDR`}},
		{"no consumer named", []string{"--context", "cl02", "get-ip"}, []string{"--remote CONTEXT", "--remote-cidr"}},
		{"bad output format", append(seed, "-o", "xml"), []string{`"xml"`}},
		{"bad --proxy-port", append(seed, "--proxy-port", "0"), []string{"--proxy-port 0 is out of range"}},
		{"--remote-cidr of another size", []string{"--context", "cl02", "get-ip", "--remote-cidr", "10.83.0.0/24"},
			[]string{"into --remote-cidr 10.83.0.0/24", "prefix lengths differ", "give a /16 CIDR"}},
		{"--remote-kubeconfig lacks the --remote context", []string{"--context", "cl02", "get-ip", "--remote-kubeconfig", "REMOTE", "--remote", "cl02"},
			[]string{`context "cl02" (--remote) not found in`, "available contexts: cl01)"}},
	} {
		t.Run("error/"+tc.name, func(t *testing.T) {
			args := slices.Clone(tc.args)
			for i := range args {
				if args[i] == "REMOTE" {
					args[i] = w.cl01Kubeconfig
				}
			}
			out, _, err := w.run(t, args...)
			if err == nil {
				t.Fatalf("no error; stdout %q", out)
			}
			t.Logf("error: %v", err) // shown with -v: what users read
			if out != "" {
				t.Errorf("stdout %q, want nothing on error", out)
			}
			for _, s := range tc.says {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q, want it to say %q", err, s)
				}
			}
		})
	}

	t.Run("cluster ID ConfigMap missing", func(t *testing.T) {
		// The provider's ConfigMap is the one read when no --local-cluster-id is given.
		fixtures.Delete(t.Context(), t, w.cl02.Dynamic(t), fixtures.ClusterIDConfigMap("liqo", getIPProviderID))
		defer fixtures.Create(context.Background(), t, w.cl02.Dynamic(t), fixtures.ClusterIDConfigMap("liqo", getIPProviderID))
		_, _, err := w.run(t, seed...)
		if err == nil || !strings.Contains(err.Error(), "app.kubernetes.io/name=clusterid-configmap") || !strings.Contains(err.Error(), "--local-cluster-id") {
			t.Errorf("err = %v, want it to name the ConfigMap label and --local-cluster-id", err)
		}
		out, _, err := w.run(t, append(seed, "--local-cluster-id", getIPProviderID)...)
		if err != nil || out != "10.81.0.3\n" {
			t.Errorf("with --local-cluster-id: %q, %v", out, err)
		}
	})

	t.Run("Liqo's CRDs refuse the release candidates' shapes", func(t *testing.T) {
		// Why those shapes live in TestGetIPLegacyRCShapes only: this Liqo release cannot hold them.
		ctx, dyn := t.Context(), w.cl02.Dynamic(t)
		if _, err := fixtures.CreateObject(ctx, dyn, fixtures.IP("liqo", "v6", "fd00:96::1", nil)); err == nil {
			t.Error("an IPv6 IP object was accepted")
		}
		got, err := fixtures.CreateObject(ctx, dyn, fixtures.IP("liqo", "mappings", "10.95.245.142", fixtures.LegacyV100RC1to2IPMappingsStatus(map[string]string{"x": "10.70.0.2"})))
		if err != nil {
			t.Fatal(err)
		}
		if _, found, _ := unstructured.NestedFieldNoCopy(got.Object, "status", "ipMappings"); found {
			t.Errorf("status.ipMappings kept: %v", got.Object["status"])
		}
		fixtures.Delete(ctx, t, dyn, got)
		_, err = fixtures.CreateObject(ctx, w.cl01.Dynamic(t), fixtures.Configuration("liqo-tenant-str", "str", "id-string", fixtures.CIDRs{External: "10.70.0.0/16"}, nil))
		if err == nil {
			t.Error("a Configuration with a CIDR as a single string was accepted")
		}
	})

	// Liqo's readiness rule, as liqoctl applies it: v1.2.0 writes the condition; v1.0.0's CRD has
	// no conditions and drops it, so the same Configurations are used as they are.
	for _, tc := range []struct {
		name, id, final string
		says            []string
	}{
		{"condition False", "id-cond-false", "10.84.0.3",
			[]string{"Configuration liqo-tenant-remapping/remapping in cl01 is not ready", "condition NetworkCIDRsConfigured is False (reason Remapping) since 1h", "--ignore-liqo-conditions"}},
		{"condition stale", "id-cond-stale", "10.85.0.3",
			[]string{"Configuration liqo-tenant-stale/stale in cl01 is not ready", "observed at generation 1 but the Configuration is at generation 2 (stale)", "--ignore-liqo-conditions"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append(slices.Clone(seed), "--local-cluster-id", tc.id)
			out, errOut, err := w.run(t, args...)
			if w.version == fixtures.V1_0_0 {
				if err != nil || out != tc.final+"\n" || strings.Contains(errOut, "Warning") {
					t.Fatalf("Liqo v1.0.0 (no conditions): stdout %q, stderr %q, err %v; want %s without a warning", out, errOut, err, tc.final)
				}
				return
			}
			if err == nil || out != "" {
				t.Fatalf("stdout %q, err %v; want an error and nothing on stdout", out, err)
			}
			t.Logf("error: %v", err)
			for _, s := range tc.says {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q, want it to say %q", err, s)
				}
			}
			out, errOut, err = w.run(t, append(args, "--ignore-liqo-conditions")...)
			if err != nil || out != tc.final+"\n" || !strings.Contains(errOut, "Warning:") || !strings.Contains(errOut, "--ignore-liqo-conditions") {
				t.Errorf("--ignore-liqo-conditions: stdout %q, stderr %q, err %v; want %s and a warning", out, errOut, err, tc.final)
			}
			// connect applies the same rule. With --proxy-token it never dials the proxy to print
			// the kubeconfig: no traffic leaves this machine.
			connectArgs := []string{"--context", "cl02", "connect", "--remote", "cl01", "--local-cluster-id", tc.id, "--print-kubeconfig", "--proxy-token", "t"}
			if out, _, err := w.run(t, connectArgs...); err == nil || !strings.Contains(err.Error(), tc.says[0]) || out != "" {
				t.Errorf("connect: err %v, stdout %q; want the same error as get-ip", err, out)
			}
			out, errOut, err = w.run(t, append(connectArgs, "--ignore-liqo-conditions")...)
			if err != nil || !strings.Contains(out, "@"+tc.final+":8118\n") || !strings.Contains(errOut, "Warning:") {
				t.Errorf("connect --ignore-liqo-conditions: err %v, stderr %q; want a kubeconfig with proxy-url to %s:8118 (got it: %v)", err, errOut, tc.final, strings.Contains(out, tc.final))
			}
		})
	}

	t.Run("may get the IP object but not list IPs: the default name, with a warning", func(t *testing.T) {
		out, errOut, err := w.run(t, append([]string{"--as", getIPLimitedUser}, seed...)...)
		if err != nil || out != "10.81.0.3\n" {
			t.Fatalf("stdout %q, stderr %q, err %v; want 10.81.0.3", out, errOut, err)
		}
		warnings := 0
		for _, l := range strings.Split(errOut, "\n") {
			if strings.HasPrefix(l, "Warning:") {
				warnings++
			}
		}
		if warnings != 1 || !strings.Contains(errOut, "Warning: you may not list IP objects in namespace liqo of cl02") || !strings.Contains(errOut, "--name") {
			t.Errorf("stderr %q, want one warning line saying listing is forbidden and naming --name", errOut)
		}
		// Without the get permission either, the Forbidden error stays.
		_, _, err = w.run(t, append([]string{"--as", getIPLimitedUser}, append(seed, "--name", "outside")...)...)
		if err == nil || !strings.Contains(err.Error(), "forbidden") {
			t.Errorf("--name outside: err %v, want forbidden", err)
		}
	})

	t.Run("binary", func(t *testing.T) {
		bin := harness.Binary(t, "./cmd/kubectl-apiproxy")
		runBin := func(args ...string) (string, string, int) {
			cmd := exec.CommandContext(t.Context(), bin, append([]string{"--kubeconfig", w.kubeconfig}, args...)...)
			cmd.Env = append(os.Environ(), "KUBECONFIG=")
			var o, e bytes.Buffer
			cmd.Stdout, cmd.Stderr = &o, &e
			err := cmd.Run()
			code := 0
			var exit *exec.ExitError
			if errors.As(err, &exit) {
				code = exit.ExitCode()
			} else if err != nil {
				t.Fatalf("running %s: %v", bin, err)
			}
			return o.String(), e.String(), code
		}
		if out, errOut, code := runBin(seed...); code != 0 || out != "10.81.0.3\n" || !strings.HasPrefix(errOut, "using IP liqo/api-server-proxy") {
			t.Errorf("success: exit %d, stdout %q, stderr %q; want 0, the IP alone, the IP object used", code, out, errOut)
		}
		if out, errOut, code := runBin(append(seed, "--name", "nope")...); code == 0 || out != "" || !strings.Contains(errOut, "error: IP liqo/nope not found") {
			t.Errorf("error: exit %d, stdout %q, stderr %q; want non-zero, nothing, the error", code, out, errOut)
		}
		if out, errOut, code := runBin(append(seed, "--name", "outside")...); code != 0 || out != "192.168.7.3\n" || !strings.Contains(errOut, "Warning:") {
			t.Errorf("warning: exit %d, stdout %q, stderr %q; want 0, the IP alone, a warning", code, out, errOut)
		}
	})
}

// TestGetIPLegacyRCShapes runs get-ip on the shapes of Liqo's v1.0.0 release candidates, which no
// released CRD holds (see startLegacyGetIPWorld): on the legacy stand-in CRDs.
func TestGetIPLegacyRCShapes(t *testing.T) {
	if testing.Short() {
		t.Skip("needs kube-apiservers: `make unit` (-short) leaves them to `make test`")
	}
	w := startLegacyGetIPWorld(t)
	seed := []string{"--context", "cl02", "get-ip", "--remote", "cl01"}

	t.Run("ipMappings shape picks the consumer's entry", func(t *testing.T) {
		out, _, err := w.run(t, append(seed, "--name", "mappings", "-o", "json")...)
		if err != nil {
			t.Fatal(err)
		}
		var res liqo.Result
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			t.Fatal(err)
		}
		if res.StatusShape != "status.ipMappings" || res.ConsumerClusterID != getIPConsumerID || res.RemappedIP.String() != "10.70.0.2" || res.FinalIP.String() != "10.81.0.2" {
			t.Errorf("got shape %s, consumer ID %s, remapped %s, final %s; want the cl01 entry 10.70.0.2 -> 10.81.0.2",
				res.StatusShape, res.ConsumerClusterID, res.RemappedIP, res.FinalIP)
		}
		if !strings.Contains(res.ConsumerClusterIDSource, "liqo-clusterid-configmap in cl01") {
			t.Errorf("consumer ID source %q, want cl01's ConfigMap", res.ConsumerClusterIDSource)
		}
		out, _, err = w.run(t, append(seed, "--name", "mappings", "--remote-cluster-id", "other-cluster")...)
		if err != nil || out != "10.81.9.9\n" {
			t.Errorf("--remote-cluster-id other-cluster: %q, %v; want 10.81.9.9", out, err)
		}
	})

	t.Run("string CIDRs of the rc versions", func(t *testing.T) {
		out, _, err := w.run(t, append(seed, "--local-cluster-id", "id-string")...)
		if err != nil || out != "10.82.0.3\n" {
			t.Errorf("stdout %q, err %v; want 10.82.0.3", out, err)
		}
	})

	t.Run("IPv6 through the second (dual-stack) CIDR", func(t *testing.T) {
		out, _, err := w.run(t, append(seed, "--name", "v6", "-o", "wide")...)
		if err != nil || !strings.Contains(out, "fd00:81::3") || !strings.Contains(out, "http://[fd00:81::3]:8118") {
			t.Errorf("stdout %q, err %v; want fd00:81::3 and its bracketed URL", out, err)
		}
	})

	t.Run("single ipMappings entry and no cluster ID: used, and said so", func(t *testing.T) {
		out, errOut, err := w.run(t, "--context", "cl02", "get-ip", "--name", "single", "--remote-cidr", "10.81.0.0/16")
		if err != nil || out != "10.81.0.2\n" {
			t.Errorf("stdout %q, err %v; want 10.81.0.2", out, err)
		}
		if !strings.Contains(errOut, "Warning:") || !strings.Contains(errOut, `only status.ipMappings entry of IP liqo/single in cl02, "wild-frog"`) {
			t.Errorf("stderr %q, want a warning naming the entry used", errOut)
		}
	})

	for _, tc := range []struct {
		name string
		args []string
		says []string
	}{
		{"CIDR does not parse", append(seed, "--local-cluster-id", "id-badcidr"),
			[]string{"Configuration liqo-tenant-bad/bad", `"10.81.0.0/16x" is not a CIDR`}},
		{"consumer cluster ID not in ipMappings", append(seed, "--name", "mappings", "--remote-cluster-id", "nobody"),
			[]string{`"nobody"`, "other-cluster", "--remote-cluster-id"}},
	} {
		t.Run("error/"+tc.name, func(t *testing.T) {
			_, _, err := w.run(t, tc.args...)
			if err == nil {
				t.Fatal("no error")
			}
			for _, s := range tc.says {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q, want it to say %q", err, s)
				}
			}
		})
	}
}

// checkSeedResult checks the steps of the seed's walk-through as -o json and -o yaml report them.
func checkSeedResult(t *testing.T, res *liqo.Result, version string) {
	t.Helper()
	// Liqo v1.2.0 marks the seed's Configuration ready; v1.0.0's CRD has no conditions.
	if c := res.Condition; version == fixtures.V1_2_0 && (c == nil || !c.Ready || c.Status != "True" || c.Generation != 1) ||
		version == fixtures.V1_0_0 && c != nil {
		t.Errorf("Liqo %s: condition %+v", version, c)
	}
	if res.Provider != "cl02" || res.Consumer != "cl01" || res.IP.Namespace != "liqo" || res.IP.Name != "api-server-proxy" {
		t.Errorf("clusters/object: %+v", res)
	}
	if res.LocalIP != "10.95.245.141" || res.RemappedIP.String() != "10.70.0.3" || res.RemappedCIDR != "10.70.0.0/16" || res.StatusShape != "status.ip" {
		t.Errorf("IP steps: local %s remapped %s cidr %s shape %s", res.LocalIP, res.RemappedIP, res.RemappedCIDR, res.StatusShape)
	}
	if res.ProviderClusterID != getIPProviderID || res.Configuration == nil || res.Configuration.String() != "liqo-tenant-cl02/cl02" {
		t.Errorf("configuration steps: provider ID %s, configuration %v", res.ProviderClusterID, res.Configuration)
	}
	if res.StatusCIDRs == nil || len(res.StatusCIDRs.External) != 2 || res.StatusCIDRs.External[0] != "10.81.0.0/16" ||
		res.SpecCIDRs == nil || res.SpecCIDRs.External[0] != "10.70.0.0/16" {
		t.Errorf("CIDRs: spec %+v status %+v", res.SpecCIDRs, res.StatusCIDRs)
	}
	if res.Matched != "external" || res.From.String() != "10.70.0.0/16" || res.To.String() != "10.81.0.0/16" {
		t.Errorf("remap: %s %s -> %s", res.Matched, res.From, res.To)
	}
	if res.FinalIP.String() != "10.81.0.3" || res.ProxyURL != "http://10.81.0.3:8118" || len(res.Warnings) != 0 {
		t.Errorf("final %s url %s warnings %v", res.FinalIP, res.ProxyURL, res.Warnings)
	}
}
