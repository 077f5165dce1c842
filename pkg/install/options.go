// Package install renders the agents' manifests (embedded from deploy/) for the chosen roles and
// flags, applies them with server-side apply, keeps the webhook's certificates, registers the proxy
// with Liqo's IPAM, and reports, waits for and removes what it installed.
package install

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/apiproxy/apiproxy/pkg/install/imageref"
	"github.com/apiproxy/apiproxy/pkg/tunnel"
	"github.com/apiproxy/apiproxy/pkg/version"
)

// Role is one deployable part of the agent.
type Role string

// The roles `install --roles` accepts.
const (
	RoleProxy   Role = "proxy"
	RoleNode    Role = "node"
	RoleWebhook Role = "webhook"
)

// AllRoles in apply order.
var AllRoles = []Role{RoleProxy, RoleNode, RoleWebhook}

// Defaults of the install flags.
const (
	DefaultNamespace = "apiproxy-system"
	DefaultProxyPort = 8118
	// DefaultNodeIP is link-local (169.254.0.0/16): never a Service, pod or routed address, so
	// neither kube-proxy nor the CNI can claim it (NodeLocal DNSCache's pattern; it uses .10).
	DefaultNodeIP        = "169.254.20.11"
	DefaultNodeInterface = "apiproxy0"
	DefaultLiqoNamespace = "liqo"
	DefaultImageRepo     = "ghcr.io/apiproxy/agent"
	FieldManager         = "kubectl-apiproxy"
	IPResourceName       = "api-server-proxy"
	nodeForwardPort      = 443
	metricsPort          = 9090
	webhookPort          = 9443
	nodeMetricsPort      = 9190
	nodeProxyMetricsPort = 9191 // the first forwarder's; the second one's is the next port
	webhookCertDir       = "/etc/apiproxy/webhook-tls"
	caSecretName         = "apiproxy-webhook-ca"
	tlsSecretName        = "apiproxy-webhook-tls"
	webhookServiceName   = "apiproxy-webhook"
	proxyServiceName     = "apiproxy-proxy"
	nodeDaemonSetName    = "apiproxy-node"
	webhookConfigPrefix  = "apiproxy-webhook-"
	// upstreamProxySecretName holds --upstream-proxy's credentials, mounted into the node
	// forwarders at upstreamProxyMount (never in their args: those show in the process list,
	// kubectl describe and status).
	upstreamProxySecretName = "apiproxy-upstream-proxy"
	upstreamProxyMount      = "/etc/apiproxy/upstream-proxy"
	upstreamProxyKey        = "credentials"
	maxInterfaceNameBytes   = 15 // IFNAMSIZ - 1
)

// CreateIP says whether to create Liqo's IP resource for the proxy Service.
type CreateIP string

// The values of --create-ip-resource.
const (
	CreateIPAuto  CreateIP = "auto"
	CreateIPTrue  CreateIP = "true"
	CreateIPFalse CreateIP = "false"
)

// Options are the install flags, already defaulted.
type Options struct {
	Roles         []Role
	Namespace     string
	Image         string
	ProxyPort     int
	NodeIP        string
	NodeInterface string
	SetupIPTables bool
	Upstream      string
	UpstreamProxy string
	APIServerFQDN string
	APIServerPort int
	HostAliasIP   string
	LiqoNamespace string
	// Registry, when set, moves Image to a mirror (--registry HOST[:PORT][/PATH]); AgentImage is
	// what the pods get.
	Registry string
	// ImagePullSecrets go into every pod spec the install renders (--image-pull-secret).
	ImagePullSecrets []string

	// NodeIPSet and HostAliasIPSet say that the user gave --node-ip and --host-alias-ip. Without
	// --node-ip an installed DaemonSet's address is kept (nodeip.go); without --host-alias-ip, the
	// node and webhook roles together alias the API server name to the node IP.
	NodeIPSet, HostAliasIPSet bool
	// AllowNodeIPOverlap turns the refusal of a --node-ip inside a service or pod CIDR into a warning.
	AllowNodeIPOverlap bool
	CreateIP           CreateIP
	// IPWait, when positive (install --wait: --timeout), is how long install waits for Liqo to
	// remap an IP object it had to replace (liqo.go); zero does not wait.
	IPWait time.Duration
	// Relay makes this cluster's proxy a relay to its Liqo peers' proxies (connect --via): the peers'
	// remapped external CIDRs, read from the Configurations at install time, become AllowTargets.
	Relay bool
	// AllowTargets are rendered as the proxy's --allow-target (CIDR:PORT or HOST:PORT).
	AllowTargets []string

	// NetworkPolicy, AllowSources, MetricsNamespaceSelector and Auth are the "who may tunnel"
	// flags (security.go).
	NetworkPolicy NetworkPolicyMode
	AllowSources  []string
	// ClusterPodCIDRs (--cluster-pod-cidr) are this cluster's pod ranges as the CNI allocates them,
	// for the proxy's --allow-source when the NetworkPolicy admits "this namespace": without them,
	// install reads Node .spec.podCIDRs, which CNIs with their own IPAM do not follow.
	ClusterPodCIDRs          []string
	MetricsNamespaceSelector string
	Auth                     AuthMode
	// Decided by install from the cluster (decideSources): whether the NetworkPolicy is rendered,
	// the CIDRs it admits to the proxy port, and the proxy's --allow-source.
	RenderNetworkPolicy bool
	PolicySources       []string
	ProxyAllowSources   []string
}

