package install

import (
	"bytes"
	"encoding/pem"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/apiproxy/apiproxy/pkg/cmd/agent"
	"github.com/apiproxy/apiproxy/pkg/version"
)

func allRolesOptions() Options {
	o := DefaultOptions()
	o.Roles = AllRoles
	o.APIServerFQDN = "kubernetes.default.svc"
	o.APIServerPort = 443
	o.HostAliasIP = "10.96.0.2"
	return o
}

func renderAll(t *testing.T, o Options) []*unstructured.Unstructured {
	t.Helper()
	objs, err := RenderOffline(o, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

func find(t *testing.T, objs []*unstructured.Unstructured, kind, name string, into any) {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(o.Object, into, true); err != nil {
				t.Fatalf("%s %s does not decode strictly: %v", kind, name, err)
			}
			return
		}
	}
	t.Fatalf("no %s %s rendered", kind, name)
}

func TestRenderRolesSelectFilesAndLabelEverything(t *testing.T) {
	cases := map[string]struct {
		roles []Role
		kinds []string
	}{
		"proxy":   {[]Role{RoleProxy}, []string{"Namespace", "ServiceAccount", "Deployment", "Service", "PodDisruptionBudget"}},
		"node":    {[]Role{RoleNode}, []string{"Namespace", "ServiceAccount", "Role", "RoleBinding", "DaemonSet"}},
		"webhook": {[]Role{RoleWebhook}, []string{"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Secret", "Secret", "Deployment", "Service", "PodDisruptionBudget", "MutatingWebhookConfiguration"}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			o := allRolesOptions()
			o.Roles = tc.roles
			if !slices.Contains(tc.roles, RoleWebhook) {
				o.APIServerFQDN, o.APIServerPort, o.HostAliasIP = "", 0, ""
			}
			var kinds []string
			for _, obj := range renderAll(t, o) {
				kinds = append(kinds, obj.GetKind())
				l := obj.GetLabels()
				want := map[string]string{LabelPartOf: "apiproxy", LabelManagedBy: FieldManager, LabelInstallNamespace: o.Namespace,
					LabelVersion: VersionLabel(version.Get().Version)}
				for k, v := range want {
					if l[k] != v {
						t.Errorf("%s %s: label %s=%q, want %q", obj.GetKind(), obj.GetName(), k, l[k], v)
					}
				}
				if l[LabelComponent] == "" || l[LabelName] == "" {
					t.Errorf("%s %s lacks component/name labels: %v", obj.GetKind(), obj.GetName(), l)
				}
				clusterScoped := slices.Contains([]string{"Namespace", "MutatingWebhookConfiguration", "ClusterRole", "ClusterRoleBinding"}, obj.GetKind())
				if !clusterScoped && obj.GetNamespace() != o.Namespace {
					t.Errorf("%s %s in namespace %q, want %q", obj.GetKind(), obj.GetName(), obj.GetNamespace(), o.Namespace)
				}
				if tl, found, _ := unstructured.NestedStringMap(obj.Object, "spec", "template", "metadata", "labels"); found && tl[LabelPartOf] != PartOf {
					t.Errorf("%s %s: pod template lacks %s", obj.GetKind(), obj.GetName(), LabelPartOf)
				}
			}
			if !slices.Equal(kinds, tc.kinds) {
				t.Errorf("kinds = %v, want %v", kinds, tc.kinds)
			}
		})
	}
}

