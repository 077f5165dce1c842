package plugin

import (
	"context"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/apiproxy/apiproxy/pkg/install"
	"github.com/apiproxy/apiproxy/test/harness"
)

// TestNodeIP against a real API server with kubeadm's default service range (10.96.0.0/12, the
// ServiceCIDR object "kubernetes") and a Node whose pod CIDR is 10.244.1.0/24:
//   - install refuses a --node-ip inside either range, naming the CIDR, where it was read and
//     --allow-node-ip-overlap, and creates nothing;
//   - --allow-node-ip-overlap installs with a warning (how an old install got 10.96.0.2);
//   - an upgrade without --node-ip keeps the installed address (and says so), with the webhook's
//     host alias following it; an explicit --node-ip moves it, with a warning about older pods;
//   - a fresh install without IP flags uses 169.254.20.11 and aliases the API server name to it.
func TestNodeIP(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a kube-apiserver")
	}
	cl := harness.Start(t, harness.Options{Name: "nodeip", ExtraArgs: map[string][]string{"service-cluster-ip-range": {"10.96.0.0/12"}}})
	kc := cl.Kubeconfig
	cs := cl.Clientset(t)
	ctx := context.Background()
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Spec: corev1.NodeSpec{PodCIDR: "10.244.1.0/24", PodCIDRs: []string{"10.244.1.0/24"}}}
	if _, err := cs.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	webhook := []string{"--apiserver-fqdn", "kubernetes.default.svc"}

	t.Run("refused inside the service or pod CIDR", func(t *testing.T) {
		for _, tc := range []struct{ ip, want string }{
			{"10.96.0.5", "--node-ip 10.96.0.5 lies inside the service CIDR 10.96.0.0/12 (ServiceCIDR kubernetes)"},
			{"10.244.1.7", "--node-ip 10.244.1.7 lies inside the pod CIDR 10.244.1.0/24 (pod CIDR of Node n1)"},
		} {
			_, errOut, err := runApiproxy(t, kc, "install", "--roles", "node", "--node-ip", tc.ip)
			if err == nil {
				t.Fatalf("install --node-ip %s succeeded:\n%s", tc.ip, errOut)
			}
			for _, w := range []string{tc.want, "--allow-node-ip-overlap", install.DefaultNodeIP} {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("--node-ip %s: the error lacks %q: %v", tc.ip, w, err)
				}
			}
		}
		if _, err := cs.AppsV1().DaemonSets(install.DefaultNamespace).Get(ctx, "apiproxy-node", metav1.GetOptions{}); err == nil {
			t.Error("a refused install created the DaemonSet")
		}
	})

	t.Run("--allow-node-ip-overlap installs with a warning", func(t *testing.T) {
		_, errOut, err := runApiproxy(t, kc, "install", "--roles", "node", "--node-ip", "10.96.0.2", "--allow-node-ip-overlap")
		if err != nil {
			t.Fatalf("install: %v\n%s", err, errOut)
		}
		if !strings.Contains(errOut, "Warning: --node-ip 10.96.0.2 lies inside the service CIDR 10.96.0.0/12") || !strings.Contains(errOut, "allowed by --allow-node-ip-overlap") {
			t.Errorf("stderr lacks the warning:\n%s", errOut)
		}
		if ip := installedNodeIP(t, cs, install.DefaultNamespace); ip != "10.96.0.2" {
			t.Errorf("DaemonSet node IP %s, want 10.96.0.2", ip)
		}
	})

	t.Run("an upgrade keeps the installed address", func(t *testing.T) {
		_, errOut, err := runApiproxy(t, kc, append([]string{"install", "--roles", "node,webhook"}, webhook...)...)
		if err != nil {
			t.Fatalf("install without --node-ip over an install with 10.96.0.2: %v\n%s", err, errOut)
		}
		for _, w := range []string{"keeping the node IP 10.96.0.2 of the installed daemonset apiproxy-system/apiproxy-node (the default is 169.254.20.11; pass --node-ip to change it)",
			"kept from the installed DaemonSet"} {
			if !strings.Contains(errOut, w) {
				t.Errorf("stderr lacks %q:\n%s", w, errOut)
			}
		}
		if ip := installedNodeIP(t, cs, install.DefaultNamespace); ip != "10.96.0.2" {
			t.Errorf("DaemonSet node IP %s, want 10.96.0.2 kept", ip)
		}
		if alias := webhookHostAlias(t, cs, install.DefaultNamespace); alias != "10.96.0.2" {
			t.Errorf("webhook --host-alias-ip %q, want the kept node IP 10.96.0.2", alias)
		}
	})

	t.Run("an explicit --node-ip moves it, with a warning", func(t *testing.T) {
		_, errOut, err := runApiproxy(t, kc, append([]string{"install", "--roles", "node,webhook", "--node-ip", install.DefaultNodeIP}, webhook...)...)
		if err != nil {
			t.Fatalf("install: %v\n%s", err, errOut)
		}
		if !strings.Contains(errOut, "Warning: moving the node IP from 10.96.0.2 to 169.254.20.11: pods created before this install reach the API server at 10.96.0.2") {
			t.Errorf("stderr lacks the moving warning:\n%s", errOut)
		}
		if ip := installedNodeIP(t, cs, install.DefaultNamespace); ip != install.DefaultNodeIP {
			t.Errorf("DaemonSet node IP %s, want %s", ip, install.DefaultNodeIP)
		}
	})

	t.Run("a fresh install without IP flags uses the link-local default", func(t *testing.T) {
		_, errOut, err := runApiproxy(t, kc, append([]string{"-n", "fresh", "install", "--roles", "node,webhook"}, webhook...)...)
		if err != nil {
			t.Fatalf("install: %v\n%s", err, errOut)
		}
		if strings.Contains(errOut, "node-ip") || strings.Contains(errOut, "node IP") {
			t.Errorf("unexpected note about the node IP:\n%s", errOut)
		}
		if ip := installedNodeIP(t, cs, "fresh"); ip != install.DefaultNodeIP {
			t.Errorf("DaemonSet node IP %s, want %s", ip, install.DefaultNodeIP)
		}
		if alias := webhookHostAlias(t, cs, "fresh"); alias != install.DefaultNodeIP {
			t.Errorf("webhook --host-alias-ip %q, want the node IP %s", alias, install.DefaultNodeIP)
		}
	})
}

// installedNodeIP is the --ip-address of the installed DaemonSet's node container.
func installedNodeIP(t *testing.T, cs kubernetes.Interface, namespace string) string {
	t.Helper()
	ds, err := cs.AppsV1().DaemonSets(namespace).Get(context.Background(), "apiproxy-node", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range ds.Spec.Template.Spec.Containers {
		if i := slices.Index(c.Args, "--ip-address"); c.Name == "node" && i >= 0 {
			return c.Args[i+1]
		}
	}
	t.Fatalf("no node container with --ip-address in %+v", ds.Spec.Template.Spec.Containers)
	return ""
}

// webhookHostAlias is the webhook's --host-alias-ip ("" when it has none).
func webhookHostAlias(t *testing.T, cs kubernetes.Interface, namespace string) string {
	t.Helper()
	d, err := cs.AppsV1().Deployments(namespace).Get(context.Background(), "apiproxy-webhook", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	args := d.Spec.Template.Spec.Containers[0].Args
	if i := slices.Index(args, "--host-alias-ip"); i >= 0 {
		return args[i+1]
	}
	return ""
}
