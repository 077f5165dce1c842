package install

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/apiproxy/apiproxy/pkg/install/diagnose"
	"github.com/apiproxy/apiproxy/pkg/version"
)

// Report is `status`: what is installed in a namespace and whether it is ready.
type Report struct {
	Namespace     string `json:"namespace"`
	PluginVersion string `json:"pluginVersion"`
	// PluginAgentImage is the agent image this plugin pins by digest (release builds; "" in dev builds).
	PluginAgentImage string       `json:"pluginAgentImage,omitempty"`
	Ready            bool         `json:"ready"`
	Roles            []RoleStatus `json:"roles"`
	IP               IPStatus     `json:"ipResource"`
	// ProxyAuth is the installed proxy's --auth mode ("" when the proxy role is not installed).
	ProxyAuth AuthMode `json:"proxyAuth,omitempty"`
}

// RoleStatus is one role's objects and readiness.
type RoleStatus struct {
	Role      Role           `json:"role"`
	Installed bool           `json:"installed"`
	Ready     bool           `json:"ready"`
	Objects   []ObjectStatus `json:"objects,omitempty"`
	// Images are the container images of the role's workloads; VersionSkew is set when one of them is
	// not the agent this plugin installs (WorkloadImages say which and why).
	Images      []string `json:"images,omitempty"`
	VersionSkew bool     `json:"versionSkew"`
	// WorkloadImages compare each workload's image, and the digests its pods run, with this plugin's
	// pinned digest (or, in a dev build, its version).
	WorkloadImages []WorkloadImage `json:"workloadImages,omitempty"`
	// Problems say why the role's workload is not ready (the diagnosis install --wait gives).
	Problems []diagnose.Problem `json:"problems,omitempty"`
}

// ObjectStatus is one installed object.
type ObjectStatus struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
	Ready     bool   `json:"ready"`
	Message   string `json:"message,omitempty"`
}

// IPStatus is Liqo's IP resource for the proxy.
type IPStatus struct {
	// CRDServed is false when the cluster has no Liqo IPAM.
	CRDServed bool   `json:"crdServed"`
	Found     bool   `json:"found"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name,omitempty"`
	// LocalIP is spec.ip; ProxyClusterIP the proxy Service's, which it must equal.
	LocalIP        string            `json:"localIP,omitempty"`
	ProxyClusterIP string            `json:"proxyClusterIP,omitempty"`
	RemappedIP     string            `json:"remappedIP,omitempty"`
	RemappedCIDR   string            `json:"remappedCIDR,omitempty"`
	IPMappings     map[string]string `json:"ipMappings,omitempty"`
	Message        string            `json:"message"`
}

// GetStatus collects the Report of the install in namespace.
func GetStatus(ctx context.Context, c *Client, namespace string) (*Report, error) {
	plugin := Plugin{Version: version.Get().Version, AgentImage: version.AgentImage}
	r := &Report{Namespace: namespace, PluginVersion: plugin.Version, PluginAgentImage: plugin.AgentImage}
	objs, err := listInstalled(ctx, c, namespace)
	if err != nil {
		return nil, err
	}
	pods, err := installedPods(ctx, c, namespace)
	if err != nil {
		return nil, err
	}
	var caPEM []byte
	for _, o := range objs {
		if o.GetKind() == "Secret" && o.GetName() == tlsSecretName {
			data, _, _ := unstructured.NestedStringMap(o.Object, "data")
			caPEM, _ = decodeB64(data["ca.crt"])
		}
	}
	r.Ready = true
	anyInstalled := false
	for _, role := range AllRoles {
		rs := RoleStatus{Role: role, Ready: true}
		for _, o := range objs {
			if o.GetLabels()[LabelComponent] != string(role) || o.GetKind() == "IP" {
				continue
			}
			rs.Installed = true
			st := objectStatus(o, caPEM, time.Now())
			rs.Ready = rs.Ready && st.Ready
			rs.Objects = append(rs.Objects, st)
			for _, wi := range workloadImages(o, pods, plugin) {
				if !slices.Contains(rs.Images, wi.Image) {
					rs.Images = append(rs.Images, wi.Image)
				}
				rs.VersionSkew = rs.VersionSkew || !wi.Matches
				rs.WorkloadImages = append(rs.WorkloadImages, wi)
			}
		}
		if !rs.Installed {
			rs.Ready = false
		} else {
			if !rs.Ready {
				if rs.Problems, err = roleProblems(ctx, c, namespace, role, objs); err != nil {
					return nil, err
				}
			}
			anyInstalled = true
			r.Ready = r.Ready && rs.Ready
		}
		r.Roles = append(r.Roles, rs)
	}
	r.Ready = r.Ready && anyInstalled
	r.ProxyAuth = installedProxyAuth(objs)
	r.IP, err = ipStatus(ctx, c, namespace, objs)
	return r, err
}