func TestRenderProxyDeploymentIsHardened(t *testing.T) {
	o := DefaultOptions()
	o.ProxyPort = 3128
	objs := renderAll(t, o)
	var d appsv1.Deployment
	find(t, objs, "Deployment", "apiproxy-proxy", &d)
	if *d.Spec.Replicas != 2 {
		t.Errorf("replicas = %d, want 2", *d.Spec.Replicas)
	}
	ps := d.Spec.Template.Spec
	if ps.AutomountServiceAccountToken == nil || *ps.AutomountServiceAccountToken {
		t.Error("the proxy must not get a service-account token")
	}
	if ps.SecurityContext.RunAsNonRoot == nil || !*ps.SecurityContext.RunAsNonRoot {
		t.Error("the proxy must run as non-root")
	}
	c := ps.Containers[0]
	if c.SecurityContext.ReadOnlyRootFilesystem == nil || !*c.SecurityContext.ReadOnlyRootFilesystem {
		t.Error("the proxy needs a read-only root filesystem")
	}
	if c.LivenessProbe == nil || c.ReadinessProbe == nil || c.ReadinessProbe.Exec == nil ||
		!slices.Equal(c.ReadinessProbe.Exec.Command, []string{agentBinary, "probe", "--addr", "127.0.0.1:9090", "--path", "/readyz?verbose"}) {
		t.Errorf("probes: %+v %+v", c.LivenessProbe, c.ReadinessProbe)
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("resources: %+v", c.Resources)
	}
	if !slices.Equal(c.Args, []string{"proxy", "--listen", ":3128", "--metrics-addr", ":9090", "--shutdown-delay", "5s", "--readiness-dial-upstream", "--handoff-dir", handoffMount}) {
		t.Errorf("args = %v", c.Args)
	}
	// A second proxy process shares the proxy port (through the pod's emptyDir), with its own metrics.
	if len(ps.Containers) != 2 {
		t.Fatalf("%d containers, want proxy and proxy-2", len(ps.Containers))
	}
	c2 := ps.Containers[1]
	if c2.Name != "proxy-2" || !slices.Equal(c2.Args, []string{"proxy", "--listen", ":3128", "--metrics-addr", ":9092", "--shutdown-delay", "5s", "--readiness-dial-upstream", "--handoff-dir", handoffMount}) {
		t.Errorf("second container %s args = %v", c2.Name, c2.Args)
	}
	if len(c2.Ports) != 1 || c2.Ports[0].ContainerPort != 9092 || c2.ReadinessProbe.Exec.Command[3] != "127.0.0.1:9092" {
		t.Errorf("second container ports %+v, readiness %+v", c2.Ports, c2.ReadinessProbe)
	}
	if len(ps.Volumes) != 1 || ps.Volumes[0].EmptyDir == nil || ps.Volumes[0].Name != "handoff" {
		t.Errorf("volumes = %+v, want the handoff emptyDir", ps.Volumes)
	}
	if c.Image != DefaultImage() {
		t.Errorf("image = %s, want %s", c.Image, DefaultImage())
	}
	var svc corev1.Service
	find(t, objs, "Service", "apiproxy-proxy", &svc)
	if p := svc.Spec.Ports[0]; p.Name != "http" || p.Port != 3128 {
		t.Errorf("service port = %+v, want http 3128", p)
	}
	var pdb policyv1.PodDisruptionBudget
	find(t, objs, "PodDisruptionBudget", "apiproxy-proxy", &pdb)
	if pdb.Spec.MinAvailable.IntValue() != 1 {
		t.Errorf("pdb minAvailable = %v", pdb.Spec.MinAvailable)
	}
	var ns corev1.Namespace
	find(t, objs, "Namespace", DefaultNamespace, &ns)
	if ns.Labels["pod-security.kubernetes.io/enforce"] != "restricted" {
		t.Errorf("proxy-only namespace should be restricted: %v", ns.Labels)
	}
}

