package plugin

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"

	"github.com/apiproxy/apiproxy/pkg/install"
	"github.com/apiproxy/apiproxy/test/fixtures/liqo"
	"github.com/apiproxy/apiproxy/test/harness"
)

// allRolesArgs install every role the way the README suggests for node-local API access.
var allRolesArgs = []string{"install", "--roles", "proxy,node,webhook", "--setup-iptables",
	"--apiserver-fqdn", "kubernetes.default.svc", "--apiserver-port", "443", "--host-alias-ip", "10.96.0.2"}

func runApiproxy(t *testing.T, kubeconfig string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	streams, _, out, errOut := genericiooptions.NewTestIOStreams()
	root := NewRootCommand(streams)
	root.SetArgs(append([]string{"--kubeconfig", kubeconfig}, args...))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err = root.ExecuteContext(ctx)
	return out.String(), errOut.String(), err
}

// installWorld is one real API server with a client that maps kinds like the plugin does.
type installWorld struct {
	cluster *harness.Cluster
	c       *install.Client
}

func (w *installWorld) resource(t *testing.T, gvk schema.GroupVersionKind, namespace string) dynamic.ResourceInterface {
	t.Helper()
	w.c.Mapper.Reset()
	m, err := w.c.Mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		t.Fatalf("mapping %s: %v", gvk, err)
	}
	if namespace == "" {
		return w.c.Dynamic.Resource(m.Resource)
	}
	return w.c.Dynamic.Resource(m.Resource).Namespace(namespace)
}

// resourceVersions gets every expected object, failing when one is missing or unlabelled.
func (w *installWorld) resourceVersions(t *testing.T, expected []*unstructured.Unstructured) map[string]string {
	t.Helper()
	rvs := map[string]string{}
	for _, e := range expected {
		got, err := w.resource(t, e.GroupVersionKind(), e.GetNamespace()).Get(context.Background(), e.GetName(), metav1.GetOptions{})
		if err != nil {
			t.Errorf("%s: %v", install.ObjectRef(e), err)
			continue
		}
		if got.GetLabels()[install.LabelPartOf] != install.PartOf {
			t.Errorf("%s lacks %s: %v", install.ObjectRef(e), install.LabelPartOf, got.GetLabels())
		}
		applied := false
		for _, mf := range got.GetManagedFields() {
			applied = applied || (mf.Manager == install.FieldManager && mf.Operation == metav1.ManagedFieldsOperationApply)
		}
		if !applied {
			t.Errorf("%s was not server-side applied by %s", install.ObjectRef(e), install.FieldManager)
		}
		rvs[install.ObjectRef(e)] = got.GetResourceVersion()
	}
	return rvs
}

func (w *installWorld) countLabelled(t *testing.T) (n int, names []string) {
	t.Helper()
	kinds := []schema.GroupVersionKind{
		{Group: "apps", Version: "v1", Kind: "Deployment"}, {Group: "apps", Version: "v1", Kind: "DaemonSet"},
		{Version: "v1", Kind: "Service"}, {Version: "v1", Kind: "Secret"}, {Version: "v1", Kind: "ServiceAccount"},
		{Group: "policy", Version: "v1", Kind: "PodDisruptionBudget"},
		{Group: "admissionregistration.k8s.io", Version: "v1", Kind: "MutatingWebhookConfiguration"},
		{Group: "rbac.authorization.k8s.io", Version: "v1", Kind: "Role"}, {Group: "rbac.authorization.k8s.io", Version: "v1", Kind: "RoleBinding"},
		{Group: "networking.k8s.io", Version: "v1", Kind: "NetworkPolicy"},
		{Group: "rbac.authorization.k8s.io", Version: "v1", Kind: "ClusterRole"},
		{Group: "rbac.authorization.k8s.io", Version: "v1", Kind: "ClusterRoleBinding"},
	}
	if served, _ := w.c.IPCRDServed(); served {
		kinds = append(kinds, schema.GroupVersionKind{Group: "ipam.liqo.io", Version: "v1alpha1", Kind: "IP"})
	}
	for _, gvk := range kinds {
		list, err := w.resource(t, gvk, "").List(context.Background(), metav1.ListOptions{LabelSelector: install.LabelPartOf + "=" + install.PartOf})
		if err != nil {
			t.Fatalf("listing %s: %v", gvk.Kind, err)
		}
		for _, it := range list.Items {
			names = append(names, gvk.Kind+"/"+it.GetName())
		}
		n += len(list.Items)
	}
	return n, names
}