// DefaultOptions are the flag defaults.
func DefaultOptions() Options {
	return Options{
		Roles:         []Role{RoleProxy},
		Namespace:     DefaultNamespace,
		Image:         DefaultImage(),
		ProxyPort:     DefaultProxyPort,
		NodeIP:        DefaultNodeIP,
		NodeInterface: DefaultNodeInterface,
		LiqoNamespace: DefaultLiqoNamespace,
		CreateIP:      CreateIPAuto,
		NetworkPolicy: NetworkPolicyAuto,
		Auth:          AuthNone,
	}
}

// DefaultImage is the agent image of the same release as this plugin, so plugin and agents match: the
// reference pinned by digest that `make release` stamps into the plugin, or in a dev build (nothing
// stamped) the release tag of the plugin's version.
func DefaultImage() string {
	if version.AgentImage != "" {
		return version.AgentImage
	}
	return DefaultImageRepo + ":" + version.Get().Version
}

// AgentImage is the image reference the pods get: --image, moved to --registry when set. Call it
// on validated options.
func (o *Options) AgentImage() (string, error) {
	ref, err := imageref.Parse("--image", o.Image)
	if err != nil || o.Registry == "" {
		return ref.String(), err
	}
	registry, err := imageref.ParseRegistry("--registry", o.Registry)
	if err != nil {
		return "", err
	}
	return ref.WithRegistry(registry).String(), nil
}

// ParseRoles reads "proxy,node,webhook".
func ParseRoles(list []string) ([]Role, error) {
	var roles []Role
	for _, item := range list {
		for _, name := range strings.Split(item, ",") {
			name = strings.TrimSpace(name)
			if name == "" {
				continue
			}
			r := Role(name)
			if !slices.Contains(AllRoles, r) {
				return nil, fmt.Errorf("unknown role %q in --roles: use one or more of proxy, node, webhook (comma separated)", name)
			}
			if !slices.Contains(roles, r) {
				roles = append(roles, r)
			}
		}
	}
	if len(roles) == 0 {
		return nil, errors.New("--roles is empty: use one or more of proxy, node, webhook (comma separated)")
	}
	// Apply order is fixed whatever order the user typed.
	slices.SortFunc(roles, func(a, b Role) int { return slices.Index(AllRoles, a) - slices.Index(AllRoles, b) })
	return roles, nil
}

// Has reports whether the role is selected.
func (o *Options) Has(r Role) bool { return slices.Contains(o.Roles, r) }

var dnsLabelish = regexp.MustCompile(`^[a-zA-Z0-9]([a-zA-Z0-9._-]*[a-zA-Z0-9])?$`)