func TestRenderNodeDaemonSet(t *testing.T) {
	for _, iptables := range []bool{false, true} {
		o := DefaultOptions()
		o.Roles = []Role{RoleNode}
		o.SetupIPTables = iptables
		o.UpstreamProxy = "http://10.81.0.3:8118"
		o.Upstream = "192.168.1.10:6443"
		objs := renderAll(t, o)
		var ds appsv1.DaemonSet
		find(t, objs, "DaemonSet", "apiproxy-node", &ds)
		ps := ds.Spec.Template.Spec
		if !ps.HostNetwork || ps.PriorityClassName != "system-node-critical" {
			t.Errorf("hostNetwork=%v priorityClass=%q", ps.HostNetwork, ps.PriorityClassName)
		}
		if len(ps.Tolerations) != 1 || ps.Tolerations[0].Operator != corev1.TolerationOpExists || ps.Tolerations[0].Key != "" {
			t.Errorf("tolerations = %+v, want tolerate everything", ps.Tolerations)
		}
		init := ps.InitContainers[0]
		if !slices.Contains(init.Args, "--daemon=false") || !slices.Contains(init.Args, "apiproxy0") || !slices.Contains(init.Args, DefaultNodeIP) {
			t.Errorf("init args = %v", init.Args)
		}
		// Surge: the new pod takes the sockets over before the old one stops; so no host ports.
		if ru := ds.Spec.UpdateStrategy.RollingUpdate; ru == nil || ru.MaxSurge.IntValue() != 1 || ru.MaxUnavailable.IntValue() != 0 {
			t.Errorf("updateStrategy %+v, want maxSurge 1, maxUnavailable 0", ds.Spec.UpdateStrategy)
		}
		if len(ps.Containers) != 3 {
			t.Fatalf("%d containers, want node, proxy and proxy-2", len(ps.Containers))
		}
		sidecar, proxy, proxy2 := ps.Containers[0], ps.Containers[1], ps.Containers[2]
		for _, c := range ps.Containers {
			if len(c.Ports) > 0 {
				t.Errorf("%s declares ports %+v: host ports in a hostNetwork pod keep the surge pod off the node", c.Name, c.Ports)
			}
			socket := healthMount + "/" + c.Name + ".sock"
			want := []string{agentBinary, "probe", "--socket", socket, "--path", "/readyz?verbose"}
			if c.ReadinessProbe == nil || c.ReadinessProbe.Exec == nil || !slices.Equal(c.ReadinessProbe.Exec.Command, want) {
				t.Errorf("%s readiness probe %+v, want exec %v", c.Name, c.ReadinessProbe, want)
			}
			if i := slices.Index(c.Args, "--health-socket"); i < 0 || c.Args[i+1] != socket {
				t.Errorf("%s args %v lack --health-socket %s", c.Name, c.Args, socket)
			}
			if i := slices.Index(c.Args, "--handoff-dir"); i < 0 || c.Args[i+1] != handoffMount+"/"+DefaultNamespace {
				t.Errorf("%s args %v lack --handoff-dir %s/%s", c.Name, c.Args, handoffMount, DefaultNamespace)
			}
		}
		var handoffVol *corev1.Volume
		for i := range ps.Volumes {
			if ps.Volumes[i].Name == "handoff" {
				handoffVol = &ps.Volumes[i]
			}
		}
		if handoffVol == nil || handoffVol.HostPath == nil || handoffVol.HostPath.Path != "/run/apiproxy" {
			t.Errorf("handoff volume %+v, want hostPath /run/apiproxy", handoffVol)
		}
		if slices.Contains(sidecar.Args, "--daemon=false") || sidecar.Args[0] != "node" {
			t.Errorf("sidecar args = %v", sidecar.Args)
		}
		for _, c := range []corev1.Container{init, sidecar} {
			caps := c.SecurityContext.Capabilities.Add
			if !slices.Contains(caps, "NET_ADMIN") || slices.Contains(caps, "NET_RAW") != iptables {
				t.Errorf("iptables=%v: %s caps = %v", iptables, c.Name, caps)
			}
			if slices.Contains(c.Args, "--setup-iptables") != iptables {
				t.Errorf("iptables=%v: %s args = %v", iptables, c.Name, c.Args)
			}
			hasMount := slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.MountPath == "/run/xtables.lock" })
			if hasMount != iptables {
				t.Errorf("iptables=%v: %s mounts = %v", iptables, c.Name, c.VolumeMounts)
			}
		}
		// Only the sidecar reaches the API server, and only to ask whether its DaemonSet is deleted.
		if ps.AutomountServiceAccountToken == nil || *ps.AutomountServiceAccountToken {
			t.Error("the pod must not automount a token into every container")
		}
		const tokenDir = "/var/run/secrets/kubernetes.io/serviceaccount"
		for _, c := range []corev1.Container{init, sidecar, proxy, proxy2} {
			has := slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.MountPath == tokenDir && m.ReadOnly })
			if has != (c.Name == "node") {
				t.Errorf("%s: token mounted = %v, want it in the node container only", c.Name, has)
			}
		}
		var tokenVol *corev1.Volume
		for i := range ps.Volumes {
			if ps.Volumes[i].Name == "api-access" {
				tokenVol = &ps.Volumes[i]
			}
		}
		if tokenVol == nil || tokenVol.Projected == nil || len(tokenVol.Projected.Sources) != 3 || tokenVol.Projected.Sources[0].ServiceAccountToken == nil {
			t.Errorf("api-access volume = %+v, want a projected token, CA and namespace", tokenVol)
		}
		if i := slices.Index(sidecar.Args, "--cleanup-when-owner-deleted"); i < 0 || sidecar.Args[i+1] != DefaultNamespace+"/apiproxy-node" || slices.Contains(sidecar.Args, "--cleanup") {
			t.Errorf("sidecar args = %v, want --cleanup-when-owner-deleted %s/apiproxy-node and no --cleanup", sidecar.Args, DefaultNamespace)
		}
		env := map[string]string{}
		for _, e := range sidecar.Env {
			env[e.Name] = e.Value
		}
		if env["KUBERNETES_SERVICE_HOST"] != "192.168.1.10" || env["KUBERNETES_SERVICE_PORT"] != "6443" {
			t.Errorf("with --upstream the owner check must reach the API server there, not through kube-proxy: env %v", sidecar.Env)
		}
		if slices.Contains(init.Args, "--cleanup-when-owner-deleted") {
			t.Errorf("init args = %v: a one-shot sync must not clean up", init.Args)
		}
		var role rbacv1.Role
		find(t, objs, "Role", "apiproxy-node", &role)
		wantRules := []rbacv1.PolicyRule{{APIGroups: []string{"apps"}, Resources: []string{"daemonsets"}, ResourceNames: []string{"apiproxy-node"}, Verbs: []string{"get"}}}
		if !reflect.DeepEqual(role.Rules, wantRules) {
			t.Errorf("node Role rules = %+v, want exactly %+v", role.Rules, wantRules)
		}
		var rb rbacv1.RoleBinding
		find(t, objs, "RoleBinding", "apiproxy-node", &rb)
		if rb.RoleRef.Name != "apiproxy-node" || len(rb.Subjects) != 1 || rb.Subjects[0].Name != ps.ServiceAccountName || rb.Subjects[0].Namespace != DefaultNamespace {
			t.Errorf("node RoleBinding = %+v", rb)
		}
		for i, c := range []corev1.Container{proxy, proxy2} {
			want := []string{"proxy", "--listen", "169.254.20.11:8118", "--listen-tcp", "169.254.20.11:443", "--metrics-addr", fmt.Sprintf("169.254.20.11:%d", 9191+i),
				"--health-socket", healthMount + "/" + c.Name + ".sock", "--handoff-dir", handoffMount + "/" + DefaultNamespace, "--readiness-dial-upstream",
				"--upstream", "192.168.1.10:6443", "--upstream-proxy", "http://10.81.0.3:8118"}
			if !slices.Equal(c.Args, want) {
				t.Errorf("forwarder %s args = %v, want %v", c.Name, c.Args, want)
			}
			if slices.Contains(c.SecurityContext.Capabilities.Add, "NET_ADMIN") {
				t.Errorf("the forwarder %s must not get NET_ADMIN", c.Name)
			}
		}
		var ns corev1.Namespace
		find(t, objs, "Namespace", DefaultNamespace, &ns)
		if ns.Labels["pod-security.kubernetes.io/enforce"] != "privileged" {
			t.Errorf("the node role needs a privileged namespace: %v", ns.Labels)
		}
	}
}