// problemsSince is how far back status looks at controller events (FailedCreate).
const problemsSince = 5 * time.Minute

// roleProblems diagnoses a role's workload that is not ready, with the code --wait uses: its pods,
// their events and (best effort) the last log lines of failing containers.
func roleProblems(ctx context.Context, c *Client, namespace string, role Role, objs []*unstructured.Unstructured) ([]diagnose.Problem, error) {
	ref, ok := roleWorkloads[role]
	if !ok || c.Typed == nil {
		return nil, nil
	}
	var workload *unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() == ref.Kind && o.GetName() == ref.Name {
			workload = o
		}
	}
	if workload == nil {
		return nil, nil
	}
	podList, err := c.Typed.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: RoleSelector(namespace, role)})
	if err != nil {
		return nil, fmt.Errorf("listing the %s role's pods: %w", role, err)
	}
	eventList, err := c.Typed.CoreV1().Events(namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing the events of namespace %s: %w", namespace, err)
	}
	pods := make([]*corev1.Pod, len(podList.Items))
	for i := range podList.Items {
		pods[i] = &podList.Items[i]
	}
	now := time.Now()
	s := judge(ref, workload, pods, eventList.Items, now.Add(-problemsSince), now)
	diagnose.AddLogs(ctx, diagnose.ClientLogs(c.Typed), namespace, s.problems)
	return s.problems, nil
}

// listInstalled lists every object of every managed kind carrying this install's labels.
func listInstalled(ctx context.Context, c *Client, namespace string) ([]*unstructured.Unstructured, error) {
	var out []*unstructured.Unstructured
	for _, gvk := range managedKinds {
		items, err := listKind(ctx, c, gvk, namespace)
		if err != nil {
			return nil, err
		}
		out = append(out, items...)
	}
	return out, nil
}

func listKind(ctx context.Context, c *Client, gvk schema.GroupVersionKind, namespace string) ([]*unstructured.Unstructured, error) {
	ok, err := c.served(gvk)
	if err != nil || !ok {
		return nil, err
	}
	// Liqo's IP lives in the Liqo namespace; the install-namespace label keeps the list exact.
	listNS := namespace
	if gvk == gvkIP {
		listNS = metav1.NamespaceAll
	}
	ri, _, err := c.resourceFor(gvk, listNS)
	if err != nil {
		return nil, err
	}
	list, err := ri.List(ctx, metav1.ListOptions{LabelSelector: Selector(namespace)})
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", gvk.Kind, err)
	}
	var out []*unstructured.Unstructured
	for i := range list.Items {
		item := &list.Items[i]
		item.SetAPIVersion(gvk.GroupVersion().String())
		item.SetKind(gvk.Kind)
		out = append(out, item)
	}
	return out, nil
}

func objectStatus(o *unstructured.Unstructured, webhookCA []byte, now time.Time) ObjectStatus {
	st := ObjectStatus{Kind: o.GetKind(), Namespace: o.GetNamespace(), Name: o.GetName(), Ready: true}
	switch o.GetKind() {
	case "Deployment", "DaemonSet":
		var failed error
		st.Ready, st.Message, failed = diagnose.Rollout(o)
		if failed != nil {
			st.Message = failed.Error()
		}
	case "MutatingWebhookConfiguration":
		hooks, _, _ := unstructured.NestedSlice(o.Object, "webhooks")
		st.Ready, st.Message = false, "no webhook entry"
		if len(hooks) > 0 {
			bundle, _, _ := unstructured.NestedString(hooks[0].(map[string]any), "clientConfig", "caBundle")
			b, _ := decodeB64(bundle)
			switch {
			case len(webhookCA) == 0:
				st.Message = "secret " + tlsSecretName + " not found: re-run install"
			case !bytes.Equal(b, webhookCA):
				st.Message = "caBundle differs from the CA in secret " + tlsSecretName + ": re-run install"
			default:
				st.Ready, st.Message = true, "caBundle matches the serving certificate's CA"
			}
		}
	case "Service":
		ip, _, _ := unstructured.NestedString(o.Object, "spec", "clusterIP")
		ports, _, _ := unstructured.NestedSlice(o.Object, "spec", "ports")
		var ps []string
		for _, p := range ports {
			if m, ok := p.(map[string]any); ok {
				ps = append(ps, fmt.Sprintf("%v/%v", m["name"], m["port"]))
			}
		}
		st.Message = "clusterIP " + ip + ", ports " + strings.Join(ps, ",")
	case "PodDisruptionBudget":
		// Informational: the disruption controller fills it; not part of readiness.
		if healthy, found, _ := unstructured.NestedInt64(o.Object, "status", "currentHealthy"); found {
			want, _, _ := unstructured.NestedInt64(o.Object, "status", "desiredHealthy")
			st.Message = fmt.Sprintf("%d healthy, %d required", healthy, want)
		}
	case "Secret":
		if o.GetName() == tlsSecretName {
			data, _, _ := unstructured.NestedStringMap(o.Object, "data")
			certPEM, _ := decodeB64(data["tls.crt"])
			st.Ready, st.Message = certState(certPEM, now)
		}
	}
	return st
}

