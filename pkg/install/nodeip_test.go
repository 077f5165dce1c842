package install

import (
	"context"
	"strings"
	"testing"

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
