package install

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"text/template"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	"github.com/apiproxy/apiproxy/deploy"
	"github.com/apiproxy/apiproxy/pkg/version"
)

// Labels every installed object carries; uninstall and status find objects by them.
const (
	LabelPartOf           = "app.kubernetes.io/part-of"
	LabelName             = "app.kubernetes.io/name"
	LabelComponent        = "app.kubernetes.io/component"
	LabelVersion          = "app.kubernetes.io/version"
	LabelManagedBy        = "app.kubernetes.io/managed-by"
	LabelInstallNamespace = "apiproxy.io/install-namespace"
	PartOf                = "apiproxy"
	// ComponentBase marks objects every role shares (the namespace).
	ComponentBase = "base"
)

// WebhookCerts is the webhook's PKI as written into its Secrets and caBundle (PEM).
type WebhookCerts struct {
	CACert, CAKey, ServingCert, ServingKey []byte
}

// RenderInput is what rendering needs beyond the flags: state read from (or made for) the cluster.
type RenderInput struct {
	// Certs must be set when the webhook role is selected.
	Certs *WebhookCerts
	// ProxyClusterIP, when set, renders Liqo's IP resource with it as spec.ip, named IPName
	// (default IPResourceName).
	ProxyClusterIP string
	IPName         string
	// SkipNamespace leaves the Namespace out (it exists and belongs to someone else).
	SkipNamespace bool
	// NodeRoleInstalled keeps the namespace's Pod Security level at privileged when the node role
	// is already installed, even if this run does not select it.
	NodeRoleInstalled bool
	// NodeUpdateInPlace renders the node DaemonSet's rolling update without surge (the old pod
	// stops before the new one starts): for the one upgrade from a release whose agents do not hand
	// their listening sockets over, which a surge pod could never bind next to (see nodeip.go).
	NodeUpdateInPlace bool
}

// Selector returns the label selector of everything installed into a namespace.
func Selector(namespace string) string {
	return LabelPartOf + "=" + PartOf + "," + LabelInstallNamespace + "=" + namespace
}

// RoleSelector narrows Selector to one role.
func RoleSelector(namespace string, role Role) string {
	return Selector(namespace) + "," + LabelComponent + "=" + string(role)
}

type values struct {
	Namespace, PodSecurity, Image, NodeIP            string
	ProxyPort, MetricsPort, WebhookPort              int
	NodeMetricsPort                                  int
	SetupIPTables                                    bool
	ProxyArgs, NodeInitArgs, NodeArgs                []string
	NodeForwarders                                   []nodeForwarder
	ProxyContainers                                  []proxyContainer
	NodeProbes                                       map[string]probes
	HandoffHostPath, HandoffMount, HealthMount       string
	NodeSurge                                        bool
	WebhookArgs                                      []string
	UpstreamHost, UpstreamPort                       string
	NodeSecurityContext                              map[string]any
	WebhookCertDir, CASecretName, TLSSecretName      string
	WebhookConfigName, LiqoNamespace, ProxyClusterIP string
	IPName                                           string
	Certs                                            WebhookCerts
	// ImagePullSecrets is every pod spec's imagePullSecrets ([{name: …}]); empty renders none.
	ImagePullSecrets []map[string]string
	// UpstreamProxyCredentials ("USER:PASSWORD" of --upstream-proxy, "" for none) go into the Secret
	// UpstreamProxySecret, mounted at UpstreamProxyMount in the node forwarders.
	UpstreamProxyCredentials, UpstreamProxySecret, UpstreamProxyMount, UpstreamProxyKey string

	// Security (security.go): the proxy's NetworkPolicy and its auth RBAC.
	NetworkPolicy, ProxyAuth bool
	AuthBindingName          string
	TunnelRoleName           string
	PolicyFrom, MetricsFrom  []map[string]any
}

