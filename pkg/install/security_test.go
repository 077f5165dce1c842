package install

import (
	"io"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
)

// The NetworkPolicy and the auth RBAC decode strictly into their API types, and appear only when
// asked for; the defaults render neither (today's users see no change).
func TestRenderWhoMayTunnel(t *testing.T) {
	def, err := Render(DefaultOptions(), RenderInput{})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range def {
		if o.GetKind() == "NetworkPolicy" || o.GetKind() == "ClusterRoleBinding" || o.GetKind() == "ClusterRole" {
			t.Errorf("defaults render %s %s", o.GetKind(), o.GetName())
		}
	}
	var sa corev1.ServiceAccount
	find(t, def, "ServiceAccount", "apiproxy-proxy", &sa)
	if sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken {
		t.Error("defaults mount the proxy's token")
	}

	o := DefaultOptions()
	o.Auth = AuthTokenReview
	o.RenderNetworkPolicy = true
	o.PolicySources = []string{"10.81.0.0/16", "fd00:81::/64"}
	o.ProxyAllowSources = []string{"10.81.0.0/16", "127.0.0.0/8"}
	o.MetricsNamespaceSelector = "team in (obs,sre)"
	objs, err := Render(o, RenderInput{})
	if err != nil {
		t.Fatal(err)
	}
	var np networkingv1.NetworkPolicy
	find(t, objs, "NetworkPolicy", "apiproxy-proxy", &np)
	if np.Spec.PodSelector.MatchLabels["app.kubernetes.io/component"] != "proxy" || len(np.Spec.Ingress) != 2 {
		t.Fatalf("NetworkPolicy %+v", np.Spec)
	}
	var cidrs []string
	for _, p := range np.Spec.Ingress[0].From {
		if p.IPBlock != nil {
			cidrs = append(cidrs, p.IPBlock.CIDR)
		}
	}
	if !slices.Equal(cidrs, o.PolicySources) || np.Spec.Ingress[0].From[0].PodSelector == nil {
		t.Errorf("proxy port peers %+v", np.Spec.Ingress[0].From)
	}
	if sel := np.Spec.Ingress[1].From[0].NamespaceSelector; sel == nil || len(sel.MatchExpressions) != 1 || sel.MatchExpressions[0].Key != "team" {
		t.Errorf("metrics port peers %+v", np.Spec.Ingress[1].From)
	}
	var crb rbacv1.ClusterRoleBinding
	find(t, objs, "ClusterRoleBinding", AuthBindingName(o.Namespace), &crb)
	if crb.RoleRef.Name != "system:auth-delegator" || crb.Subjects[0].Name != "apiproxy-proxy" {
		t.Errorf("ClusterRoleBinding %+v", crb)
	}
	// Granting a tunnel is one clusterrolebinding to this role.
	var role rbacv1.ClusterRole
	find(t, objs, "ClusterRole", TunnelRoleName, &role)
	if len(role.Rules) != 1 || !slices.Equal(role.Rules[0].APIGroups, []string{"apiproxy.io"}) || !slices.Equal(role.Rules[0].Resources, []string{"tunnels"}) ||
		!slices.Equal(role.Rules[0].Verbs, []string{"create"}) || len(role.Rules[0].ResourceNames) != 0 {
		t.Errorf("ClusterRole %s rules %+v: want create on every tunnels.apiproxy.io", TunnelRoleName, role.Rules)
	}
	var d appsv1.Deployment
	find(t, objs, "Deployment", "apiproxy-proxy", &d)
	args := strings.Join(d.Spec.Template.Spec.Containers[0].Args, " ")
	if !strings.Contains(args, "--allow-source 10.81.0.0/16 --allow-source 127.0.0.0/8 --auth tokenreview") || !*d.Spec.Template.Spec.AutomountServiceAccountToken {
		t.Errorf("proxy args %q, automount %v", args, *d.Spec.Template.Spec.AutomountServiceAccountToken)
	}

	// A client dry run with --network-policy=true renders the policy from --allow-source alone.
	o = DefaultOptions()
	o.NetworkPolicy = NetworkPolicyTrue
	o.AllowSources = []string{"192.168.5.0/24"}
	objs, err = RenderOffline(o, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	find(t, objs, "NetworkPolicy", "apiproxy-proxy", &np)
	if np.Spec.Ingress[0].From[1].IPBlock == nil || np.Spec.Ingress[0].From[1].IPBlock.CIDR != "192.168.5.0/24" {
		t.Errorf("offline NetworkPolicy %+v", np.Spec.Ingress[0].From)
	}
}
