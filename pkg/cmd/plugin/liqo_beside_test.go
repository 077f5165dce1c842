package plugin

import (
	"context"
	"errors"
	"strings"
	"testing"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/apiproxy/apiproxy/pkg/install"
	"github.com/apiproxy/apiproxy/pkg/liqo"
	fixtures "github.com/apiproxy/apiproxy/test/fixtures/liqo"
	"github.com/apiproxy/apiproxy/test/harness"
)

// TestBesideLiqosProxy: a cluster already runs Liqo's own API server proxy (IP liqo/api-server-proxy,
// not ours). install adds IP liqo/apiproxy for our proxy; get-ip picks ours by label and says so;
// --name still picks Liqo's; uninstall removes ours only.
func TestBesideLiqosProxy(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a kube-apiserver")
	}
	cl := harness.Start(t, harness.Options{Name: "beside", CRDs: []*apiextensionsv1.CustomResourceDefinition{fixtures.IPCRD(), fixtures.ConfigurationCRD()}})
	ctx := context.Background()
	dyn := cl.Dynamic(t)
	kc := cl.Kubeconfig
	liqos := fixtures.Create(ctx, t, dyn, fixtures.IP("liqo", "api-server-proxy", "10.0.0.77", fixtures.IPStatus("10.70.0.77", "10.70.0.0/16")))
	ips := dyn.Resource(fixtures.IPResource).Namespace("liqo")

	_, errOut, err := runApiproxy(t, kc, "install")
	if err != nil {
		t.Fatalf("install: %v\n%s", err, errOut)
	}
	if !strings.Contains(errOut, "IP liqo/api-server-proxy exists and was not created by this install") {
		t.Errorf("install must say it leaves Liqo's IP alone; stderr:\n%s", errOut)
	}
	ours, err := ips.Get(ctx, install.OwnIPResourceName, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("our IP %s: %v", install.OwnIPResourceName, err)
	}
	svc, err := cl.Clientset(t).CoreV1().Services(install.DefaultNamespace).Get(ctx, "apiproxy-proxy", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got, _, _ := unstructured.NestedString(ours.Object, "spec", "ip"); got != svc.Spec.ClusterIP || ours.GetLabels()[install.LabelPartOf] != install.PartOf {
		t.Errorf("our IP: spec.ip %q (Service %q), labels %v", got, svc.Spec.ClusterIP, ours.GetLabels())
	}
	if again, _ := ips.Get(ctx, "api-server-proxy", metav1.GetOptions{}); again.GetResourceVersion() != liqos.GetResourceVersion() {
		t.Error("install changed Liqo's IP")
	}
	// A second install keeps the same object (no third IP).
	if _, errOut, err := runApiproxy(t, kc, "install"); err != nil {
		t.Fatalf("second install: %v\n%s", err, errOut)
	}
	if list, _ := ips.List(ctx, metav1.ListOptions{}); len(list.Items) != 2 {
		t.Errorf("after a second install: %d IP objects, want 2", len(list.Items))
	}

	getIP := []string{"get-ip", "--remote-cidr", "10.81.0.0/16"}
	// Ours has no remapped address yet: get-ip names ours, not Liqo's.
	if _, _, err := runApiproxy(t, kc, getIP...); err == nil || !strings.Contains(err.Error(), "IP liqo/apiproxy") || !errors.Is(err, liqo.ErrStatusNotSet) {
		t.Errorf("before Liqo remaps ours: err = %v, want status not set on liqo/apiproxy", err)
	}
	ours.Object["status"] = map[string]any{"ip": "10.70.0.5", "cidr": "10.70.0.0/16"}
	if _, err := ips.UpdateStatus(ctx, ours, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	out, errOut, err := runApiproxy(t, kc, getIP...)
	if err != nil || out != "10.81.0.5\n" {
		t.Fatalf("get-ip: %q, %v", out, err)
	}
	if !strings.Contains(errOut, "using IP liqo/apiproxy") || !strings.Contains(errOut, "label app.kubernetes.io/part-of=apiproxy") || !strings.Contains(errOut, "kubectl apiproxy's proxy (install namespace apiproxy-system)") {
		t.Errorf("get-ip stderr %q: want the IP object used and whose proxy", errOut)
	}
	out, _, err = runApiproxy(t, kc, append(getIP, "-o", "wide")...)
	if err != nil || !strings.Contains(out, "PROXY") || !strings.Contains(out, "apiproxy   apiproxy") {
		t.Errorf("-o wide:\n%s\n%v", out, err)
	}
	out, _, err = runApiproxy(t, kc, append(getIP, "-o", "json")...)
	if err != nil || !strings.Contains(out, `"proxy": "kubectl apiproxy's proxy (install namespace apiproxy-system)"`) || !strings.Contains(out, `"name": "apiproxy"`) {
		t.Errorf("-o json:\n%s\n%v", out, err)
	}
	out, errOut, err = runApiproxy(t, kc, append(getIP, "--name", "api-server-proxy")...)
	if err != nil || out != "10.81.0.77\n" || !strings.Contains(errOut, "(--name): Liqo's own API server proxy") {
		t.Errorf("--name api-server-proxy: %q %q %v", out, errOut, err)
	}

	if _, errOut, err := runApiproxy(t, kc, "uninstall"); err != nil {
		t.Fatalf("uninstall: %v\n%s", err, errOut)
	}
	if _, err := ips.Get(ctx, install.OwnIPResourceName, metav1.GetOptions{}); err == nil {
		t.Error("uninstall left our IP")
	}
	if after, err := ips.Get(ctx, "api-server-proxy", metav1.GetOptions{}); err != nil || after.GetResourceVersion() != liqos.GetResourceVersion() {
		t.Errorf("uninstall touched Liqo's IP: %v", err)
	}
	// Back to Liqo's proxy alone: get-ip falls back to it and says so.
	out, errOut, err = runApiproxy(t, kc, getIP...)
	if err != nil || out != "10.81.0.77\n" || !strings.Contains(errOut, "default name") {
		t.Errorf("after uninstall: %q %q %v", out, errOut, err)
	}
}
