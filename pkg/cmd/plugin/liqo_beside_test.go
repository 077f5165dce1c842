package plugin

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/apiproxy/apiproxy/pkg/install"
	"github.com/apiproxy/apiproxy/pkg/liqo"
	fixtures "github.com/apiproxy/apiproxy/test/fixtures/liqo"
	"github.com/apiproxy/apiproxy/test/harness"
)

// TestBesideLiqosProxy: a cluster already runs Liqo's own API server proxy (IP liqo/api-server-proxy,
// not ours). install adds IP liqo/apiproxy for our proxy; get-ip picks ours by label and says so;
// --name still picks Liqo's; when the proxy Service comes back with another ClusterIP, install
// replaces ours (Liqo's CRD makes spec.ip immutable) and leaves Liqo's alone; an IPv6-only Service
// gets no IP object; uninstall removes ours only. On Liqo's CRDs of every pinned release, in a
// dual-stack cluster.
func TestBesideLiqosProxy(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a kube-apiserver")
	}
	for _, v := range fixtures.Versions {
		t.Run("liqo-"+v, func(t *testing.T) { testBesideLiqosProxy(t, v) })
	}
}

func testBesideLiqosProxy(t *testing.T, version string) {
	cl := harness.Start(t, harness.Options{Name: "beside", CRDs: fixtures.MustCRDs(t, version),
		ExtraArgs: map[string][]string{"service-cluster-ip-range": {"10.0.0.0/24,fd00:10::/108"}}})
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

	t.Run("Service recreated: ours replaced, Liqo's untouched", func(t *testing.T) { testIPReplaced(t, cl, liqos) })

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

// recreateProxyService deletes the proxy Service and keeps its ClusterIP taken by a placeholder, so
// the next install gets another address for certain; it returns the old address.
func recreateProxyService(t *testing.T, cl *harness.Cluster, placeholder string) string {
	t.Helper()
	ctx, cs := context.Background(), cl.Clientset(t)
	svc, err := cs.CoreV1().Services(install.DefaultNamespace).Get(ctx, "apiproxy-proxy", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := cs.CoreV1().Services(install.DefaultNamespace).Delete(ctx, "apiproxy-proxy", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	hold := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: placeholder},
		Spec: corev1.ServiceSpec{ClusterIP: svc.Spec.ClusterIP, Ports: []corev1.ServicePort{{Port: 1}}}}
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		_, err := cs.CoreV1().Services("default").Create(ctx, hold, metav1.CreateOptions{})
		return err == nil, nil // the address is released shortly after the deletion
	}); err != nil {
		t.Fatalf("holding the old ClusterIP %s: %v", svc.Spec.ClusterIP, err)
	}
	return svc.Spec.ClusterIP
}

