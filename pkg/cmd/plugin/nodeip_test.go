package plugin

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/apiproxy/apiproxy/test/harness"
)

// TestNodeIPCollision: install --roles node warns when --node-ip lies inside the cluster's service
// CIDR (the API server's ServiceCIDR object; this test server's range is 10.0.0.0/24) or a Node's
// pod CIDR, naming the CIDR and where it was read; a link-local address passes silently.
func TestNodeIPCollision(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a kube-apiserver")
	}
	cl := harness.Start(t, harness.Options{Name: "nodeip"})
	kc := cl.Kubeconfig
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Spec: corev1.NodeSpec{PodCIDR: "10.244.1.0/24", PodCIDRs: []string{"10.244.1.0/24"}}}
	if _, err := cl.Clientset(t).CoreV1().Nodes().Create(context.Background(), node, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		ip   string
		want []string
	}{
		{"10.0.0.50", []string{"--node-ip 10.0.0.50 lies inside the service CIDR 10.0.0.0/24 (ServiceCIDR kubernetes)", "169.254.20.11"}},
		{"10.244.1.7", []string{"--node-ip 10.244.1.7 lies inside the pod CIDR 10.244.1.0/24 (pod CIDR of Node n1)"}},
		{"169.254.20.11", nil},
	} {
		_, errOut, err := runApiproxy(t, kc, "install", "--roles", "node", "--node-ip", tc.ip)
		if err != nil {
			t.Fatalf("install --node-ip %s: %v\n%s", tc.ip, err, errOut)
		}
		for _, w := range tc.want {
			if !strings.Contains(errOut, w) {
				t.Errorf("--node-ip %s: stderr lacks %q:\n%s", tc.ip, w, errOut)
			}
		}
		if tc.want == nil && strings.Contains(errOut, "node-ip") {
			t.Errorf("--node-ip %s: unexpected warning:\n%s", tc.ip, errOut)
		}
	}
}
