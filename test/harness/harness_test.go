package harness_test

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/apiproxy/apiproxy/test/harness"
)

// Two independent clusters: a namespace created in each, through the merged kubeconfig a user would
// have, is visible only in its own cluster.
func TestTwoIndependentClusters(t *testing.T) {
	clusters := harness.StartClusters(t, harness.Options{Name: "cl01"}, harness.Options{Name: "cl02", Aggregation: true})
	merged := harness.WriteMergedKubeconfig(t, clusters...)
	ctx := context.Background()

	clientFor := func(contextName string) kubernetes.Interface {
		cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
			&clientcmd.ClientConfigLoadingRules{ExplicitPath: merged},
			&clientcmd.ConfigOverrides{CurrentContext: contextName}).ClientConfig()
		if err != nil {
			t.Fatalf("context %s: %v", contextName, err)
		}
		return kubernetes.NewForConfigOrDie(cfg)
	}
	for _, c := range clusters {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "only-in-" + c.Name}}
		if _, err := clientFor(c.Name).CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create namespace in %s: %v", c.Name, err)
		}
	}
	for _, c := range clusters {
		cs := clientFor(c.Name)
		for _, other := range clusters {
			_, err := cs.CoreV1().Namespaces().Get(ctx, "only-in-"+other.Name, metav1.GetOptions{})
			switch {
			case other.Name == c.Name && err != nil:
				t.Errorf("%s: own namespace missing: %v", c.Name, err)
			case other.Name != c.Name && !apierrors.IsNotFound(err):
				t.Errorf("%s: sees %s's namespace (err=%v): clusters are not independent", c.Name, other.Name, err)
			}
		}
	}

	// The harness-built kubectl works with the per-cluster kubeconfig.
	out, stderr, err := harness.RunKubectl(ctx, t, clusters[1].Kubeconfig, "get", "ns", "only-in-cl02", "-o", "name")
	if err != nil || out != "namespace/only-in-cl02\n" {
		t.Fatalf("kubectl get ns: out=%q stderr=%q err=%v", out, stderr, err)
	}

	// The aggregation layer is configured on cl02 only: the API server publishes the front-proxy CA
	// in kube-system/extension-apiserver-authentication for aggregated servers to trust.
	for i, c := range clusters {
		cm, err := c.Clientset(t).CoreV1().ConfigMaps("kube-system").Get(ctx, "extension-apiserver-authentication", metav1.GetOptions{})
		if err != nil {
			t.Fatalf("%s: extension-apiserver-authentication: %v", c.Name, err)
		}
		_, has := cm.Data["requestheader-client-ca-file"]
		if want := i == 1; has != want {
			t.Errorf("%s: requestheader CA published = %v, want %v", c.Name, has, want)
		}
	}
}
