package plugin

import (
	"context"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/apiproxy/apiproxy/pkg/install"
	"github.com/apiproxy/apiproxy/test/harness"
)

// A CNI with its own IPAM gives pods addresses outside the Nodes' .spec.podCIDRs. With a
// NetworkPolicy ("this namespace" admitted), the proxy's --allow-source must hold the pods' real
// ranges, or the agent resets this cluster's own pods: install refuses, naming a pod and
// --cluster-pod-cidr, and with --cluster-pod-cidr renders those ranges instead of the Nodes'.
func TestInstallPodCIDRsFollowThePods(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a kube-apiserver")
	}
	cl := harness.Start(t, harness.Options{Name: "podcidr"})
	kc := cl.Kubeconfig
	ctx := context.Background()
	cs := cl.Clientset(t)
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Spec: corev1.NodeSpec{PodCIDR: "10.244.0.0/24", PodCIDRs: []string{"10.244.0.0/24"}}}
	if _, err := cs.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	addPod := func(name, ip string) {
		t.Helper()
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
			Spec: corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{Name: "c", Image: "example.invalid/c"}}}}
		got, err := cs.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		got.Status.PodIP, got.Status.PodIPs = ip, []corev1.PodIP{{IP: ip}}
		if _, err := cs.CoreV1().Pods("default").UpdateStatus(ctx, got, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	proxyAllowSources := func() []string {
		t.Helper()
		d, err := cs.AppsV1().Deployments(install.DefaultNamespace).Get(ctx, "apiproxy-proxy", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		args := d.Spec.Template.Spec.Containers[0].Args
		for i, a := range args {
			if a == "--allow-source" && i+1 < len(args) {
				out = append(out, args[i+1])
			}
		}
		return out
	}

	// Pods inside the Nodes' ranges: the Nodes' ranges are admitted.
	addPod("inside", "10.244.0.7")
	if _, errOut, err := runApiproxy(t, kc, "install", "--network-policy=true"); err != nil {
		t.Fatalf("install --network-policy=true: %v\n%s", err, errOut)
	}
	if got := proxyAllowSources(); !slices.Contains(got, "10.244.0.0/24") {
		t.Fatalf("proxy --allow-source %v: want the Node's pod CIDR", got)
	}

	// A pod from the CNI's own pool (Calico's default 192.168.0.0/16): refused, with the way out.
	addPod("calico-pool", "192.168.13.4")
	_, errOut, err := runApiproxy(t, kc, "install", "--network-policy=true")
	if err == nil || !strings.Contains(err.Error(), "default/calico-pool (192.168.13.4)") || !strings.Contains(err.Error(), "--cluster-pod-cidr") {
		t.Fatalf("install with a pod outside the Nodes' pod CIDRs: %v, want a refusal naming the pod and --cluster-pod-cidr\n%s", err, errOut)
	}

	// The user states the CNI's ranges: those are rendered, the Nodes' are not.
	if _, errOut, err := runApiproxy(t, kc, "install", "--network-policy=true", "--cluster-pod-cidr", "192.168.0.0/16", "--cluster-pod-cidr", "10.244.0.0/16"); err != nil {
		t.Fatalf("install --cluster-pod-cidr: %v\n%s", err, errOut)
	}
	got := proxyAllowSources()
	if !slices.Contains(got, "192.168.0.0/16") || !slices.Contains(got, "10.244.0.0/16") || slices.Contains(got, "10.244.0.0/24") {
		t.Errorf("proxy --allow-source %v: want the --cluster-pod-cidr ranges only", got)
	}
	if _, errOut, err := runApiproxy(t, kc, "install", "--network-policy=true", "--cluster-pod-cidr", "192.168.0.0"); err == nil || !strings.Contains(err.Error(), `--cluster-pod-cidr "192.168.0.0" is not a CIDR`) {
		t.Errorf("a bad --cluster-pod-cidr: %v\n%s", err, errOut)
	}
}