// Validate checks every flag with a message that says what to change.
func (o *Options) Validate() error {
	var errs []error
	if o.Relay && !o.Has(RoleProxy) {
		errs = append(errs, errors.New("--relay configures the proxy role: add proxy to --roles"))
	}
	if len(o.Roles) == 0 {
		errs = append(errs, errors.New("--roles is empty: use one or more of proxy, node, webhook"))
	}
	errs = append(errs, o.validateSecurity()...)
	if msgs := validation.IsDNS1123Label(o.Namespace); len(msgs) > 0 {
		errs = append(errs, fmt.Errorf("namespace %q is not a valid namespace name: %s", o.Namespace, strings.Join(msgs, "; ")))
	}
	if msgs := validation.IsDNS1123Label(o.LiqoNamespace); len(msgs) > 0 {
		errs = append(errs, fmt.Errorf("--liqo-namespace %q is not a valid namespace name: %s", o.LiqoNamespace, strings.Join(msgs, "; ")))
	}
	errs = append(errs, o.imageErrors()...)
	for _, s := range o.ImagePullSecrets {
		if msgs := validation.IsDNS1123Subdomain(s); len(msgs) > 0 {
			errs = append(errs, fmt.Errorf("--image-pull-secret %q is not a Secret name: %s (e.g. --image-pull-secret mirror-credentials)", s, strings.Join(msgs, "; ")))
		}
	}
	if o.ProxyPort < 1 || o.ProxyPort > 65535 {
		errs = append(errs, fmt.Errorf("--proxy-port %d is out of range: use 1-65535 (default %d)", o.ProxyPort, DefaultProxyPort))
	}
	if slices.Contains([]int{metricsPort, webhookPort}, o.ProxyPort) && o.Has(RoleProxy) {
		errs = append(errs, fmt.Errorf("--proxy-port %d collides with the agent's metrics (%d) or webhook (%d) port: pick another", o.ProxyPort, metricsPort, webhookPort))
	}
	switch o.CreateIP {
	case CreateIPAuto, CreateIPTrue, CreateIPFalse:
	default:
		errs = append(errs, fmt.Errorf("--create-ip-resource %q: use auto, true or false", o.CreateIP))
	}
	if o.Has(RoleNode) {
		if ip := net.ParseIP(o.NodeIP); ip == nil {
			errs = append(errs, fmt.Errorf("--node-ip %q is not an IP address: use e.g. %s", o.NodeIP, DefaultNodeIP))
		} else if ip.IsLoopback() || ip.IsUnspecified() || ip.IsMulticast() {
			errs = append(errs, fmt.Errorf("--node-ip %s cannot be a loopback, unspecified or multicast address: use a free address, e.g. %s", o.NodeIP, DefaultNodeIP))
		} else if why, taken := reservedNodeIPs[ip.String()]; taken {
			// The node agent moves its address off every other interface: it would take these away.
			errs = append(errs, fmt.Errorf("--node-ip %s is %s: the node agent would take it off its interface; use another address, e.g. %s", o.NodeIP, why, DefaultNodeIP))
		}
		if o.NodeInterface == "" || len(o.NodeInterface) > maxInterfaceNameBytes || strings.ContainsAny(o.NodeInterface, "/ \t:") {
			errs = append(errs, fmt.Errorf("--node-interface %q is not a network interface name (1-15 characters, no '/', ':' or spaces): use e.g. %s", o.NodeInterface, DefaultNodeInterface))
		}
		if o.NodeIP != "" && slices.Contains([]int{nodeForwardPort, nodeMetricsPort, nodeProxyMetricsPort, nodeProxyMetricsPort + 1}, o.ProxyPort) {
			errs = append(errs, fmt.Errorf("--proxy-port %d collides with a port the node role uses on %s (%d, %d, %d, %d): pick another", o.ProxyPort, o.NodeIP, nodeForwardPort, nodeMetricsPort, nodeProxyMetricsPort, nodeProxyMetricsPort+1))
		}
	}
	if o.Upstream != "" {
		if host, port, err := net.SplitHostPort(o.Upstream); err != nil || host == "" || port == "" {
			errs = append(errs, fmt.Errorf("--upstream %q: use HOST:PORT of the API server, e.g. 192.168.1.10:6443 ([::1]:6443 for IPv6)", o.Upstream))
		} else if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
			errs = append(errs, fmt.Errorf("--upstream %q: port out of range", o.Upstream))
		}
		if !o.Has(RoleProxy) && !o.Has(RoleNode) {
			errs = append(errs, errors.New("--upstream only applies to the proxy and node roles: add one to --roles or drop the flag"))
		}
	}
	if o.UpstreamProxy != "" {
		if err := validateUpstreamProxy(o.UpstreamProxy); err != nil {
			errs = append(errs, err)
		}
		if !o.Has(RoleNode) {
			errs = append(errs, errors.New("--upstream-proxy only applies to the node role's forwarder: add node to --roles or drop the flag"))
		}
	}
	if o.Has(RoleWebhook) {
		if o.APIServerFQDN == "" {
			errs = append(errs, errors.New("the webhook role needs --apiserver-fqdn, the API server name injected into pods as KUBERNETES_SERVICE_HOST; with the node role, e.g. --apiserver-fqdn kubernetes.default.svc (pods then reach it at --node-ip through hostAliases)"))
		} else if !dnsLabelish.MatchString(strings.TrimSuffix(o.APIServerFQDN, ".")) || len(o.APIServerFQDN) > 253 {
			errs = append(errs, fmt.Errorf("--apiserver-fqdn %q is not a DNS name: use e.g. kubernetes.default.svc or api.example.com.", o.APIServerFQDN))
		}
	}
	if o.APIServerPort != 0 && (o.APIServerPort < 1 || o.APIServerPort > 65535) {
		errs = append(errs, fmt.Errorf("--apiserver-port %d is out of range: use 1-65535, or 0 to leave KUBERNETES_SERVICE_PORT alone", o.APIServerPort))
	}
	if o.HostAliasIP != "" && net.ParseIP(o.HostAliasIP) == nil {
		errs = append(errs, fmt.Errorf("--host-alias-ip %q is not an IP address: use e.g. %s", o.HostAliasIP, DefaultNodeIP))
	}
	if !o.Has(RoleWebhook) {
		for name, set := range map[string]bool{"--apiserver-fqdn": o.APIServerFQDN != "", "--apiserver-port": o.APIServerPort != 0, "--host-alias-ip": o.HostAliasIP != ""} {
			if set {
				errs = append(errs, fmt.Errorf("%s only applies to the webhook role: add webhook to --roles or drop the flag", name))
			}
		}
	}
	return errors.Join(errs...)
}