func TestRenderWebhook(t *testing.T) {
	o := allRolesOptions()
	o.Namespace = "tenant-a"
	objs := renderAll(t, o)
	var mwc admissionregistrationv1.MutatingWebhookConfiguration
	find(t, objs, "MutatingWebhookConfiguration", "apiproxy-webhook-tenant-a", &mwc)
	w := mwc.Webhooks[0]
	if *w.FailurePolicy != admissionregistrationv1.Ignore || *w.TimeoutSeconds != 2 || *w.SideEffects != admissionregistrationv1.SideEffectClassNone ||
		*w.ReinvocationPolicy != admissionregistrationv1.IfNeededReinvocationPolicy || !slices.Equal(w.AdmissionReviewVersions, []string{"v1", "v1beta1"}) {
		t.Errorf("webhook policy: %+v", w)
	}
	if r := w.Rules[0]; !slices.Equal(r.Operations, []admissionregistrationv1.OperationType{admissionregistrationv1.Create}) || !slices.Equal(r.Resources, []string{"pods"}) {
		t.Errorf("rules = %+v", w.Rules)
	}
	if len(w.Rules) != 2 || !slices.Equal(w.Rules[1].Operations, []admissionregistrationv1.OperationType{admissionregistrationv1.Update}) || !slices.Equal(w.Rules[1].Resources, []string{"pods/ephemeralcontainers"}) {
		t.Errorf("rules = %+v, want the ephemeralcontainers subresource too", w.Rules)
	}
	// The webhook's only API access: get on configmaps (envFrom), bound to its service account.
	var role rbacv1.ClusterRole
	find(t, objs, "ClusterRole", "apiproxy-webhook-tenant-a-configmap-reader", &role)
	if len(role.Rules) != 1 || !slices.Equal(role.Rules[0].Resources, []string{"configmaps"}) || !slices.Equal(role.Rules[0].Verbs, []string{"get"}) {
		t.Errorf("webhook ClusterRole rules = %+v, want get on configmaps only", role.Rules)
	}
	var binding rbacv1.ClusterRoleBinding
	find(t, objs, "ClusterRoleBinding", "apiproxy-webhook-tenant-a-configmap-reader", &binding)
	if binding.RoleRef.Name != role.Name || len(binding.Subjects) != 1 || binding.Subjects[0].Name != "apiproxy-webhook" || binding.Subjects[0].Namespace != "tenant-a" {
		t.Errorf("webhook ClusterRoleBinding = %+v", binding)
	}
	if s := w.ClientConfig.Service; s == nil || s.Namespace != "tenant-a" || *s.Path != "/webhook/pod-apiserver-env" {
		t.Errorf("clientConfig = %+v", w.ClientConfig)
	}
	nsExprs := w.NamespaceSelector.MatchExpressions
	if len(nsExprs) != 2 || nsExprs[0].Key != "apiproxy.io/inject" || nsExprs[0].Values[0] != "disabled" ||
		nsExprs[1].Key != "kubernetes.io/metadata.name" || nsExprs[1].Values[0] != "tenant-a" {
		t.Errorf("namespaceSelector = %+v", nsExprs)
	}
	if e := w.ObjectSelector.MatchExpressions; len(e) != 1 || e[0].Key != "apiproxy.io/inject" || string(e[0].Operator) != "NotIn" {
		t.Errorf("objectSelector = %+v", e)
	}
	var tls corev1.Secret
	find(t, objs, "Secret", tlsSecretName, &tls)
	if !bytes.Equal(w.ClientConfig.CABundle, tls.Data["ca.crt"]) {
		t.Error("caBundle differs from the CA stored with the serving certificate")
	}
	block, _ := pem.Decode(tls.Data["tls.crt"])
	if block == nil {
		t.Fatal("no serving certificate")
	}
	var d appsv1.Deployment
	find(t, objs, "Deployment", "apiproxy-webhook", &d)
	args := d.Spec.Template.Spec.Containers[0].Args
	for _, want := range []string{"--apiserver-fqdn", "kubernetes.default.svc", "--apiserver-port", "443", "--host-alias-ip", "10.96.0.2", "--cert-dir", webhookCertDir} {
		if !slices.Contains(args, want) {
			t.Errorf("webhook args %v lack %q", args, want)
		}
	}
	// The CA key must stay out of the pod: only tls.crt and tls.key are projected.
	for _, v := range d.Spec.Template.Spec.Volumes {
		if v.Secret == nil || v.Secret.SecretName != tlsSecretName || len(v.Secret.Items) != 2 {
			t.Errorf("webhook volume %+v", v)
		}
	}
}