func certState(certPEM []byte, now time.Time) (bool, string) {
	block, _ := pem.Decode(certPEM)
	if block == nil {
		return false, "no serving certificate: re-run install"
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return false, "unreadable serving certificate: re-run install"
	}
	left := cert.NotAfter.Sub(now)
	switch {
	case left <= 0:
		return false, "serving certificate expired: re-run install to rotate it"
	case left < RotateBefore:
		return true, fmt.Sprintf("serving certificate expires %s: re-run install to rotate it", cert.NotAfter.UTC().Format(time.DateOnly))
	}
	return true, "serving certificate valid until " + cert.NotAfter.UTC().Format(time.DateOnly)
}

// installedPods lists the pods of the install's workloads (they carry its labels), for the digests
// they run. Without a typed client (never the case from the plugin) there are none.
func installedPods(ctx context.Context, c *Client, namespace string) ([]*corev1.Pod, error) {
	if c.Typed == nil {
		return nil, nil
	}
	list, err := c.Typed.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: Selector(namespace)})
	if err != nil {
		return nil, fmt.Errorf("listing the pods of namespace %s: %w", namespace, err)
	}
	pods := make([]*corev1.Pod, len(list.Items))
	for i := range list.Items {
		pods[i] = &list.Items[i]
	}
	return pods, nil
}

func ipStatus(ctx context.Context, c *Client, namespace string, objs []*unstructured.Unstructured) (IPStatus, error) {
	var s IPStatus
	var err error
	if s.CRDServed, err = c.IPCRDServed(); err != nil {
		return s, err
	}
	for _, o := range objs {
		if o.GetKind() == "Service" && o.GetName() == proxyServiceName {
			s.ProxyClusterIP, _, _ = unstructured.NestedString(o.Object, "spec", "clusterIP")
		}
	}
	if !s.CRDServed {
		s.Message = "Liqo's IP CRD (" + IPCRDName + ") is not served: no IP resource"
		return s, nil
	}
	var ip *unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() == "IP" {
			ip = o
		}
	}
	if ip == nil {
		s.Message = "no IP resource created by this install: run install with the proxy role (--create-ip-resource=auto|true)"
		return s, nil
	}
	s.Found, s.Namespace, s.Name = true, ip.GetNamespace(), ip.GetName()
	s.LocalIP, _, _ = unstructured.NestedString(ip.Object, "spec", "ip")
	s.RemappedIP, _, _ = unstructured.NestedString(ip.Object, "status", "ip")
	s.RemappedCIDR, _, _ = unstructured.NestedString(ip.Object, "status", "cidr")
	s.IPMappings, _, _ = unstructured.NestedStringMap(ip.Object, "status", "ipMappings")
	switch {
	case s.ProxyClusterIP != "" && s.LocalIP != s.ProxyClusterIP:
		s.Message = fmt.Sprintf("spec.ip %s differs from the proxy Service ClusterIP %s: re-run install", s.LocalIP, s.ProxyClusterIP)
	case s.RemappedIP == "" && len(s.IPMappings) == 0:
		s.Message = "waiting for Liqo to remap spec.ip (status.ip not set yet)"
	default:
		s.Message = "remapped by Liqo"
	}
	return s, nil
}
