package plugin

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/apiproxy/apiproxy/pkg/install"
	fixtures "github.com/apiproxy/apiproxy/test/fixtures/liqo"
	"github.com/apiproxy/apiproxy/test/harness"
)

// TestInstallWhoMayTunnel: install --network-policy, --allow-source, --metrics-namespace-selector and
// --auth against a real API server: nothing changes for today's users (no Liqo: no NetworkPolicy,
// auth none); with Liqo peers the NetworkPolicy (validated by a server-side dry run, then applied)
// admits exactly the peers' remapped CIDRs, --allow-source and this namespace, and the proxy gets the
// same CIDRs as --allow-source; a new peering is followed by re-running install; --auth tokenreview
// renders its RBAC and status shows the mode.
func TestInstallWhoMayTunnel(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a kube-apiserver")
	}
	cl := harness.Start(t, harness.Options{Name: "secure"})
	kc := cl.Kubeconfig
	ctx := context.Background()
	cs := cl.Clientset(t)
	ns := install.DefaultNamespace
	proxyArgs := func(t *testing.T) []string {
		t.Helper()
		d, err := cs.AppsV1().Deployments(ns).Get(ctx, "apiproxy-proxy", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return d.Spec.Template.Spec.Containers[0].Args
	}
	flagValues := func(args []string, flag string) []string {
		var out []string
		for i, a := range args {
			if a == flag && i+1 < len(args) {
				out = append(out, args[i+1])
			}
		}
		return out
	}
	policyCIDRs := func(t *testing.T, np *networkingv1.NetworkPolicy) (cidrs []string, namespace bool) {
		t.Helper()
		if len(np.Spec.Ingress) != 2 || np.Spec.Ingress[0].Ports[0].Port.IntValue() != install.DefaultProxyPort || np.Spec.Ingress[1].Ports[0].Port.IntValue() != 9090 {
			t.Fatalf("NetworkPolicy ingress: %+v", np.Spec.Ingress)
		}
		for _, p := range np.Spec.Ingress[0].From {
			switch {
			case p.IPBlock != nil:
				cidrs = append(cidrs, p.IPBlock.CIDR)
			case p.PodSelector != nil && p.NamespaceSelector == nil && len(p.PodSelector.MatchLabels) == 0:
				namespace = true
			}
		}
		return cidrs, namespace
	}

	// 1. Today's users: no Liqo, defaults. No NetworkPolicy, no RBAC, no token, no new arguments.
	if _, errOut, err := runApiproxy(t, kc, "install"); err != nil {
		t.Fatalf("install: %v\n%s", err, errOut)
	}
	if _, err := cs.NetworkingV1().NetworkPolicies(ns).Get(ctx, "apiproxy-proxy", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("NetworkPolicy without Liqo: %v, want none", err)
	}
	if _, err := cs.RbacV1().ClusterRoleBindings().Get(ctx, install.AuthBindingName(ns), metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("auth ClusterRoleBinding with auth none: %v, want none", err)
	}
	if args := proxyArgs(t); slices.Contains(args, "--allow-source") || slices.Contains(args, "--auth") {
		t.Errorf("default proxy args %v", args)
	}
	if sa, _ := cs.CoreV1().ServiceAccounts(ns).Get(ctx, "apiproxy-proxy", metav1.GetOptions{}); sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken {
		t.Errorf("the proxy's ServiceAccount automounts a token with auth none")
	}
	if r := statusReport(t, kc); r.ProxyAuth != install.AuthNone {
		t.Errorf("status proxyAuth = %q, want none", r.ProxyAuth)
	}

	// 2. Liqo peers: a peer (remapped pod 10.91.0.0/16, external 10.81.0.0/16), a node with a pod CIDR.
	cl.InstallCRDs(t, fixtures.MustConfigurationCRD(t, fixtures.V1_2_0))
	dyn := cl.Dynamic(t)
	fixtures.Create(ctx, t, dyn, fixtures.Configuration("liqo-tenant-cl01", "cl01", "cl01-id",
		fixtures.CIDRs{Pod: []string{"10.60.0.0/16"}, External: []string{"10.70.0.0/16"}}, &fixtures.CIDRs{Pod: []string{"10.91.0.0/16"}, External: []string{"10.81.0.0/16"}}))
	if _, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Spec: corev1.NodeSpec{PodCIDRs: []string{"10.244.0.0/24"}, PodCIDR: "10.244.0.0/24"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	secure := []string{"install", "--allow-source", "192.168.5.0/24", "--metrics-namespace-selector", "kubernetes.io/metadata.name=monitoring"}
	out, errOut, err := runApiproxy(t, kc, append(secure, "--dry-run=server", "-o", "json")...)
	if err != nil {
		t.Fatalf("server dry run: %v\n%s", err, errOut)
	}
	var list struct{ Items []json.RawMessage }
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatal(err)
	}
	var dryNP *networkingv1.NetworkPolicy
	for _, raw := range list.Items {
		var meta metav1.TypeMeta
		_ = json.Unmarshal(raw, &meta)
		if meta.Kind == "NetworkPolicy" {
			dryNP = &networkingv1.NetworkPolicy{}
			if err := json.Unmarshal(raw, dryNP); err != nil {
				t.Fatal(err)
			}
		}
	}
	if dryNP == nil {
		t.Fatalf("the server dry run rendered no NetworkPolicy:\n%s", errOut)
	}
	wantCIDRs := []string{"10.81.0.0/16", "10.91.0.0/16", "192.168.5.0/24"}
	if cidrs, nsRule := policyCIDRs(t, dryNP); !slices.Equal(cidrs, wantCIDRs) || !nsRule {
		t.Errorf("dry-run NetworkPolicy admits %v (this namespace: %v), want %v and this namespace", cidrs, nsRule, wantCIDRs)
	}
	if _, err := cs.NetworkingV1().NetworkPolicies(ns).Get(ctx, "apiproxy-proxy", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("a server dry run persisted the NetworkPolicy: %v", err)
	}

	if _, errOut, err := runApiproxy(t, kc, secure...); err != nil {
		t.Fatalf("install: %v\n%s", err, errOut)
	}
	np, err := cs.NetworkingV1().NetworkPolicies(ns).Get(ctx, "apiproxy-proxy", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if cidrs, _ := policyCIDRs(t, np); !slices.Equal(cidrs, wantCIDRs) {
		t.Errorf("NetworkPolicy admits %v, want %v", cidrs, wantCIDRs)
	}
	if sel := np.Spec.Ingress[1].From[0].NamespaceSelector; sel == nil || sel.MatchLabels["kubernetes.io/metadata.name"] != "monitoring" {
		t.Errorf("metrics port peers %+v", np.Spec.Ingress[1].From)
	}
	if got, want := flagValues(proxyArgs(t), "--allow-source"), []string{"10.244.0.0/24", "10.81.0.0/16", "10.91.0.0/16", "127.0.0.0/8", "192.168.5.0/24", "::1/128"}; !slices.Equal(got, want) {
		t.Errorf("proxy --allow-source %v, want %v (peers, --allow-source, this cluster's pod CIDR, loopback)", got, want)
	}

	// 3. A new peering, then re-running install: both follow.
	fixtures.Create(ctx, t, dyn, fixtures.Configuration("liqo-tenant-cl03", "cl03", "cl03-id",
		fixtures.CIDRs{Pod: []string{"10.60.0.0/16"}, External: []string{"10.70.0.0/16"}}, &fixtures.CIDRs{Pod: []string{"10.92.0.0/16"}, External: []string{"10.82.0.0/16"}}))
	if _, errOut, err := runApiproxy(t, kc, secure...); err != nil {
		t.Fatalf("install after a new peering: %v\n%s", err, errOut)
	}
	np, _ = cs.NetworkingV1().NetworkPolicies(ns).Get(ctx, "apiproxy-proxy", metav1.GetOptions{})
	if cidrs, _ := policyCIDRs(t, np); !slices.Equal(cidrs, []string{"10.81.0.0/16", "10.82.0.0/16", "10.91.0.0/16", "10.92.0.0/16", "192.168.5.0/24"}) {
		t.Errorf("NetworkPolicy after a new peering admits %v", cidrs)
	}
	if got := flagValues(proxyArgs(t), "--allow-source"); !slices.Contains(got, "10.82.0.0/16") || !slices.Contains(got, "10.92.0.0/16") {
		t.Errorf("proxy --allow-source after a new peering: %v", got)
	}

	// 4. --network-policy=false removes the policy and the proxy's allow-list.
	if _, errOut, err := runApiproxy(t, kc, "install", "--network-policy=false"); err != nil {
		t.Fatalf("install --network-policy=false: %v\n%s", err, errOut)
	}
	if _, err := cs.NetworkingV1().NetworkPolicies(ns).Get(ctx, "apiproxy-proxy", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("NetworkPolicy after --network-policy=false: %v", err)
	}
	if args := proxyArgs(t); slices.Contains(args, "--allow-source") {
		t.Errorf("proxy args after --network-policy=false: %v", args)
	}

	// 5. --auth tokenreview: the flag, the token, the RBAC of the reviews; status shows it.
	if _, errOut, err := runApiproxy(t, kc, "install", "--network-policy=false", "--auth", "tokenreview"); err != nil {
		t.Fatalf("install --auth tokenreview: %v\n%s", err, errOut)
	}
	if got := flagValues(proxyArgs(t), "--auth"); !slices.Equal(got, []string{"tokenreview"}) {
		t.Errorf("proxy --auth %v", got)
	}
	crb, err := cs.RbacV1().ClusterRoleBindings().Get(ctx, install.AuthBindingName(ns), metav1.GetOptions{})
	if err != nil || crb.RoleRef.Name != "system:auth-delegator" || len(crb.Subjects) != 1 || crb.Subjects[0].Kind != "ServiceAccount" ||
		crb.Subjects[0].Name != "apiproxy-proxy" || crb.Subjects[0].Namespace != ns || crb.Labels[install.LabelPartOf] != install.PartOf {
		t.Errorf("auth ClusterRoleBinding: %+v, %v", crb, err)
	}
	var d appsv1.Deployment
	raw, _ := cs.AppsV1().Deployments(ns).Get(ctx, "apiproxy-proxy", metav1.GetOptions{})
	d = *raw
	if a := d.Spec.Template.Spec.AutomountServiceAccountToken; a == nil || !*a {
		t.Errorf("the proxy pod does not mount its token with --auth tokenreview")
	}
	if r := statusReport(t, kc); r.ProxyAuth != install.AuthTokenReview {
		t.Errorf("status proxyAuth = %q", r.ProxyAuth)
	}
	if out, _, _ := runApiproxy(t, kc, "status"); !strings.Contains(out, "proxy auth: tokenreview") || !strings.Contains(out, "--clusterrole "+install.TunnelRoleName) {
		t.Errorf("status table (want the auth mode and how to grant a tunnel):\n%s", out)
	}
	if _, err := cs.RbacV1().ClusterRoles().Get(ctx, install.TunnelRoleName, metav1.GetOptions{}); err != nil {
		t.Errorf("ClusterRole %s after install --auth tokenreview: %v", install.TunnelRoleName, err)
	}
	if _, errOut, err := runApiproxy(t, kc, "install", "--network-policy=false"); err != nil {
		t.Fatalf("install (auth none again): %v\n%s", err, errOut)
	}
	if _, err := cs.RbacV1().ClusterRoleBindings().Get(ctx, install.AuthBindingName(ns), metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("auth ClusterRoleBinding after going back to auth none: %v", err)
	}
	if _, err := cs.RbacV1().ClusterRoles().Get(ctx, install.TunnelRoleName, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("ClusterRole %s after going back to auth none: %v", install.TunnelRoleName, err)
	}

	// 6. uninstall removes the NetworkPolicy and the ClusterRoleBinding with the rest.
	if _, errOut, err := runApiproxy(t, kc, "install", "--auth", "tokenreview"); err != nil {
		t.Fatalf("install: %v\n%s", err, errOut)
	}
	if _, errOut, err := runApiproxy(t, kc, "uninstall"); err != nil {
		t.Fatalf("uninstall: %v\n%s", err, errOut)
	}
	if _, err := cs.NetworkingV1().NetworkPolicies(ns).Get(ctx, "apiproxy-proxy", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("NetworkPolicy after uninstall: %v", err)
	}
	if _, err := cs.RbacV1().ClusterRoleBindings().Get(ctx, install.AuthBindingName(ns), metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("auth ClusterRoleBinding after uninstall: %v", err)
	}

	// 7. Bad input: clear errors.
	for args, want := range map[string][]string{
		`--network-policy "maybe"`:                {"install", "--network-policy", "maybe"},
		`--allow-source "10.1.2.3" is not a CIDR`: {"install", "--allow-source", "10.1.2.3"},
		`--auth "basic"`:                          {"install", "--auth", "basic"},
		"--metrics-namespace-selector":            {"install", "--metrics-namespace-selector", "a in (b"},
		"configure the proxy role":                {"install", "--roles", "node", "--auth", "tokenreview", "--node-ip", "169.254.20.11"},
	} {
		_, _, err := runApiproxy(t, kc, want...)
		if err == nil || !strings.Contains(err.Error(), strings.TrimPrefix(args, "")) {
			t.Errorf("%v: err = %v, want it to mention %q", want, err, args)
		}
	}
}