// The rendered arguments are a contract with the agent's roles: parse them with the real commands.
func TestRenderedArgsParseWithTheAgentCommands(t *testing.T) {
	o := allRolesOptions()
	o.SetupIPTables = true
	o.UpstreamProxy = "http://token:eyJ-token@10.81.0.3:8118" // credentials add a flag
	o.Upstream = "[fd00::1]:6443"
	var checked, probes int
	parse := func(args []string) {
		t.Helper()
		root := agent.NewRootCommand(io.Discard, io.Discard)
		cmd, rest, err := root.Find(args)
		if err != nil || cmd == root {
			t.Fatalf("agent has no role for %v: %v", args, err)
		}
		if err := cmd.ParseFlags(rest); err != nil {
			t.Errorf("agent %s rejects %v: %v", cmd.Name(), rest, err)
		}
	}
	for _, obj := range renderAll(t, o) {
		for _, field := range []string{"initContainers", "containers"} {
			cs, _, _ := unstructured.NestedSlice(obj.Object, "spec", "template", "spec", field)
			for _, c := range cs {
				args, _, _ := unstructured.NestedStringSlice(c.(map[string]any), "args")
				parse(args)
				checked++
				// Exec probes run the agent binary of the image with `probe`.
				for _, probe := range []string{"livenessProbe", "readinessProbe"} {
					if cmd, found, _ := unstructured.NestedStringSlice(c.(map[string]any), probe, "exec", "command"); found {
						if cmd[0] != agentBinary {
							t.Errorf("%s runs %s, want the image's %s", probe, cmd[0], agentBinary)
						}
						parse(cmd[1:])
						probes++
					}
				}
			}
		}
	}
	if checked != 7 || probes != 8 {
		t.Errorf("checked %d containers and %d exec probes, want 7 (proxy x2, node init+sidecar+2 forwarders, webhook) and 8", checked, probes)
	}
}