// Render returns the objects to apply, in apply order, labelled.
func Render(o Options, in RenderInput) ([]*unstructured.Unstructured, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	image, err := o.AgentImage()
	if err != nil {
		return nil, err
	}
	v := values{
		Namespace:           o.Namespace,
		PodSecurity:         "restricted",
		Image:               image,
		NodeIP:              o.NodeIP,
		ProxyPort:           o.ProxyPort,
		MetricsPort:         metricsPort,
		WebhookPort:         webhookPort,
		NodeMetricsPort:     nodeMetricsPort,
		SetupIPTables:       o.SetupIPTables,
		ProxyArgs:           ProxyArgs(o),
		ProxyContainers:     proxyContainers(o),
		NodeInitArgs:        NodeArgs(o, true),
		NodeArgs:            NodeArgs(o, false),
		NodeForwarders:      NodeForwarders(o),
		NodeProbes:          map[string]probes{"node": execProbes(healthSocket("node"))},
		HandoffHostPath:     handoffHostRoot,
		NodeSurge:           !in.NodeUpdateInPlace,
		HandoffMount:        handoffMount,
		HealthMount:         healthMount,
		WebhookArgs:         WebhookArgs(o),
		NodeSecurityContext: nodeSecurityContext(o.SetupIPTables),
		WebhookCertDir:      webhookCertDir,
		CASecretName:        caSecretName,
		TLSSecretName:       tlsSecretName,
		WebhookConfigName:   WebhookConfigName(o.Namespace),
		LiqoNamespace:       o.LiqoNamespace,
		ProxyClusterIP:      in.ProxyClusterIP,
		IPName:              in.IPName,
	}
	if v.IPName == "" {
		v.IPName = IPResourceName
	}
	if o.UpstreamProxy != "" {
		_, v.UpstreamProxyCredentials = o.upstreamProxyCredentials()
		v.UpstreamProxySecret, v.UpstreamProxyMount, v.UpstreamProxyKey = upstreamProxySecretName, upstreamProxyMount, upstreamProxyKey
	}
	for _, name := range o.ImagePullSecrets {
		if !slices.ContainsFunc(v.ImagePullSecrets, func(s map[string]string) bool { return s["name"] == name }) {
			v.ImagePullSecrets = append(v.ImagePullSecrets, map[string]string{"name": name})
		}
	}
	if err := securityValues(o, &v); err != nil {
		return nil, err
	}
	if o.Has(RoleNode) || in.NodeRoleInstalled {
		v.PodSecurity = "privileged"
	}
	if o.Upstream != "" {
		v.UpstreamHost, v.UpstreamPort, _ = net.SplitHostPort(o.Upstream)
	}
	if o.Has(RoleWebhook) {
		if in.Certs == nil {
			return nil, fmt.Errorf("internal error: the webhook role needs certificates")
		}
		v.Certs = *in.Certs
	}

	type part struct {
		file      string
		component string
	}
	var parts []part
	if !in.SkipNamespace {
		parts = append(parts, part{"namespace.yaml", ComponentBase})
	}
	for _, r := range o.Roles {
		parts = append(parts, part{string(r) + ".yaml", string(r)})
	}
	if in.ProxyClusterIP != "" {
		parts = append(parts, part{"liqo-ip.yaml", string(RoleProxy)})
	}
	var objs []*unstructured.Unstructured
	for _, p := range parts {
		got, err := renderFile(p.file, v)
		if err != nil {
			return nil, err
		}
		for _, obj := range got {
			labelObject(obj, o.Namespace, p.component)
			objs = append(objs, obj)
		}
	}
	return objs, nil
}

var funcs = template.FuncMap{
	"json": func(v any) (string, error) {
		b, err := json.Marshal(v)
		return string(b), err
	},
	"b64": func(b []byte) string { return base64.StdEncoding.EncodeToString(b) },
}

func renderFile(name string, v values) ([]*unstructured.Unstructured, error) {
	src, err := deploy.Manifests.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("embedded manifest %s: %w", name, err)
	}
	tmpl, err := template.New(name).Funcs(funcs).Option("missingkey=error").Parse(string(src))
	if err != nil {
		return nil, fmt.Errorf("parsing %s: %w", name, err)
	}
	var buf bytes.Buffer
	if err := tmpl.Execute(&buf, v); err != nil {
		return nil, fmt.Errorf("rendering %s: %w", name, err)
	}
	return decodeDocuments(name, &buf)
}

// decodeDocuments splits multi-document YAML into objects, skipping empty documents.
func decodeDocuments(source string, r io.Reader) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(r, 4096)
	var objs []*unstructured.Unstructured
	for {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			if err == io.EOF {
				return objs, nil
			}
			return nil, fmt.Errorf("decoding %s: %w", source, err)
		}
		if len(m) == 0 {
			continue
		}
		obj := &unstructured.Unstructured{Object: m}
		if obj.GetKind() == "" || obj.GetAPIVersion() == "" || obj.GetName() == "" {
			return nil, fmt.Errorf("%s: a document lacks apiVersion, kind or metadata.name", source)
		}
		objs = append(objs, obj)
	}
}

