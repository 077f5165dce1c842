package plugin

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/cli-runtime/pkg/printers"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/apiproxy/apiproxy/pkg/cmd/cmdutil"
	"github.com/apiproxy/apiproxy/pkg/liqo"
)

func init() { registerSubcommand(newGetIPCommand) }

// ProxyAddressOptions are the flags that find the address a consumer cluster reaches the current
// context's API server proxy at, through the Liqo fabric. get-ip prints it; connect uses it:
//
//	addr := NewProxyAddressOptions(); addr.AddFlags(cmd.Flags())
//	... addr.Validate() ... res, err := addr.Resolve(ctx, configFlags) // res.ProxyURL
type ProxyAddressOptions struct {
	// Remote is the consumer's kubeconfig context; RemoteKubeconfig the file holding it (default:
	// the provider's kubeconfig).
	Remote           string
	RemoteKubeconfig string
	// LocalClusterID and RemoteClusterID override the provider's and the consumer's Liqo cluster IDs.
	LocalClusterID  string
	RemoteClusterID string
	LiqoNamespace   string
	Name            string
	ProxyPort       int
	// RemoteCIDR skips reading the consumer: the CIDR it sees the provider's external CIDR as.
	RemoteCIDR string
	// IgnoreLiqoConditions uses a Configuration whose NetworkCIDRsConfigured condition is not True
	// or stale, with a warning, where Liqo itself would wait.
	IgnoreLiqoConditions bool
}

// NewProxyAddressOptions returns the options with Liqo's defaults.
func NewProxyAddressOptions() *ProxyAddressOptions {
	return &ProxyAddressOptions{LiqoNamespace: liqo.DefaultNamespace, ProxyPort: liqo.DefaultProxyPort}
}

// AddFlags registers the flags (names are part of the plugin's interface).
func (o *ProxyAddressOptions) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.Remote, "remote", o.Remote, "Kubeconfig context of the consumer cluster, the one that reaches the current context's proxy")
	fs.StringVar(&o.RemoteKubeconfig, "remote-kubeconfig", o.RemoteKubeconfig, "Kubeconfig file holding the --remote context (default: the same kubeconfig as the current context)")
	fs.StringVar(&o.LocalClusterID, "local-cluster-id", o.LocalClusterID, "Liqo cluster ID of the current (provider) cluster (default: read from its clusterid ConfigMap)")
	fs.StringVar(&o.RemoteClusterID, "remote-cluster-id", o.RemoteClusterID, "Liqo cluster ID of the consumer cluster (default: read from its clusterid ConfigMap)")
	fs.StringVar(&o.LiqoNamespace, "liqo-namespace", o.LiqoNamespace, "Namespace of Liqo, in both clusters")
	fs.StringVar(&o.Name, "name", o.Name, "Name of the IP object of the proxy in the Liqo namespace (default: the one kubectl apiproxy install created, labelled "+liqo.OwnSelector+", else "+liqo.DefaultName+", Liqo's own proxy)")
	fs.IntVar(&o.ProxyPort, "proxy-port", o.ProxyPort, "Port the proxy listens on")
	fs.BoolVar(&o.IgnoreLiqoConditions, "ignore-liqo-conditions", o.IgnoreLiqoConditions, "Use the consumer's Configuration even when its "+liqo.ConditionType+" condition (Liqo v1.2.0+) is not True or is stale, with a warning; by default that is an error, as in liqoctl")
	fs.StringVar(&o.RemoteCIDR, "remote-cidr", o.RemoteCIDR, "CIDR the consumer sees the provider's external CIDR as (its Configuration's status.remote.cidr.external); skips reading the consumer")
}

// Validate checks the flags alone, before any cluster is contacted.
func (o *ProxyAddressOptions) Validate() error {
	if o.Remote == "" && o.RemoteKubeconfig == "" && o.RemoteCIDR == "" {
		return fmt.Errorf("name the consumer cluster with --remote CONTEXT (or --remote-kubeconfig FILE), or give the CIDR it sees this cluster's external CIDR as with --remote-cidr")
	}
	if o.RemoteCIDR != "" {
		if _, err := netip.ParsePrefix(o.RemoteCIDR); err != nil {
			return fmt.Errorf("--remote-cidr %q is not a CIDR (want e.g. 10.81.0.0/16 or fd00:81::/64)", o.RemoteCIDR)
		}
	}
	if o.ProxyPort < 1 || o.ProxyPort > 65535 {
		return fmt.Errorf("--proxy-port %d is out of range 1-65535", o.ProxyPort)
	}
	if o.LiqoNamespace == "" {
		return fmt.Errorf("--liqo-namespace must not be empty")
	}
	return nil
}

