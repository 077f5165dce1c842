package plugin

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"sigs.k8s.io/yaml"

	"github.com/apiproxy/apiproxy/pkg/install"
)

func init() { registerSubcommand(newInstallCommand) }

// InstallOptions are `kubectl apiproxy install`'s flags and state (Complete/Validate/Run).
type InstallOptions struct {
	configFlags *genericclioptions.ConfigFlags
	genericiooptions.IOStreams

	install.Options
	roles      []string
	createIP   string
	dryRunFlag string
	dryRun     install.DryRun
	output     string
	wait       bool
	timeout    time.Duration
}

func newInstallCommand(configFlags *genericclioptions.ConfigFlags, streams genericiooptions.IOStreams) *cobra.Command {
	o := &InstallOptions{configFlags: configFlags, IOStreams: streams, Options: install.DefaultOptions()}
	cmd := &cobra.Command{
		Use:   "install",
		Short: "Deploy the agents (proxy, node, webhook) with server-side apply",
		Long: `Render the embedded manifests for the chosen roles and apply them with server-side apply
(field manager kubectl-apiproxy). Every object is labelled app.kubernetes.io/part-of=apiproxy.

  proxy    the CONNECT proxy Deployment + Service; with Liqo's IPAM, the IP resource api-server-proxy
           so peer clusters reach it through the fabric
  node     a DaemonSet keeping --node-ip on every node, forwarding <node-ip>:443 to the API server
  webhook  a mutating webhook injecting KUBERNETES_SERVICE_HOST (--apiserver-fqdn) into new pods;
           its CA and serving certificate are generated, kept in a Secret and renewed when they
           have less than 30 days left`,
		Example: `  # The proxy only, and wait for it
  kubectl apiproxy install --wait

  # Everything; pods reach the API server at 169.254.20.11:443 (--node-ip) as kubernetes.default.svc
  kubectl apiproxy install --roles proxy,node,webhook --apiserver-fqdn kubernetes.default.svc --setup-iptables --wait

  # From a private mirror (kubectl apiproxy images lists what to copy there)
  kubectl apiproxy install --registry mirror.example:5000/team --image-pull-secret mirror-pull

  # Review the manifests without touching the cluster
  kubectl apiproxy install --roles proxy,webhook --apiserver-fqdn api.example.com --dry-run=client -o yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.Complete(cmd); err != nil {
				return err
			}
			if err := o.Validate(); err != nil {
				return err
			}
			return o.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	addImageFlags(f, &o.roles, &o.Options)
	f.StringSliceVar(&o.ImagePullSecrets, "image-pull-secret", nil, "A Secret in the install namespace holding credentials for the agent image's registry, put into every pod's imagePullSecrets (repeatable, or comma separated); an install without the flag removes them again")
	f.IntVar(&o.ProxyPort, "proxy-port", o.ProxyPort, "Port of the CONNECT proxy (container, Service, and the node forwarder's CONNECT listener)")
	f.StringVar(&o.NodeIP, "node-ip", o.NodeIP, "node role: the IP every node serves the API server on (port 443); link-local by default, so no Service or pod can have it. Refused inside the cluster's service or pod CIDRs (see --allow-node-ip-overlap). Without this flag an upgrade keeps the address of the installed DaemonSet")
	f.BoolVar(&o.AllowNodeIPOverlap, "allow-node-ip-overlap", false, "node role: accept a --node-ip inside the cluster's service or pod CIDRs (reserved there on purpose), with a warning instead of an error")
	f.StringVar(&o.NodeInterface, "node-interface", o.NodeInterface, "node role: the interface holding --node-ip; a dedicated dummy device is created when missing (avoid lo: Cilium ignores host-scoped addresses there)")
	f.BoolVar(&o.SetupIPTables, "setup-iptables", false, "node role: also install NOTRACK/ACCEPT rules for --node-ip:443 (iptables and ip6tables)")
	f.StringVar(&o.Upstream, "upstream", "", "proxy and node roles: the API server HOST:PORT to forward to (default: the in-cluster kubernetes Service, from KUBERNETES_SERVICE_HOST/PORT); set it so the node role does not depend on kube-proxy")
	f.StringVar(&o.UpstreamProxy, "upstream-proxy", "", "node role: send the forwarder's traffic through this CONNECT proxy, http://HOST:PORT (a peer cluster's proxy through the fabric)")
	f.StringVar(&o.APIServerFQDN, "apiserver-fqdn", "", "webhook role: the API server name injected as KUBERNETES_SERVICE_HOST (required with the webhook role)")
	f.IntVar(&o.APIServerPort, "apiserver-port", 0, "webhook role: also inject KUBERNETES_SERVICE_PORT and KUBERNETES_PORT* with this port (0: leave them)")
	f.StringVar(&o.HostAliasIP, "host-alias-ip", "", "webhook role: add hostAliases mapping --apiserver-fqdn to this IP (default with the node role: --node-ip; \"\" for none)")
	f.BoolVar(&o.Relay, "relay", false, "proxy role: let the proxy relay CONNECTs to the Liqo peers' proxies (for connect --via): their remapped external CIDRs on --proxy-port become --allow-target entries, read from this cluster's Configurations on every install")
	f.StringVar((*string)(&o.NetworkPolicy), "network-policy", string(o.NetworkPolicy), "proxy role: render a NetworkPolicy for the proxy pods: the proxy port open to the Liqo peers' remapped pod and external CIDRs (this cluster's Configurations), --allow-source and this namespace; auto renders it when Liqo Configurations exist, true always, false never. Re-run install after a new peering")
	f.StringSliceVar(&o.AllowSources, "allow-source", nil, "proxy role: a CIDR that may reach the proxy port besides the Liqo peers (repeatable); also rendered as the proxy's --allow-source")
	f.StringSliceVar(&o.ClusterPodCIDRs, "cluster-pod-cidr", nil, "proxy role with a NetworkPolicy: this cluster's pod CIDRs as the CNI allocates them (repeatable), admitted by the proxy's --allow-source for this namespace's pods; default: the Nodes' .spec.podCIDRs, checked against the running pods' addresses (CNIs with their own IPAM, e.g. Calico IP pools or Cilium cluster-pool, need this flag)")
	f.StringVar(&o.MetricsNamespaceSelector, "metrics-namespace-selector", "", "proxy role, with the NetworkPolicy: the label selector of the namespaces that may scrape the metrics port (default: every namespace), e.g. kubernetes.io/metadata.name=monitoring")
	f.StringVar((*string)(&o.Auth), "auth", string(o.Auth), "proxy role: none, or tokenreview: every CONNECT must carry a token the proxy reviews (TokenReview, then SubjectAccessReview create tunnels.apiproxy.io); renders the RBAC the reviews need")
	f.StringVar(&o.LiqoNamespace, "liqo-namespace", o.LiqoNamespace, "Namespace of Liqo, where the IP resource api-server-proxy goes")
	f.StringVar(&o.createIP, "create-ip-resource", string(install.CreateIPAuto), "Create Liqo's IP resource for the proxy Service: auto (when Liqo's IP CRD is served), true (fail without it) or false")
	f.StringVar(&o.dryRunFlag, "dry-run", "none", `"none", "client" (render and print, contact nothing) or "server" (the API server validates, persists nothing)`)
	f.Lookup("dry-run").NoOptDefVal = "client"
	f.StringVarP(&o.output, "output", "o", "", "Print the objects: yaml or json (with --dry-run=client: the rendered manifests)")
	f.BoolVar(&o.wait, "wait", false, "Wait until the installed workloads are rolled out, with progress on stderr; fail at once, naming the pod, container, reason, events, last log lines and a hint, when a pod cannot start")
	f.DurationVar(&o.timeout, "timeout", 5*time.Minute, "How long --wait waits")
	return cmd
}

// Complete fills the options from flags.
func (o *InstallOptions) Complete(cmd *cobra.Command) error {
	var err error
	o.Namespace = apiproxyNamespace(o.configFlags)
	if o.Roles, err = install.ParseRoles(o.roles); err != nil {
		return err
	}
	o.CreateIP = install.CreateIP(o.createIP)
	o.NodeIPSet = cmd.Flags().Changed("node-ip")
	o.HostAliasIPSet = cmd.Flags().Changed("host-alias-ip")
	o.dryRun, err = install.ParseDryRun(o.dryRunFlag)
	return err
}

// Validate checks flag combinations.
func (o *InstallOptions) Validate() error {
	if err := o.Options.Validate(); err != nil {
		return err
	}
	if err := validateOutput(o.output); err != nil {
		return err
	}
	if o.wait && o.dryRun != install.DryRunNone {
		return fmt.Errorf("--wait cannot be combined with --dry-run=%s: nothing would become ready", o.dryRun)
	}
	if o.timeout <= 0 {
		return fmt.Errorf("--timeout %s must be positive, e.g. --timeout 5m", o.timeout)
	}
	return nil
}

// Run renders and applies (or prints), then waits when asked.
func (o *InstallOptions) Run(ctx context.Context) error {
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if o.dryRun == install.DryRunClient {
		objs, err := install.RenderOffline(o.Options, o.ErrOut)
		if err != nil {
			return err
		}
		return printObjects(o.Out, o.output, objs, "(dry run)")
	}
	c, err := newInstallClient(o.configFlags)
	if err != nil {
		return err
	}
	if o.wait {
		// An IP object replaced for a new ClusterIP is waited for too: Liqo must remap it again.
		o.IPWait = o.timeout
	}
	objs, err := install.Install(ctx, c, o.Options, o.dryRun, o.ErrOut)
	suffix := "serverside-applied"
	if o.dryRun == install.DryRunServer {
		suffix += " (server dry run)"
	}
	if perr := printObjects(o.Out, o.output, objs, suffix); perr != nil && err == nil {
		err = perr
	}
	if err != nil || !o.wait {
		return err
	}
	return install.Wait(ctx, c, o.Namespace, o.Roles, o.timeout, o.ErrOut)
}

// apiproxyNamespace is -n when given, else apiproxy-system (never the kubeconfig context's namespace:
// the agents get a namespace of their own).
func apiproxyNamespace(f *genericclioptions.ConfigFlags) string {
	if f != nil && f.Namespace != nil && *f.Namespace != "" {
		return *f.Namespace
	}
	return install.DefaultNamespace
}

func newInstallClient(f *genericclioptions.ConfigFlags) (*install.Client, error) {
	cfg, err := f.ToRESTConfig()
	if err != nil {
		return nil, fmt.Errorf("loading the kubeconfig: %w", err)
	}
	// client-go's default (5 QPS, burst 10) throttles an install of a dozen kinds plus its reads of
	// Liqo's objects within --wait's first second; kubectl's own limits are higher too.
	if cfg.QPS == 0 {
		cfg.QPS, cfg.Burst = 50, 100
	}
	return install.NewClient(cfg)
}

func validateOutput(output string) error {
	switch output {
	case "", "yaml", "json":
		return nil
	}
	return fmt.Errorf("-o %q: use yaml or json, or leave it unset", output)
}

// printObjects writes yaml (documents separated by ---, ready for kubectl apply -f -), a json List,
// or one "kind.group/name <what happened>" line per object.
func printObjects(out io.Writer, output string, objs []*unstructured.Unstructured, what string) error {
	switch output {
	case "":
		for _, obj := range objs {
			if _, err := fmt.Fprintf(out, "%s %s\n", install.ObjectRef(obj), what); err != nil {
				return err
			}
		}
		return nil
	case "yaml":
		for i, obj := range objs {
			b, err := yaml.Marshal(clean(obj).Object)
			if err != nil {
				return err
			}
			if i > 0 {
				fmt.Fprintln(out, "---")
			}
			if _, err := out.Write(b); err != nil {
				return err
			}
		}
		return nil
	case "json":
		items := make([]any, len(objs))
		for i, obj := range objs {
			items[i] = clean(obj).Object
		}
		b, err := json.MarshalIndent(map[string]any{"apiVersion": "v1", "kind": "List", "items": items}, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(out, string(b))
		return err
	}
	return validateOutput(output)
}

// clean drops managedFields: noise for a reader, and refused by apply if fed back.
func clean(obj *unstructured.Unstructured) *unstructured.Unstructured {
	c := obj.DeepCopy()
	c.SetManagedFields(nil)
	return c
}