func labelObject(obj *unstructured.Unstructured, installNamespace, component string) {
	common := map[string]string{
		LabelPartOf:           PartOf,
		LabelManagedBy:        FieldManager,
		LabelVersion:          VersionLabel(version.Get().Version),
		LabelInstallNamespace: installNamespace,
		LabelComponent:        component,
		LabelName:             PartOf + "-" + component,
	}
	labels := obj.GetLabels()
	if labels == nil {
		labels = map[string]string{}
	}
	for k, val := range common {
		if _, set := labels[k]; !set {
			labels[k] = val
		}
	}
	obj.SetLabels(labels)
	// Pods carry the same labels, so `kubectl get pods -l app.kubernetes.io/part-of=apiproxy` finds them.
	if tmplLabels, found, _ := unstructured.NestedStringMap(obj.Object, "spec", "template", "metadata", "labels"); found {
		for k, val := range common {
			if _, set := tmplLabels[k]; !set {
				tmplLabels[k] = val
			}
		}
		_ = unstructured.SetNestedStringMap(obj.Object, tmplLabels, "spec", "template", "metadata", "labels")
	}
}

var notLabelChars = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// VersionLabel turns a version (which may hold '+' or be long) into a valid label value.
func VersionLabel(v string) string {
	v = notLabelChars.ReplaceAllString(v, "-")
	if len(v) > 63 {
		v = v[:63]
	}
	return strings.Trim(v, "-_.")
}

// proxyShutdownDelay is the proxy's --shutdown-delay behind its Service; with --shutdown-grace 30s
// it fits the Deployment's terminationGracePeriodSeconds (40).
const proxyShutdownDelay = "5s"

type proxyContainer struct {
	Name, MetricsPortName string
	MetricsPort           int
	Args, ReadyProbe      []string
}

// proxyContainers are the proxy pod's two agents ("proxy" and "proxy-2"), sharing the proxy port
// through --handoff-dir; each has its own metrics port (9090, then 9092).
func proxyContainers(o Options) []proxyContainer {
	var out []proxyContainer
	for i, name := range []string{"proxy", "proxy-2"} {
		port, portName := metricsPort+2*i, "metrics"
		if i > 0 {
			portName += "-" + strconv.Itoa(i+1)
		}
		args := ProxyArgs(o)
		if i > 0 {
			args[slices.Index(args, "--metrics-addr")+1] = ":" + strconv.Itoa(port)
		}
		out = append(out, proxyContainer{Name: name, MetricsPortName: portName, MetricsPort: port,
			Args:       append(args, "--handoff-dir", handoffMount),
			ReadyProbe: []string{agentBinary, "probe", "--addr", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), "--path", "/readyz?verbose"}})
	}
	return out
}

// ProxyArgs are the proxy Deployment's agent arguments (of its first container).
func ProxyArgs(o Options) []string {
	args := []string{"proxy", "--listen", ":" + strconv.Itoa(o.ProxyPort), "--metrics-addr", ":" + strconv.Itoa(metricsPort),
		// Behind a Service: stay reachable while kube-proxy learns that the pod is terminating.
		"--shutdown-delay", proxyShutdownDelay,
		// Out of the Service while it cannot reach the API server (bounded: one failed dial is not enough).
		"--readiness-dial-upstream"}
	if o.Upstream != "" {
		args = append(args, "--upstream", o.Upstream)
	}
	for _, t := range o.AllowTargets {
		args = append(args, "--allow-target", t)
	}
	for _, s := range o.ProxyAllowSources {
		args = append(args, "--allow-source", s)
	}
	if o.Auth == AuthTokenReview {
		args = append(args, "--auth", string(AuthTokenReview))
	}
	return args
}

// The node role's pods share their listening sockets through a directory of the node (the old and
// the new pod of a surge rollout overlap there) and answer their exec probes on Unix sockets of their
// own, since every TCP port of a hostNetwork pod is the node's.
const (
	// agentBinary is the image's entrypoint (internal/imagebuild), which the exec probes run.
	agentBinary     = "/usr/local/bin/agent"
	handoffHostRoot = "/run/apiproxy"         // the node role's hostPath
	handoffMount    = "/run/apiproxy/handoff" // where it (or the proxy pod's emptyDir) is mounted
	healthMount     = "/run/apiproxy/health"
)

// NodeHandoffDir is where the node role's agents of an install hand their listening sockets over:
// a directory per install namespace of the node's /run/apiproxy (a tmpfs: nothing survives a
// reboot), mounted at the same place in every container; the node agent removes it at uninstall.
func NodeHandoffDir(namespace string) string { return handoffMount + "/" + namespace }