// Request builds the liqo.Request of the flags: the provider is the context of configFlags, the
// consumer the --remote context (none with --remote-cidr).
func (o *ProxyAddressOptions) Request(configFlags *genericclioptions.ConfigFlags) (liqo.Request, error) {
	providerName, providerConfig, err := providerConfig(configFlags)
	if err != nil {
		return liqo.Request{}, err
	}
	provider, err := liqo.NewCluster(providerName, providerConfig)
	if err != nil {
		return liqo.Request{}, err
	}
	req := liqo.Request{
		Provider:          provider,
		Namespace:         o.LiqoNamespace,
		Name:              o.Name,
		ProxyPort:         o.ProxyPort,
		ProviderClusterID: o.LocalClusterID,
		ConsumerClusterID: o.RemoteClusterID,
		RemoteCIDR:        o.RemoteCIDR,
		IgnoreConditions:  o.IgnoreLiqoConditions,
	}
	if o.RemoteCIDR == "" {
		name, cfg, err := o.ConsumerConfig(configFlags)
		if err != nil {
			return liqo.Request{}, err
		}
		if req.Consumer, err = liqo.NewCluster(name, cfg); err != nil {
			return liqo.Request{}, err
		}
	}
	return req, nil
}

// Resolve reads the provider (the context of configFlags) and, unless RemoteCIDR is set, the
// consumer, and returns every step of the computation; see liqo.Resolve.
func (o *ProxyAddressOptions) Resolve(ctx context.Context, configFlags *genericclioptions.ConfigFlags) (*liqo.Result, error) {
	req, err := o.Request(configFlags)
	if err != nil {
		return nil, err
	}
	return o.ResolveRequest(ctx, req)
}

// ResolveRequest is Resolve with the request already built; on error the result holds the steps
// done so far.
func (o *ProxyAddressOptions) ResolveRequest(ctx context.Context, req liqo.Request) (*liqo.Result, error) {
	res, err := liqo.Resolve(ctx, req)
	if res != nil && res.Consumer == "" {
		res.Consumer = o.Remote
	}
	return res, err
}

// ConsumerConfig loads the --remote context from --remote-kubeconfig, or from the kubeconfig of
// configFlags. It returns the context's name and its client configuration.
func (o *ProxyAddressOptions) ConsumerConfig(configFlags *genericclioptions.ConfigFlags) (string, *rest.Config, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	file := "the kubeconfig"
	switch {
	case o.RemoteKubeconfig != "":
		rules.ExplicitPath, file = o.RemoteKubeconfig, o.RemoteKubeconfig
	case configFlags.KubeConfig != nil && *configFlags.KubeConfig != "":
		rules.ExplicitPath, file = *configFlags.KubeConfig, *configFlags.KubeConfig
	}
	raw, err := rules.Load()
	if err != nil {
		return "", nil, fmt.Errorf("loading the consumer's kubeconfig %s: %w", file, err)
	}
	name := o.Remote
	if name == "" {
		name = raw.CurrentContext
	}
	if err := checkContext(raw, name, "--remote", file); err != nil {
		return "", nil, err
	}
	cfg, err := clientcmd.NewNonInteractiveClientConfig(*raw, name, &clientcmd.ConfigOverrides{}, rules).ClientConfig()
	if err != nil {
		return "", nil, fmt.Errorf("client configuration of the consumer context %q: %w", name, err)
	}
	return name, cfg, nil
}

// providerConfig is the current context's client configuration, with the kubectl-style flags
// applied, and the context's name for messages.
func providerConfig(configFlags *genericclioptions.ConfigFlags) (string, *rest.Config, error) {
	loader := configFlags.ToRawKubeConfigLoader()
	raw, err := loader.RawConfig()
	if err != nil {
		return "", nil, fmt.Errorf("loading the kubeconfig: %w", err)
	}
	name := raw.CurrentContext
	if configFlags.Context != nil && *configFlags.Context != "" {
		name = *configFlags.Context
	}
	file := "the kubeconfig"
	if configFlags.KubeConfig != nil && *configFlags.KubeConfig != "" {
		file = *configFlags.KubeConfig
	}
	// Without any context the loader falls back to the in-cluster configuration (the plugin run
	// from a pod): only a named context must exist.
	if name != "" || len(raw.Contexts) > 0 {
		if err := checkContext(&raw, name, "--context", file); err != nil {
			return "", nil, err
		}
	}
	cfg, err := configFlags.ToRESTConfig()
	if err != nil {
		return "", nil, fmt.Errorf("client configuration of the provider context %q: %w", name, err)
	}
	if name == "" {
		name = cfg.Host
	}
	return name, cfg, nil
}

func checkContext(raw *clientcmdapi.Config, name, flag, file string) error {
	available := make([]string, 0, len(raw.Contexts))
	for n := range raw.Contexts {
		available = append(available, n)
	}
	slices.Sort(available)
	list := strings.Join(available, ", ")
	if list == "" {
		list = "none"
	}
	if name == "" {
		return fmt.Errorf("%s has no current context: choose one with %s (available contexts: %s)", file, flag, list)
	}
	if _, ok := raw.Contexts[name]; !ok {
		return fmt.Errorf("context %q (%s) not found in %s (available contexts: %s)", name, flag, file, list)
	}
	return nil
}