// ValidateImages checks only the flags that decide the pods' image (--image, --registry): what
// `images` takes.
func (o *Options) ValidateImages() error { return errors.Join(o.imageErrors()...) }

func (o *Options) imageErrors() []error {
	var errs []error
	if _, err := imageref.Parse("--image", o.Image); err != nil {
		errs = append(errs, err)
	}
	if o.Registry != "" {
		if _, err := imageref.ParseRegistry("--registry", o.Registry); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// reservedNodeIPs are link-local addresses that other node software holds.
var reservedNodeIPs = map[string]string{
	"169.254.20.10":   "NodeLocal DNSCache's address",
	"169.254.169.254": "the cloud metadata address",
}

// DefaultHostAlias aliases the API server name to the node IP when the node and webhook roles are
// installed together and --host-alias-ip was not given: the injected KUBERNETES_SERVICE_HOST then
// resolves, in every pod, to the address this install serves the API server on.
func (o *Options) DefaultHostAlias() {
	if !o.HostAliasIPSet && o.HostAliasIP == "" && o.Has(RoleNode) && o.Has(RoleWebhook) {
		o.HostAliasIP = o.NodeIP
	}
}

func validateUpstreamProxy(raw string) error {
	// Messages name the proxy without its credentials.
	shown := tunnel.Redact(raw)
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "http" || u.Hostname() == "" || u.Port() == "" || (u.Path != "" && u.Path != "/") {
		return fmt.Errorf("--upstream-proxy %q: use http://HOST:PORT (the peer's proxy, e.g. http://10.81.0.3:8118), with credentials http://token:TOKEN@HOST:PORT", shown)
	}
	if p, err := strconv.Atoi(u.Port()); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("--upstream-proxy %q: port out of range", shown)
	}
	if _, err := tunnel.ProxyAuthorization(raw); err != nil {
		return fmt.Errorf("--upstream-proxy %q: %v", shown, err)
	}
	return nil
}

// upstreamProxyCredentials splits --upstream-proxy into the URL the forwarders get as an argument
// and the credentials (USER:PASSWORD, decoded; "" without any) that go into a Secret.
func (o *Options) upstreamProxyCredentials() (proxyURL, credentials string) {
	u, err := url.Parse(o.UpstreamProxy)
	if err != nil || u.User == nil {
		return o.UpstreamProxy, ""
	}
	pass, _ := u.User.Password()
	credentials = u.User.Username() + ":" + pass
	u.User = nil
	return u.String(), credentials
}

// WebhookConfigName is the MutatingWebhookConfiguration's name: cluster scoped, so it carries the
// namespace, and two installs in different namespaces never fight over it.
func WebhookConfigName(namespace string) string { return webhookConfigPrefix + namespace }
