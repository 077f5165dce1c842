package nodestandin

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/apiproxy/apiproxy/test/harness"
)

// kubectl exec and kubectl port-forward against a real kube-apiserver reach pods served by the
// stand-in, over the API server's real streaming proxy and the stand-in's mutual TLS.
func TestKubectlExecAndPortForward(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a kube-apiserver")
	}
	node, err := New(t, "standin-1", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cl := harness.Start(t, harness.Options{Name: "cl01", ExtraArgs: node.APIServerArgs()})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := node.Register(ctx, cl.Config); err != nil {
		t.Fatal(err)
	}
	echo := EchoServer(t, "pong:")
	pod, err := node.AddPod(ctx, cl.Config, Pod{Namespace: "default", Name: "web", Ports: map[int32]string{8080: echo}, Exec: UpperExec})
	if err != nil {
		t.Fatal(err)
	}
	if pod.Status.Phase != corev1.PodRunning || pod.Spec.NodeName != "standin-1" {
		t.Fatalf("pod: phase %s node %q", pod.Status.Phase, pod.Spec.NodeName)
	}
	kubectl := harness.Kubectl(t)
	kc := []string{"--kubeconfig", cl.Kubeconfig}

	t.Run("exec with stdin, stdout and stderr", func(t *testing.T) {
		out, stderr, err := Exec(ctx, kubectl, nil, "hello through the kubelet", append(kc, "exec", "-i", "web", "--", "upper")...)
		if err != nil || out != "HELLO THROUGH THE KUBELET" || !strings.Contains(stderr, "done") {
			t.Fatalf("exec: out %q stderr %q err %v", out, stderr, err)
		}
		out, _, err = Exec(ctx, kubectl, nil, "", append(kc, "exec", "web", "--", "echo", "a", "b")...)
		if err != nil || out != "a b\n" {
			t.Fatalf("exec echo: %q %v", out, err)
		}
	})

	t.Run("exec passes on the exit status", func(t *testing.T) {
		_, _, err := Exec(ctx, kubectl, nil, "", append(kc, "exec", "web", "--", "exit", "3")...)
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 3 {
			t.Fatalf("want exit status 3, got %v", err)
		}
	})

	t.Run("port-forward carries data both ways, twice", func(t *testing.T) {
		local := PortForward(t, kubectl, nil, append(kc, "port-forward", "pod/web", ":8080")...)
		RoundTrip(t, local, "pong:", "ping 1")
		RoundTrip(t, local, "pong:", strings.Repeat("x", 256<<10))
	})

	t.Run("a pod the stand-in does not serve is refused", func(t *testing.T) {
		// Bound to the node but unknown to the stand-in: the kubelet answers 404.
		other := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "stranger"},
			Spec:       corev1.PodSpec{NodeName: "standin-1", Containers: []corev1.Container{{Name: "main", Image: "x"}}},
		}
		if _, err := cl.Clientset(t).CoreV1().Pods("default").Create(ctx, other, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		_, stderr, err := Exec(ctx, kubectl, nil, "", append(kc, "exec", "stranger", "--", "echo", "x")...)
		if err == nil || !strings.Contains(stderr, "not on node standin-1") {
			t.Fatalf("want the stand-in's refusal, got err %v stderr %q", err, stderr)
		}
	})
}