// getIPOptions follow kubectl's Complete/Validate/Run pattern.
type getIPOptions struct {
	configFlags *genericclioptions.ConfigFlags
	address     *ProxyAddressOptions
	output      string
	genericiooptions.IOStreams
}

func newGetIPCommand(configFlags *genericclioptions.ConfigFlags, streams genericiooptions.IOStreams) *cobra.Command {
	o := &getIPOptions{configFlags: configFlags, address: NewProxyAddressOptions(), IOStreams: streams}
	cmd := &cobra.Command{
		Use:   "get-ip --remote CONTEXT",
		Short: "Print the address a peer cluster reaches this cluster's API server proxy at",
		Long: `Print the address the consumer cluster (--remote) uses to reach the API server proxy of the
current context (the provider), through the Liqo network fabric.

It reads the proxy's IP object (ipam.liqo.io/v1alpha1) in the provider: the one kubectl apiproxy
install created (labelled app.kubernetes.io/part-of=apiproxy, e.g. liqo/apiproxy beside Liqo's
own), else liqo/api-server-proxy, or the one --name gives; it says on stderr which object and
whose proxy it used. Then it reads the consumer's Configuration for the provider
(networking.liqo.io/v1beta1), and remaps the
address into the CIDR the consumer sees the provider's external CIDR as: 10.70.0.3 in
10.70.0.0/16 remapped to 10.81.0.0/16 gives 10.81.0.3.`,
		Example: `  # The address cl01 uses to reach the proxy of cl02
  kubectl apiproxy --context cl02 get-ip --remote cl01

  # Every step of the computation
  kubectl apiproxy --context cl02 get-ip --remote cl01 -o yaml

  # Without access to the consumer: give its remapped external CIDR
  kubectl apiproxy --context cl02 get-ip --remote-cidr 10.81.0.0/16`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.Complete(cmd, args); err != nil {
				return err
			}
			if err := o.Validate(); err != nil {
				return err
			}
			return o.Run(cmd.Context())
		},
	}
	o.address.AddFlags(cmd.Flags())
	cmd.Flags().StringVarP(&o.output, "output", "o", "", "Output format: '' (the address alone), wide, json or yaml")
	return cmd
}

// Complete has nothing to derive: every flag is used as given (kept for the pattern).
func (o *getIPOptions) Complete(*cobra.Command, []string) error { return nil }

func (o *getIPOptions) Validate() error {
	switch o.output {
	case "", "wide", "json", "yaml":
	default:
		return fmt.Errorf("unknown output format %q: use wide, json or yaml, or leave -o unset", o.output)
	}
	return o.address.Validate()
}

func (o *getIPOptions) Run(ctx context.Context) error {
	res, err := o.address.Resolve(ctx, o.configFlags)
	if err != nil {
		return err
	}
	for _, w := range res.Warnings {
		fmt.Fprintf(o.ErrOut, "Warning: %s\n", w)
	}
	if o.output == "" {
		fmt.Fprintln(o.ErrOut, DescribeIPChoice(res))
	}
	return printProxyAddress(o.Out, o.output, res)
}

func printProxyAddress(out io.Writer, format string, res *liqo.Result) error {
	switch format {
	case "":
		_, err := fmt.Fprintln(out, res.FinalIP)
		return err
	case "json", "yaml":
		return cmdutil.PrintStructured(out, format, res)
	}
	w := printers.GetNewTabWriter(out)
	fmt.Fprintln(w, "NAME\tPROXY\tLOCAL IP\tREMAPPED IP\tCONSUMER\tREMAPPED EXT CIDR\tFINAL IP\tPROXY URL")
	fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", res.IP.Name, proxyColumn(res), orNone(res.LocalIP), res.RemappedIP,
		orNone(res.Consumer), orNone(res.RemappedExternalCIDR()), res.FinalIP, res.ProxyURL)
	return w.Flush()
}

// DescribeIPChoice is the line get-ip and connect print on stderr: which IP object, chosen how, and
// whose proxy it stands for.
func DescribeIPChoice(res *liqo.Result) string {
	return fmt.Sprintf("using IP %s in %s (%s): %s", res.IP, res.Provider, res.IPSelectedBy, res.Proxy)
}

// proxyColumn is -o wide's short form of res.Proxy.
func proxyColumn(res *liqo.Result) string {
	if strings.HasPrefix(res.Proxy, "kubectl apiproxy") {
		return "apiproxy"
	}
	if strings.HasPrefix(res.Proxy, "Liqo") {
		return "liqo"
	}
	return "other"
}

func orNone(s string) string {
	if s == "" {
		return "<none>"
	}
	return s
}