func decodeYAMLStream(t *testing.T, s string) []*unstructured.Unstructured {
	t.Helper()
	var objs []*unstructured.Unstructured
	for _, doc := range strings.Split(s, "\n---\n") {
		var m map[string]any
		if err := yaml.Unmarshal([]byte(doc), &m); err != nil {
			t.Fatalf("output is not YAML: %v\n%s", err, doc)
		}
		if len(m) > 0 {
			objs = append(objs, &unstructured.Unstructured{Object: m})
		}
	}
	return objs
}

func statusReport(t *testing.T, kubeconfig string) *install.Report {
	t.Helper()
	out, errOut, err := runApiproxy(t, kubeconfig, "status", "-o", "json")
	if err != nil {
		t.Fatalf("status: %v\n%s", err, errOut)
	}
	var r install.Report
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("status -o json: %v\n%s", err, out)
	}
	return &r
}

// TestInstallLifecycle drives install, status, the webhook and uninstall against one real API server.
func TestInstallLifecycle(t *testing.T) {
	cl := harness.Start(t, harness.Options{Name: "install"})
	c, err := install.NewClient(cl.Config)
	if err != nil {
		t.Fatal(err)
	}
	w := &installWorld{cluster: cl, c: c}
	kc := cl.Kubeconfig
	ctx := context.Background()
	cs := cl.Clientset(t)

	// 1. A client dry run prints manifests and creates nothing.
	dryYAML, dryErr, err := runApiproxy(t, kc, append(slices.Clone(allRolesArgs), "--dry-run=client", "-o", "yaml")...)
	if err != nil {
		t.Fatalf("dry run: %v\n%s", err, dryErr)
	}
	expected := decodeYAMLStream(t, dryYAML)
	if len(expected) != 18 {
		t.Errorf("dry run printed %d objects, want 18 (namespace, 4 proxy, 4 node, 9 webhook)", len(expected))
	}
	if n, names := w.countLabelled(t); n != 0 {
		t.Fatalf("a client dry run created %v", names)
	}
	if _, err := cs.CoreV1().Namespaces().Get(ctx, install.DefaultNamespace, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("namespace after a client dry run: %v, want NotFound", err)
	}

	// 2. --create-ip-resource=true without Liqo's CRD: a clear error, before anything is created.
	_, _, err = runApiproxy(t, kc, "install", "--create-ip-resource=true")
	if err == nil || !strings.Contains(err.Error(), install.IPCRDName) || !strings.Contains(err.Error(), "--create-ip-resource=false") {
		t.Errorf("--create-ip-resource=true without the CRD: err = %v", err)
	}
	if n, names := w.countLabelled(t); n != 0 {
		t.Fatalf("a failed install created %v", names)
	}

	// 3. Install every role; every rendered object exists, applied by our field manager.
	out, errOut, err := runApiproxy(t, kc, allRolesArgs...)
	if err != nil {
		t.Fatalf("install: %v\n%s", err, errOut)
	}
	if !strings.Contains(errOut, "skipping Liqo's IP resource") || !strings.Contains(errOut, install.IPCRDName) {
		t.Errorf("install without Liqo must say it skips the IP resource; stderr:\n%s", errOut)
	}
	if !strings.Contains(out, "deployment.apps/apiproxy-proxy serverside-applied") {
		t.Errorf("install output:\n%s", out)
	}
	before := w.resourceVersions(t, expected)
	if len(before) != len(expected) {
		t.Fatalf("found %d of %d objects", len(before), len(expected))
	}

	// 4. A second install changes nothing (the certificates are reused, not reissued).
	_, errOut, err = runApiproxy(t, kc, allRolesArgs...)
	if err != nil {
		t.Fatalf("second install: %v\n%s", err, errOut)
	}
	if !strings.Contains(errOut, "reusing the webhook CA") {
		t.Errorf("second install stderr:\n%s", errOut)
	}
	if after := w.resourceVersions(t, expected); !mapsEqual(before, after) {
		t.Errorf("second install changed objects:\nbefore %v\nafter  %v", before, after)
	}

	// 5. The client dry run's output passes the API server's own validation (kubectl's server-side dry run).
	file := filepath.Join(t.TempDir(), "dry-run.yaml")
	if err := os.WriteFile(file, []byte(dryYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	kout, kerr, err := harness.RunKubectl(ctx, t, kc, "apply", "--server-side", "--force-conflicts", "--field-manager", install.FieldManager, "--dry-run=server", "-f", file)
	if err != nil {
		t.Errorf("kubectl apply --dry-run=server of the client dry run: %v\n%s%s", err, kout, kerr)
	}
	if strings.Count(kout, "serverside-applied (server dry run)") != len(expected) {
		t.Errorf("kubectl server dry run:\n%s", kout)
	}
	if after := w.resourceVersions(t, expected); !mapsEqual(before, after) {
		t.Error("a server dry run changed objects")
	}

	// A server dry run of the same install: the API server validates everything and persists nothing.
	out, errOut, err = runApiproxy(t, kc, append(slices.Clone(allRolesArgs), "--dry-run=server", "-o", "json")...)
	if err != nil || !strings.Contains(out, `"kind": "List"`) {
		t.Errorf("install --dry-run=server: %v\n%s\n%s", err, errOut, out)
	}
	if after := w.resourceVersions(t, expected); !mapsEqual(before, after) {
		t.Error("install --dry-run=server changed objects")
	}
	// The node role with --upstream (its sidecar then asks the API server there): valid for the API server too.
	if _, errOut, err := runApiproxy(t, kc, "install", "--roles", "proxy,node", "--upstream", "192.168.1.10:6443", "--setup-iptables", "--dry-run=server"); err != nil {
		t.Errorf("install --roles proxy,node --upstream --dry-run=server: %v\n%s", err, errOut)
	}
	if after := w.resourceVersions(t, expected); !mapsEqual(before, after) {
		t.Error("install --dry-run=server changed objects")
	}
	_, _, err = runApiproxy(t, kc, "install", "-n", "not-there-yet", "--dry-run=server")
	if err == nil || !strings.Contains(err.Error(), "--dry-run=client") {
		t.Errorf("server dry run into a missing namespace: err = %v, want a hint", err)
	}

	t.Run("node role RBAC", func(t *testing.T) { testNodeRBAC(t, w) })
	t.Run("status and wait", func(t *testing.T) { testStatusAndWait(t, w) })
	t.Run("liqo IP resource", func(t *testing.T) { testLiqoIP(t, w) })
	t.Run("relay allows exactly the peers' CIDRs", func(t *testing.T) { testRelay(t, w) })
	t.Run("webhook mutates pods", func(t *testing.T) { testWebhookMutates(t, w) })
	t.Run("namespace not ours", func(t *testing.T) {
		_, errOut, err := runApiproxy(t, kc, "install", "-n", "default", "--create-ip-resource=false")
		if err != nil || !strings.Contains(errOut, "namespace default exists and was not created by kubectl-apiproxy") {
			t.Fatalf("install -n default: %v\n%s", err, errOut)
		}
		if _, err := cs.AppsV1().Deployments("default").Get(ctx, "apiproxy-proxy", metav1.GetOptions{}); err != nil {
			t.Fatalf("proxy in default: %v", err)
		}
		out, _, err := runApiproxy(t, kc, "uninstall", "-n", "default")
		if err != nil || strings.Contains(out, "namespace/default") || !strings.Contains(out, "deployment.apps/apiproxy-proxy deleted") {
			t.Errorf("uninstall -n default: %v\n%s", err, out)
		}
		ns, err := cs.CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{})
		if err != nil || ns.DeletionTimestamp != nil {
			t.Errorf("uninstall -n default touched the namespace: %v %v", err, ns.DeletionTimestamp)
		}
	})
	t.Run("version skew", func(t *testing.T) {
		if _, errOut, err := runApiproxy(t, kc, "install", "--image", "registry.example:5000/agent:v9.9.9"); err != nil {
			t.Fatalf("install --image: %v\n%s", err, errOut)
		}
		r := statusReport(t, kc)
		if !r.Roles[0].VersionSkew || r.Roles[2].VersionSkew || !slices.Contains(r.Roles[0].Images, "registry.example:5000/agent:v9.9.9") {
			t.Errorf("status skew: %+v", r.Roles)
		}
		out, _, _ := runApiproxy(t, kc, "status")
		if !strings.Contains(out, "VERSION SKEW") {
			t.Errorf("status table does not flag the skew:\n%s", out)
		}
	})

	// 6. uninstall --dry-run lists and keeps; uninstall removes everything.
	out, _, err = runApiproxy(t, kc, "uninstall", "--dry-run")
	if err != nil {
		t.Fatal(err)
	}
	total, _ := w.countLabelled(t)
	if strings.Count(out, "deleted (dry run)") != total+1 || total < len(expected)-1 { // +1: the namespace
		t.Errorf("uninstall --dry-run listed:\n%s\nwant %d objects + the namespace", out, total)
	}
	if n, _ := w.countLabelled(t); n != total {
		t.Error("uninstall --dry-run deleted objects")
	}
	out, errOut, err = runApiproxy(t, kc, "uninstall")
	if err != nil {
		t.Fatalf("uninstall: %v\n%s", err, errOut)
	}
	if !strings.Contains(out, "mutatingwebhookconfiguration.admissionregistration.k8s.io/apiproxy-webhook-apiproxy-system deleted") {
		t.Errorf("uninstall output:\n%s", out)
	}
	if n, names := w.countLabelled(t); n != 0 {
		t.Errorf("uninstall left %v", names)
	}
	// No namespace controller runs here: the namespace is gone or terminating.
	ns, err := cs.CoreV1().Namespaces().Get(ctx, install.DefaultNamespace, metav1.GetOptions{})
	if err == nil && ns.DeletionTimestamp == nil {
		t.Error("uninstall left the namespace it created")
	}
}

// The node agent may read its own DaemonSet, and nothing else, as the API server's authorizer sees it.
func testNodeRBAC(t *testing.T, w *installWorld) {
	cs := w.cluster.Clientset(t)
	sa := "system:serviceaccount:" + install.DefaultNamespace + ":apiproxy-node"
	for _, tc := range []struct {
		attrs authorizationv1.ResourceAttributes
		allow bool
	}{
		{authorizationv1.ResourceAttributes{Verb: "get", Group: "apps", Resource: "daemonsets", Name: "apiproxy-node"}, true},
		{authorizationv1.ResourceAttributes{Verb: "list", Group: "apps", Resource: "daemonsets"}, false},
		{authorizationv1.ResourceAttributes{Verb: "get", Group: "apps", Resource: "daemonsets", Name: "other"}, false},
		{authorizationv1.ResourceAttributes{Verb: "delete", Group: "apps", Resource: "daemonsets", Name: "apiproxy-node"}, false},
		{authorizationv1.ResourceAttributes{Verb: "get", Resource: "secrets", Name: "apiproxy-webhook-tls"}, false},
	} {
		tc.attrs.Namespace = install.DefaultNamespace
		sar, err := cs.AuthorizationV1().SubjectAccessReviews().Create(context.Background(), &authorizationv1.SubjectAccessReview{
			Spec: authorizationv1.SubjectAccessReviewSpec{User: sa, Groups: []string{"system:serviceaccounts"}, ResourceAttributes: &tc.attrs},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if sar.Status.Allowed != tc.allow {
			t.Errorf("%s may %s %s/%s: %v, want %v", sa, tc.attrs.Verb, tc.attrs.Resource, tc.attrs.Name, sar.Status.Allowed, tc.allow)
		}
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func testStatusAndWait(t *testing.T, w *installWorld) {
	kc := w.cluster.Kubeconfig
	r := statusReport(t, kc)
	if r.Ready || len(r.Roles) != 3 {
		t.Fatalf("status right after install: %+v", r)
	}
	for _, rs := range r.Roles {
		if !rs.Installed || rs.Ready || rs.VersionSkew {
			t.Errorf("role %s: installed=%v ready=%v skew=%v, want installed, not ready, no skew", rs.Role, rs.Installed, rs.Ready, rs.VersionSkew)
		}
	}
	if r.IP.CRDServed || r.IP.Found {
		t.Errorf("IP status without Liqo: %+v", r.IP)
	}

	// --wait gives up with what is missing and what to do.
	_, errOut, err := runApiproxy(t, kc, "install", "--wait", "--timeout", "1s")
	if err == nil || !strings.Contains(err.Error(), "timed out") || !strings.Contains(err.Error(), "deployment apiproxy-proxy") ||
		!strings.Contains(err.Error(), "kubectl -n apiproxy-system describe pods") {
		t.Errorf("install --wait on a cluster without controllers: err = %v", err)
	}
	if !strings.Contains(errOut, "waiting for deployment apiproxy-proxy") {
		t.Errorf("--wait progress on stderr:\n%s", errOut)
	}

	// Play kubelet and controllers: report every workload rolled out.
	ctx := context.Background()
	for _, kind := range []string{"Deployment", "DaemonSet"} {
		ri := w.resource(t, schema.GroupVersionKind{Group: "apps", Version: "v1", Kind: kind}, install.DefaultNamespace)
		list, err := ri.List(ctx, metav1.ListOptions{LabelSelector: install.Selector(install.DefaultNamespace)})
		if err != nil {
			t.Fatal(err)
		}
		for _, obj := range list.Items {
			status := map[string]any{"observedGeneration": obj.GetGeneration(), "replicas": int64(2), "updatedReplicas": int64(2), "readyReplicas": int64(2), "availableReplicas": int64(2)}
			if kind == "DaemonSet" {
				status = map[string]any{"observedGeneration": obj.GetGeneration(), "desiredNumberScheduled": int64(1), "currentNumberScheduled": int64(1),
					"numberMisscheduled": int64(0), "numberReady": int64(1), "updatedNumberScheduled": int64(1), "numberAvailable": int64(1)}
			}
			obj.Object["status"] = status
			if _, err := ri.UpdateStatus(ctx, &obj, metav1.UpdateOptions{}); err != nil {
				t.Fatalf("status of %s: %v", obj.GetName(), err)
			}
		}
	}
	r = statusReport(t, kc)
	if !r.Ready {
		t.Errorf("status after the rollout: %+v", r.Roles)
	}
	_, errOut, err = runApiproxy(t, kc, append(slices.Clone(allRolesArgs), "--wait", "--timeout", "30s")...)
	if err != nil || !strings.Contains(errOut, "proxy,node,webhook ready") {
		t.Errorf("install --wait when ready: %v\n%s", err, errOut)
	}
	out, _, err := runApiproxy(t, kc, "status")
	t.Logf("status:\n%s", out)
	if err != nil || !strings.Contains(out, ": ready") || !strings.Contains(out, "caBundle matches") {
		t.Errorf("status table: %v\n%s", err, out)
	}
}

func testLiqoIP(t *testing.T, w *installWorld) {
	kc := w.cluster.Kubeconfig
	ctx := context.Background()
	w.cluster.InstallCRDs(t, liqo.MustIPCRD(t, liqo.V1_2_0))
	cs := w.cluster.Clientset(t)

	// The CRD without its namespace: auto explains and skips.
	_, errOut, err := runApiproxy(t, kc, "install")
	if err != nil || !strings.Contains(errOut, "--liqo-namespace") {
		t.Errorf("install with the CRD but no liqo namespace: %v\n%s", err, errOut)
	}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "liqo"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	nsBefore, _ := cs.CoreV1().Namespaces().Get(ctx, install.DefaultNamespace, metav1.GetOptions{})
	out, errOut, err := runApiproxy(t, kc, "install")
	if err != nil {
		t.Fatalf("install with Liqo: %v\n%s", err, errOut)
	}
	// Installing the proxy alone keeps the node role's privileged Pod Security level.
	if nsAfter, _ := cs.CoreV1().Namespaces().Get(ctx, install.DefaultNamespace, metav1.GetOptions{}); nsAfter.ResourceVersion != nsBefore.ResourceVersion ||
		nsAfter.Labels["pod-security.kubernetes.io/enforce"] != "privileged" {
		t.Errorf("namespace after a proxy-only install: %v", nsAfter.Labels)
	}
	if !strings.Contains(out, "ip.ipam.liqo.io/api-server-proxy serverside-applied") {
		t.Errorf("install output:\n%s", out)
	}
	svc, err := cs.CoreV1().Services(install.DefaultNamespace).Get(ctx, "apiproxy-proxy", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ipRes := w.resource(t, schema.GroupVersionKind{Group: "ipam.liqo.io", Version: "v1alpha1", Kind: "IP"}, "liqo")
	ip, err := ipRes.Get(ctx, install.IPResourceName, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("IP resource: %v", err)
	}
	if got, _, _ := unstructured.NestedString(ip.Object, "spec", "ip"); got == "" || got != svc.Spec.ClusterIP {
		t.Errorf("IP spec.ip = %q, want the proxy Service ClusterIP %q", got, svc.Spec.ClusterIP)
	}
	if ip.GetLabels()[install.LabelPartOf] != install.PartOf {
		t.Errorf("IP labels: %v", ip.GetLabels())
	}
	if _, _, err := runApiproxy(t, kc, "install"); err != nil {
		t.Fatal(err)
	}
	if again, _ := ipRes.Get(ctx, install.IPResourceName, metav1.GetOptions{}); again == nil || again.GetResourceVersion() != ip.GetResourceVersion() {
		t.Error("a second install changed the IP resource")
	}

	r := statusReport(t, kc)
	if !r.IP.CRDServed || !r.IP.Found || r.IP.LocalIP != svc.Spec.ClusterIP || r.IP.ProxyClusterIP != svc.Spec.ClusterIP || !strings.Contains(r.IP.Message, "waiting for Liqo") {
		t.Errorf("IP status before Liqo remaps: %+v", r.IP)
	}
	// Liqo's IPAM answers with the remapped address.
	ip.Object["status"] = map[string]any{"ip": "10.70.0.3", "cidr": "10.70.0.0/16"}
	if _, err := ipRes.UpdateStatus(ctx, ip, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	r = statusReport(t, kc)
	if r.IP.RemappedIP != "10.70.0.3" || r.IP.Message != "remapped by Liqo" {
		t.Errorf("IP status after Liqo remaps: %+v", r.IP)
	}
}

func testWebhookMutates(t *testing.T, w *installWorld) {
	ctx := context.Background()
	cs := w.cluster.Clientset(t)
	dir := t.TempDir()
	agentBin := harness.Binary(t, "./cmd/agent")
	if b, err := exec.Command(agentBin, "webhook", "--help").CombinedOutput(); err != nil || !strings.Contains(string(b), "--apiserver-fqdn") {
		t.Fatalf("agent webhook (issue 5) is not available: %v\n%s", err, b)
	}

	// The serving certificate install generated, as the pods would mount it.
	secret, err := cs.CoreV1().Secrets(install.DefaultNamespace).Get(ctx, "apiproxy-webhook-tls", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	certDir := filepath.Join(dir, "tls")
	if err := os.MkdirAll(certDir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"tls.crt", "tls.key"} {
		if err := os.WriteFile(filepath.Join(certDir, k), secret.Data[k], 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// The arguments install gave the webhook Deployment, with local listen addresses.
	dep, err := cs.AppsV1().Deployments(install.DefaultNamespace).Get(ctx, "apiproxy-webhook", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	args := append(slices.Clone(dep.Spec.Template.Spec.Containers[0].Args),
		"--cert-dir", certDir, "--host", "127.0.0.1", "--port", fmt.Sprint(port), "--metrics-addr", "127.0.0.1:0")
	cmd := exec.Command(agentBin, args...)
	logFile, err := os.Create(filepath.Join(dir, "webhook.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(logFile.Name())
			t.Logf("agent webhook log:\n%s", b)
		}
	})
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	deadline := time.Now().Add(30 * time.Second)
	for {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: time.Second}, "tcp", addr, &tls.Config{InsecureSkipVerify: true})
		if err == nil {
			_ = conn.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent webhook never listened on %s: %v", addr, err)
		}
		time.Sleep(200 * time.Millisecond)
	}

	// Point the installed configuration (caBundle and all) at it; the certificate names localhost.
	mwcName := install.WebhookConfigName(install.DefaultNamespace)
	mwc, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, mwcName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	patch := fmt.Sprintf(`[{"op":"replace","path":"/webhooks/0/clientConfig","value":{"url":"https://localhost:%d/webhook/pod-apiserver-env","caBundle":%q}}]`,
		port, base64.StdEncoding.EncodeToString(mwc.Webhooks[0].ClientConfig.CABundle))
	if _, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Patch(ctx, mwcName, types.JSONPatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}

	podIn := func(ns string, labels map[string]string) *corev1.Pod {
		t.Helper()
		if _, err := cs.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); apierrors.IsNotFound(err) {
			if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
		no := false
		pod, err := cs.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{GenerateName: "app-", Labels: labels},
			Spec: corev1.PodSpec{AutomountServiceAccountToken: &no,
				Containers: []corev1.Container{{Name: "app", Image: "registry.example/app:1"}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return pod
	}
	env := func(p *corev1.Pod) string {
		for _, e := range p.Spec.Containers[0].Env {
			if e.Name == "KUBERNETES_SERVICE_HOST" {
				return e.Value
			}
		}
		return ""
	}

	pod := podIn("workload", nil)
	if got := env(pod); got != "kubernetes.default.svc" {
		t.Errorf("KUBERNETES_SERVICE_HOST = %q in the created pod, want kubernetes.default.svc (env %v)", got, pod.Spec.Containers[0].Env)
	}
	if len(pod.Spec.HostAliases) == 0 || pod.Spec.HostAliases[0].IP != "10.96.0.2" {
		t.Errorf("hostAliases = %+v, want 10.96.0.2 from --host-alias-ip", pod.Spec.HostAliases)
	}
	// The selectors install wrote: opted-out pods and the agents' own namespace are left alone.
	if got := env(podIn("workload", map[string]string{"apiproxy.io/inject": "disabled"})); got != "" {
		t.Errorf("a pod labelled apiproxy.io/inject=disabled was mutated (%q)", got)
	}
	if got := env(podIn(install.DefaultNamespace, nil)); got != "" {
		t.Errorf("a pod in the agents' namespace was mutated (%q)", got)
	}
}

// install --relay renders the peers' remapped external CIDRs, read from the Configurations, as the
// proxy's --allow-target on the proxy port; re-running follows the peers; without --relay none remain.
func testRelay(t *testing.T, w *installWorld) {
	kc := w.cluster.Kubeconfig
	ctx := context.Background()
	w.cluster.InstallCRDs(t, liqo.MustConfigurationCRD(t, liqo.V1_2_0))
	dyn := w.cluster.Dynamic(t)
	allowTargets := func() []string {
		t.Helper()
		d, err := w.cluster.Clientset(t).AppsV1().Deployments(install.DefaultNamespace).Get(ctx, "apiproxy-proxy", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		args := d.Spec.Template.Spec.Containers[0].Args
		for i, a := range args {
			if a == "--allow-target" && i+1 < len(args) {
				got = append(got, args[i+1])
			}
		}
		return got
	}

	if _, errOut, err := runApiproxy(t, kc, "install", "--relay"); err == nil || !strings.Contains(err.Error(), "no Configuration") {
		t.Fatalf("--relay without peers: err = %v (stderr %s), want a 'no Configuration' error", err, errOut)
	}
	if _, _, err := runApiproxy(t, kc, "install", "--relay", "--dry-run=client"); err == nil || !strings.Contains(err.Error(), "--dry-run=server") {
		t.Errorf("--relay with a client dry run: err = %v", err)
	}
	liqo.Create(ctx, t, dyn, liqo.Configuration("liqo-tenant-cl02", "cl02", "cl02-id",
		liqo.CIDRs{External: []string{"10.70.0.0/16"}}, &liqo.CIDRs{External: []string{"10.81.0.0/16"}}))
	if _, errOut, err := runApiproxy(t, kc, "install", "--relay"); err != nil {
		t.Fatalf("install --relay: %v\n%s", err, errOut)
	}
	if got := allowTargets(); !slices.Equal(got, []string{"10.81.0.0/16:8118"}) {
		t.Fatalf("--allow-target after one peer = %v", got)
	}
	liqo.Create(ctx, t, dyn, liqo.Configuration("liqo-tenant-cl03", "cl03", "cl03-id",
		liqo.CIDRs{External: []string{"10.70.0.0/16"}}, &liqo.CIDRs{External: []string{"10.82.0.0/16"}}))
	if _, errOut, err := runApiproxy(t, kc, "install", "--relay"); err != nil {
		t.Fatalf("install --relay: %v\n%s", err, errOut)
	}
	if got := allowTargets(); !slices.Equal(got, []string{"10.81.0.0/16:8118", "10.82.0.0/16:8118"}) {
		t.Fatalf("--allow-target after a second peer = %v", got)
	}
	if _, errOut, err := runApiproxy(t, kc, "install"); err != nil {
		t.Fatalf("install: %v\n%s", err, errOut)
	}
	if got := allowTargets(); len(got) != 0 {
		t.Fatalf("--allow-target left after an install without --relay: %v", got)
	}
}