func testIPReplaced(t *testing.T, cl *harness.Cluster, liqos *unstructured.Unstructured) {
	ctx := context.Background()
	kc := cl.Kubeconfig
	cs := cl.Clientset(t)
	ips := cl.Dynamic(t).Resource(fixtures.IPResource).Namespace("liqo")
	onlyOurs := func(wantSpecIP string) *unstructured.Unstructured {
		t.Helper()
		list, err := ips.List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var ours *unstructured.Unstructured
		for i, it := range list.Items {
			switch it.GetName() {
			case "api-server-proxy":
				if it.GetResourceVersion() != liqos.GetResourceVersion() {
					t.Error("Liqo's own IP object was changed")
				}
			case install.OwnIPResourceName:
				ours = &list.Items[i]
			default:
				t.Errorf("unexpected IP object %s", it.GetName())
			}
		}
		if ours == nil {
			if wantSpecIP != "" {
				t.Fatalf("no IP object of ours; want one for %s", wantSpecIP)
			}
			return nil
		}
		if got, _, _ := unstructured.NestedString(ours.Object, "spec", "ip"); got != wantSpecIP {
			t.Fatalf("our IP object holds spec.ip %q, want %q", got, wantSpecIP)
		}
		return ours
	}
	newClusterIP := func() string {
		t.Helper()
		svc, err := cs.CoreV1().Services(install.DefaultNamespace).Get(ctx, "apiproxy-proxy", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return svc.Spec.ClusterIP
	}

	// The real CRD refuses the update a plain apply would send.
	before := onlyOurs(newClusterIP())
	old := recreateProxyService(t, cl, "hold-1")
	changed := before.DeepCopy()
	_ = unstructured.SetNestedField(changed.Object, "10.0.0.250", "spec", "ip")
	if _, err := ips.Update(ctx, changed, metav1.UpdateOptions{}); err == nil || !strings.Contains(err.Error(), "immutable") {
		t.Fatalf("updating spec.ip on Liqo's CRD: err %v, want immutable", err)
	}

	_, errOut, err := runApiproxy(t, kc, "install")
	if err != nil {
		t.Fatalf("install after the Service was recreated: %v\n%s", err, errOut)
	}
	addr := newClusterIP()
	if addr == old {
		t.Fatalf("the Service kept its ClusterIP %s", old)
	}
	if !strings.Contains(errOut, "replacing IP liqo/apiproxy: its spec.ip "+old+" is not the proxy Service's ClusterIP "+addr) {
		t.Errorf("install stderr must say it replaces our IP object:\n%s", errOut)
	}
	replaced := onlyOurs(addr)
	if replaced.GetUID() == before.GetUID() {
		t.Error("our IP object was not replaced")
	}
	if _, found, _ := unstructured.NestedFieldNoCopy(replaced.Object, "status"); found {
		t.Errorf("the new IP object carries the old status: %v", replaced.Object["status"])
	}

	// With --wait (the install API with IPWait), install waits for Liqo to remap the new object;
	// the test plays Liqo's IPAM.
	old = recreateProxyService(t, cl, "hold-2")
	o := install.DefaultOptions()
	o.IPWait = 30 * time.Second
	c, err := install.NewClient(cl.Config)
	if err != nil {
		t.Fatal(err)
	}
	var log strings.Builder
	done := make(chan error, 1)
	go func() { _, err := install.Install(ctx, c, o, install.DryRunNone, &log); done <- err }()
	var remapped bool
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline) && !remapped; time.Sleep(100 * time.Millisecond) {
		obj, err := ips.Get(ctx, install.OwnIPResourceName, metav1.GetOptions{})
		if err != nil || obj.GetUID() == replaced.GetUID() {
			continue
		}
		obj.Object["status"] = map[string]any{"ip": "10.70.0.6", "cidr": "10.70.0.0/16"}
		_, err = ips.UpdateStatus(ctx, obj, metav1.UpdateOptions{})
		remapped = err == nil
	}
	if err := <-done; err != nil || !remapped {
		t.Fatalf("install with IPWait: %v (status written: %v)\n%s", err, remapped, log.String())
	}
	if !strings.Contains(log.String(), "Liqo remapped IP liqo/apiproxy to 10.70.0.6") {
		t.Errorf("install log:\n%s", log.String())
	}
	if addr = newClusterIP(); addr == old {
		t.Fatalf("the Service kept its ClusterIP %s", old)
	}
	onlyOurs(addr)

	// An IPv6-only proxy Service: the CRD holds IPv4 only, so no IP object (ours goes), no error.
	if err := cs.CoreV1().Services(install.DefaultNamespace).Delete(ctx, "apiproxy-proxy", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	single := corev1.IPFamilyPolicySingleStack
	v6 := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: install.DefaultNamespace, Name: "apiproxy-proxy"},
		Spec: corev1.ServiceSpec{IPFamilyPolicy: &single, IPFamilies: []corev1.IPFamily{corev1.IPv6Protocol}, Ports: []corev1.ServicePort{{Port: 8118}}}}
	if _, err := cs.CoreV1().Services(install.DefaultNamespace).Create(ctx, v6, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	_, errOut, err = runApiproxy(t, kc, "install")
	if err != nil {
		t.Fatalf("install with an IPv6-only Service: %v\n%s", err, errOut)
	}
	if !strings.Contains(errOut, "is IPv6-only") || !strings.Contains(errOut, "no IP object is created") {
		t.Errorf("install stderr must explain the missing IP object:\n%s", errOut)
	}
	onlyOurs("")
	if svc, _ := cs.CoreV1().Services(install.DefaultNamespace).Get(ctx, "apiproxy-proxy", metav1.GetOptions{}); len(svc.Spec.ClusterIPs) != 1 || !strings.Contains(svc.Spec.ClusterIP, ":") {
		t.Fatalf("the Service is no longer IPv6-only: %v", svc.Spec.ClusterIPs)
	}
}