func healthSocket(container string) string { return healthMount + "/" + container + ".sock" }

type probes struct{ Live, Ready []string }

// execProbes ask the container's own agent through its --health-socket; the readiness probe prints
// every check, so the kubelet's event names the one that fails.
func execProbes(socket string) probes {
	probe := func(path string) []string { return []string{agentBinary, "probe", "--socket", socket, "--path", path} }
	return probes{Live: probe("/healthz"), Ready: probe("/readyz?verbose")}
}

// NodeArgs are the node role's `agent node` arguments: the one-shot init container's or the sidecar's.
func NodeArgs(o Options, initContainer bool) []string {
	args := []string{"node", "--ip-address", o.NodeIP, "--interface", o.NodeInterface, "--port", strconv.Itoa(nodeForwardPort)}
	if o.SetupIPTables {
		args = append(args, "--setup-iptables")
	}
	if initContainer {
		return append(args, "--daemon=false")
	}
	// The address survives rolling updates and restarts, and goes with uninstall (deploy/node.yaml).
	return append(args, "--metrics-addr", net.JoinHostPort(o.NodeIP, strconv.Itoa(nodeMetricsPort)),
		"--cleanup-when-owner-deleted", o.Namespace+"/"+nodeDaemonSetName,
		"--health-socket", healthSocket("node"), "--handoff-dir", NodeHandoffDir(o.Namespace))
}

type nodeForwarder struct {
	Name        string
	Args        []string
	MetricsPort int
	Probes      probes
}

// NodeForwarders are the node role's two forwarders ("proxy" and "proxy-2"): the same listeners,
// shared through --handoff-dir, so one of them always accepts while the other restarts; each has its
// own metrics port and health socket.
func NodeForwarders(o Options) []nodeForwarder {
	var out []nodeForwarder
	for i, name := range []string{"proxy", "proxy-2"} {
		port := nodeProxyMetricsPort + i
		out = append(out, nodeForwarder{Name: name, Args: nodeProxyArgs(o, port, healthSocket(name)), MetricsPort: port, Probes: execProbes(healthSocket(name))})
	}
	return out
}

// nodeProxyArgs are a node forwarder's arguments: everything binds the node IP only, so nothing
// listens on the host's real interfaces. Ready only after a dial to the upstream worked.
func nodeProxyArgs(o Options, metricsPort int, socket string) []string {
	args := []string{"proxy",
		"--listen", net.JoinHostPort(o.NodeIP, strconv.Itoa(o.ProxyPort)),
		"--listen-tcp", net.JoinHostPort(o.NodeIP, strconv.Itoa(nodeForwardPort)),
		"--metrics-addr", net.JoinHostPort(o.NodeIP, strconv.Itoa(metricsPort)),
		"--health-socket", socket, "--handoff-dir", NodeHandoffDir(o.Namespace), "--readiness-dial-upstream",
	}
	if o.Upstream != "" {
		args = append(args, "--upstream", o.Upstream)
	}
	if o.UpstreamProxy != "" {
		proxyURL, credentials := o.upstreamProxyCredentials()
		args = append(args, "--upstream-proxy", proxyURL)
		if credentials != "" {
			args = append(args, "--upstream-proxy-credentials-file", upstreamProxyMount+"/"+upstreamProxyKey)
		}
	}
	return args
}

// WebhookArgs are the webhook Deployment's agent arguments.
func WebhookArgs(o Options) []string {
	args := []string{"webhook",
		"--apiserver-fqdn", o.APIServerFQDN,
		"--cert-dir", webhookCertDir,
		"--port", strconv.Itoa(webhookPort),
		"--metrics-addr", ":" + strconv.Itoa(metricsPort),
	}
	if o.APIServerPort != 0 {
		args = append(args, "--apiserver-port", strconv.Itoa(o.APIServerPort))
	}
	if o.HostAliasIP != "" {
		args = append(args, "--host-alias-ip", o.HostAliasIP)
	}
	return args
}

// nodeSecurityContext: root with NET_ADMIN only (NET_RAW too when iptables runs), read-only root.
func nodeSecurityContext(iptables bool) map[string]any {
	add := []string{"NET_ADMIN"}
	if iptables {
		add = append(add, "NET_RAW")
	}
	return map[string]any{
		"runAsUser":                0,
		"runAsNonRoot":             false,
		"allowPrivilegeEscalation": false,
		"readOnlyRootFilesystem":   true,
		"capabilities":             map[string]any{"drop": []string{"ALL"}, "add": add},
	}
}
