package install

import (
	"context"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	fakedynamic "k8s.io/client-go/dynamic/fake"
)

// Without ServiceCIDR objects (older clusters) the range is assumed around the kubernetes Service's
// address, and the warning says it is an assumption and where it came from. (The ServiceCIDR and
// pod CIDR paths run against a real API server in pkg/cmd/plugin.)
func TestClusterRangesFallback(t *testing.T) {
	svc := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Service",
		"metadata": map[string]any{"name": "kubernetes", "namespace": "default"},
		"spec":     map[string]any{"clusterIP": "10.96.0.1", "clusterIPs": []any{"10.96.0.1"}}}}
	dyn := fakedynamic.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{
		serviceCIDRResource: "ServiceCIDRList", nodeResource: "NodeList", serviceResource: "ServiceList"}, svc)
	ranges, err := ClusterRanges(context.Background(), &Client{Dynamic: dyn})
	if err != nil {
		t.Fatal(err)
	}
	msgs := NodeIPCollisions("10.96.0.2", ranges)
	if len(msgs) != 1 || !strings.Contains(msgs[0], "10.96.0.0/16") || !strings.Contains(msgs[0], "assumed around Service default/kubernetes 10.96.0.1") {
		t.Fatalf("ranges %+v, messages %q", ranges, msgs)
	}
	if msgs := NodeIPCollisions(SafeNodeIPExample, ranges); len(msgs) != 0 {
		t.Errorf("the suggested address collides: %q", msgs)
	}
}

// With the node and webhook roles together and no --host-alias-ip, pods alias the API server name
// to the node IP (the default one, or the one given); an explicit --host-alias-ip, even "", wins, and
// the webhook alone gets no alias.
func TestDefaultHostAlias(t *testing.T) {
	for _, tc := range []struct {
		name  string
		edit  func(*Options)
		alias string
	}{
		{"node and webhook", func(*Options) {}, DefaultNodeIP},
		{"node and webhook, --node-ip", func(o *Options) { o.NodeIP, o.NodeIPSet = "169.254.20.12", true }, "169.254.20.12"},
		{"explicit alias", func(o *Options) { o.HostAliasIP, o.HostAliasIPSet = "10.1.2.3", true }, "10.1.2.3"},
		{"explicitly none", func(o *Options) { o.HostAliasIPSet = true }, ""},
		{"webhook alone", func(o *Options) { o.Roles = []Role{RoleWebhook} }, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := DefaultOptions()
			o.Roles, o.APIServerFQDN = AllRoles, "kubernetes.default.svc"
			tc.edit(&o)
			var d appsv1.Deployment
			find(t, renderAll(t, o), "Deployment", "apiproxy-webhook", &d)
			args := d.Spec.Template.Spec.Containers[0].Args
			i := slices.Index(args, "--host-alias-ip")
			switch {
			case tc.alias == "" && i >= 0:
				t.Errorf("webhook args %v: want no --host-alias-ip", args)
			case tc.alias != "" && (i < 0 || args[i+1] != tc.alias):
				t.Errorf("webhook args %v: want --host-alias-ip %s", args, tc.alias)
			}
		})
	}
}