func TestValidateSaysWhatToFix(t *testing.T) {
	cases := []struct {
		name string
		edit func(*Options)
		want string
	}{
		{"node ip", func(o *Options) { o.Roles = []Role{RoleNode}; o.NodeIP = "not-an-ip" }, "--node-ip"},
		{"loopback node ip", func(o *Options) { o.Roles = []Role{RoleNode}; o.NodeIP = "127.0.0.5" }, "loopback"},
		{"NodeLocal DNSCache's ip", func(o *Options) { o.Roles = []Role{RoleNode}; o.NodeIP = "169.254.20.10" }, "NodeLocal DNSCache"},
		{"metadata ip", func(o *Options) { o.Roles = []Role{RoleNode}; o.NodeIP = "169.254.169.254" }, "cloud metadata"},
		{"interface", func(o *Options) { o.Roles = []Role{RoleNode}; o.NodeInterface = "way-too-long-interface" }, "--node-interface"},
		{"proxy port", func(o *Options) { o.ProxyPort = 70000 }, "--proxy-port"},
		{"webhook without fqdn", func(o *Options) { o.Roles = []Role{RoleWebhook} }, "--apiserver-fqdn"},
		{"bad fqdn", func(o *Options) { o.Roles = []Role{RoleWebhook}; o.APIServerFQDN = "a b" }, "not a DNS name"},
		{"fqdn without webhook", func(o *Options) { o.APIServerFQDN = "x.example" }, "only applies to the webhook role"},
		{"upstream proxy scheme", func(o *Options) { o.Roles = []Role{RoleNode}; o.UpstreamProxy = "10.0.0.1:8118" }, "http://HOST:PORT"},
		{"upstream proxy without node", func(o *Options) { o.UpstreamProxy = "http://10.81.0.3:8118" }, "node role"},
		{"host alias", func(o *Options) { o.Roles = []Role{RoleWebhook}; o.APIServerFQDN = "a.b"; o.HostAliasIP = "x" }, "--host-alias-ip"},
		{"upstream", func(o *Options) { o.Upstream = "10.0.0.1" }, "--upstream"},
		{"upstream without proxy or node", func(o *Options) { o.Roles = []Role{RoleWebhook}; o.APIServerFQDN = "a.b"; o.Upstream = "10.0.0.1:6443" }, "proxy and node roles"},
		{"create ip", func(o *Options) { o.CreateIP = "maybe" }, "auto, true or false"},
		{"namespace", func(o *Options) { o.Namespace = "Bad_NS" }, "namespace"},
		{"image", func(o *Options) { o.Image = "" }, "--image"},
		{"image with spaces", func(o *Options) { o.Image = "ghcr.io/apiproxy/agent :v1" }, "--image"},
		{"image with scheme", func(o *Options) { o.Image = "https://ghcr.io/apiproxy/agent:v1" }, "URL scheme"},
		{"registry with scheme", func(o *Options) { o.Registry = "https://mirror.example" }, "--registry"},
		{"registry with tag", func(o *Options) { o.Registry = "mirror.example/x:tag" }, "has a tag"},
		{"registry with spaces", func(o *Options) { o.Registry = "mirror.example/a b" }, "contains spaces"},
		{"pull secret", func(o *Options) { o.ImagePullSecrets = []string{"ok", "Not_OK"} }, `--image-pull-secret "Not_OK"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := DefaultOptions()
			tc.edit(&o)
			err := o.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want one mentioning %q", err, tc.want)
			}
		})
	}
	if _, err := ParseRoles([]string{"proxy,gateway"}); err == nil || !strings.Contains(err.Error(), "gateway") {
		t.Errorf("ParseRoles(gateway) err = %v", err)
	}
	if r, err := ParseRoles([]string{"webhook,proxy", "node"}); err != nil || !slices.Equal(r, AllRoles) {
		t.Errorf("ParseRoles = %v, %v; want apply order %v", r, err, AllRoles)
	}
	if _, err := ParseDryRun("yes"); err == nil || !strings.Contains(err.Error(), "none, client or server") {
		t.Errorf("ParseDryRun(yes) err = %v", err)
	}
}

func TestVersionLabel(t *testing.T) {
	if got := VersionLabel("v1.2.3+build.5"); got != "v1.2.3-build.5" {
		t.Errorf("VersionLabel = %q", got)
	}
}

// Credentials in --upstream-proxy go into a Secret that the node forwarders mount and read
// (--upstream-proxy-credentials-file), never into an argument; without them no Secret is rendered.
func TestUpstreamProxyCredentialsGoIntoASecret(t *testing.T) {
	const token = "eyJhbGciOi.secret-part"
	o := DefaultOptions()
	o.Roles = []Role{RoleNode}
	o.UpstreamProxy = "http://token:" + token + "@10.81.0.3:8118"
	objs := renderAll(t, o)
	var secret corev1.Secret
	find(t, objs, "Secret", upstreamProxySecretName, &secret)
	if got := secret.StringData[upstreamProxyKey]; got != "token:"+token {
		t.Errorf("secret %s: %q = %q, want token:TOKEN", upstreamProxySecretName, upstreamProxyKey, got)
	}
	var ds appsv1.DaemonSet
	find(t, objs, "DaemonSet", nodeDaemonSetName, &ds)
	forwarders := 0
	for _, c := range ds.Spec.Template.Spec.Containers {
		if strings.Contains(strings.Join(c.Args, " "), token) || strings.Contains(strings.Join(c.Command, " "), token) {
			t.Errorf("container %s has the token in its command line: %v", c.Name, c.Args)
		}
		if !slices.Contains(c.Args, "--upstream-proxy") {
			continue
		}
		forwarders++
		i := slices.Index(c.Args, "--upstream-proxy")
		if c.Args[i+1] != "http://10.81.0.3:8118" {
			t.Errorf("%s: --upstream-proxy %s, want the URL without credentials", c.Name, c.Args[i+1])
		}
		j := slices.Index(c.Args, "--upstream-proxy-credentials-file")
		if j < 0 || c.Args[j+1] != upstreamProxyMount+"/"+upstreamProxyKey {
			t.Errorf("%s: no --upstream-proxy-credentials-file %s/%s: %v", c.Name, upstreamProxyMount, upstreamProxyKey, c.Args)
		}
		if !slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool {
			return m.Name == "upstream-proxy" && m.MountPath == upstreamProxyMount && m.ReadOnly
		}) {
			t.Errorf("%s does not mount the credentials read-only at %s: %+v", c.Name, upstreamProxyMount, c.VolumeMounts)
		}
	}
	if forwarders != 2 {
		t.Errorf("%d forwarders use --upstream-proxy, want 2", forwarders)
	}
	if !slices.ContainsFunc(ds.Spec.Template.Spec.Volumes, func(v corev1.Volume) bool {
		return v.Secret != nil && v.Secret.SecretName == upstreamProxySecretName
	}) {
		t.Errorf("no volume of secret %s", upstreamProxySecretName)
	}

	o.UpstreamProxy = "http://10.81.0.3:8118"
	for _, obj := range renderAll(t, o) {
		if obj.GetKind() == "Secret" {
			t.Errorf("secret %s rendered for an --upstream-proxy without credentials", obj.GetName())
		}
	}
	// A bad URL's message does not repeat the token.
	o.UpstreamProxy = "http://token:" + token + "@10.81.0.3"
	if err := o.Validate(); err == nil || strings.Contains(err.Error(), token) {
		t.Errorf("bad --upstream-proxy: err = %v (want an error without the token)", err)
	}
}
