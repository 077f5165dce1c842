package plugin

import (
	"context"
	"strings"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/apiproxy/apiproxy/pkg/install"
	"github.com/apiproxy/apiproxy/test/harness"
)

// install --upstream-proxy with credentials creates the Secret the node forwarders read; a later
// install whose URL has none removes it, so no stale token stays in the cluster.
func TestInstallUpstreamProxySecretFollowsTheURL(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a kube-apiserver")
	}
	cl := harness.Start(t, harness.Options{Name: "upstream-secret"})
	kc := cl.Kubeconfig
	ctx := context.Background()
	cs := cl.Clientset(t)
	const secret = "apiproxy-upstream-proxy"
	if _, errOut, err := runApiproxy(t, kc, "install", "--roles", "node", "--upstream-proxy", "http://token:secret-token@10.81.0.3:8118"); err != nil {
		t.Fatalf("install --upstream-proxy with credentials: %v\n%s", err, errOut)
	}
	s, err := cs.CoreV1().Secrets(install.DefaultNamespace).Get(ctx, secret, metav1.GetOptions{})
	if err != nil || string(s.Data["credentials"]) != "token:secret-token" {
		t.Fatalf("secret %s after install with credentials: %v %q", secret, err, s.Data["credentials"])
	}
	_, errOut, err := runApiproxy(t, kc, "install", "--roles", "node", "--upstream-proxy", "http://10.81.0.3:8118")
	if err != nil {
		t.Fatalf("install --upstream-proxy without credentials: %v\n%s", err, errOut)
	}
	if _, err := cs.CoreV1().Secrets(install.DefaultNamespace).Get(ctx, secret, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("secret %s after install without credentials: %v, want it removed", secret, err)
	}
	if !strings.Contains(errOut, "secret "+secret+" removed") {
		t.Errorf("install does not say it removed the secret:\n%s", errOut)
	}
}
