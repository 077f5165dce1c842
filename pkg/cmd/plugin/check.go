package plugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/apiproxy/apiproxy/pkg/cmd/cmdutil"
	"github.com/apiproxy/apiproxy/pkg/connect"
	"github.com/apiproxy/apiproxy/pkg/install"
	"github.com/apiproxy/apiproxy/pkg/pathcheck"
	"github.com/apiproxy/apiproxy/pkg/tunnel"
)

func init() { registerSubcommand(newCheckCommand) }

// CheckOptions are `kubectl apiproxy check`'s flags (Complete/Validate/Run).
type CheckOptions struct {
	configFlags *genericclioptions.ConfigFlags
	genericiooptions.IOStreams

	address       *ProxyAddressOptions
	ProxyURL      string
	TLSServerName string
	DialTimeout   time.Duration
	Via           string
	ViaNamespace  string
	ProxyToken    string
	ViaProxyToken string
	output        string

	target *connect.Target
}

func newCheckCommand(configFlags *genericclioptions.ConfigFlags, streams genericiooptions.IOStreams) *cobra.Command {
	o := &CheckOptions{configFlags: configFlags, IOStreams: streams, address: NewProxyAddressOptions()}
	cmd := &cobra.Command{
		Use:   "check --remote CONTEXT [--via CONTEXT]",
		Short: "Walk the path to the current context's API server through its proxy, hop by hop",
		Long: `check walks, from where it runs, the path connect uses to reach the current context's API server
(the provider) through its proxy as seen from --remote (the consumer), and prints one line per hop
with OK or FAIL, the object or address involved, and a fix:

  liqo           Liqo's CRDs served in both clusters, both cluster IDs known
  ip             the proxy's IP object in the provider (ours first, as get-ip) and its remapped status
  configuration  the consumer's Configuration for the provider: status set, remapped external CIDR
  condition      its NetworkCIDRsConfigured condition (Liqo v1.2.0+): True at the current generation,
                 as liqoctl requires (--ignore-liqo-conditions goes on with a warning); none: as is
  address        the computed proxy address
  tcp            a TCP connection to it           (with --via: relay, a port-forward through that
  connect        the proxy's answer to a CONNECT   cluster to its proxy pod, which CONNECTs on);
                 a 407 is retried with the token connect would send (--proxy-token, else the
                 context's user's token)
  tls            TLS with the API server, verified for the expected name
  readyz         GET /readyz through the tunnel
  access         whether you may list namespaces (SelfSubjectAccessReview)

It exits 0 only when every hop passes. The address and the errors are those of get-ip and connect.`,
		Example: `  kubectl apiproxy --context cl02 check --remote cl01
  kubectl apiproxy --context cl02 check --remote cl01 --via cl01 -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.Complete(); err != nil {
				return err
			}
			if err := o.Validate(); err != nil {
				return err
			}
			return o.Run(cmd.Context())
		},
	}
	o.address.AddFlags(cmd.Flags())
	f := cmd.Flags()
	f.StringVar(&o.ProxyURL, "proxy-url", "", "Proxy URL (http://HOST:PORT); skips the Liqo hops")
	f.StringVar(&o.TLSServerName, "tls-server-name", "", "Name to verify the API server's certificate against (default: the context's server host)")
	f.DurationVar(&o.DialTimeout, "dial-timeout", 10*time.Second, "Timeout of each network hop")
	f.StringVar(&o.Via, "via", "", "Check the relayed path of connect --via: port-forward through this context's cluster to its apiproxy proxy pod")
	f.StringVar(&o.ViaNamespace, "via-namespace", install.DefaultNamespace, "Namespace of the proxy's pods in the --via cluster")
	f.StringVar(&o.ViaProxyToken, "via-proxy-token", "", "Token for the --via cluster's proxy when it authenticates tunnels (as connect --via-proxy-token); default: the --via context's user's token, when the relay asks (407)")
	f.StringVar(&o.ProxyToken, "proxy-token", "", "Token for a proxy that authenticates tunnels (as connect --proxy-token); default: the context's user's token, when the proxy asks (407)")
	f.StringVarP(&o.output, "output", "o", "", "Output format: json or yaml, or leave unset for one line per hop")
	return cmd
}

// Complete loads the provider context.
func (o *CheckOptions) Complete() error {
	raw, err := o.configFlags.ToRawKubeConfigLoader().RawConfig()
	if err != nil {
		return fmt.Errorf("loading kubeconfig: %w", err)
	}
	name := ""
	if o.configFlags.Context != nil {
		name = *o.configFlags.Context
	}
	o.target, err = connect.NewTarget(raw, name)
	return err
}

// Validate checks the flags alone.
func (o *CheckOptions) Validate() error {
	switch o.output {
	case "", "json", "yaml":
	default:
		return fmt.Errorf("-o %q: use json or yaml, or leave it unset", o.output)
	}
	if o.DialTimeout <= 0 {
		return fmt.Errorf("--dial-timeout %s must be positive", o.DialTimeout)
	}
	if o.ViaNamespace == "" {
		return errors.New("--via-namespace must not be empty")
	}
	if o.ViaProxyToken != "" && o.Via == "" {
		return errors.New("--via-proxy-token is the token for the --via cluster's proxy: give --via CONTEXT too, or use --proxy-token")
	}
	if o.ProxyURL != "" {
		return validateProxyURL(o.ProxyURL, o.ProxyToken)
	}
	if err := o.address.Validate(); err != nil {
		return fmt.Errorf("%w; or give the proxy directly with --proxy-url http://HOST:PORT", err)
	}
	return nil
}

// Run walks the path and prints the report; a failed hop makes the exit status 1.
func (o *CheckOptions) Run(ctx context.Context) error {
	if ctx == nil {
		ctx = context.Background()
	}
	in := pathcheck.Input{
		ProxyURL: o.ProxyURL, Target: o.target, TLSServerName: o.TLSServerName, DialTimeout: o.DialTimeout,
		Resolve: o.address.ResolveRequest,
	}
	if o.ProxyURL != "" {
		hp, _ := tunnel.ProxyHostPort(o.ProxyURL)
		in.ProxyURL = "http://" + hp
	} else {
		req, err := o.address.Request(o.configFlags)
		if err != nil {
			return err
		}
		in.Request = req
	}
	rest, err := o.configFlags.ToRESTConfig()
	if err != nil {
		return fmt.Errorf("client configuration of the current context: %w", err)
	}
	in.REST = rest
	// The same credentials connect shows an authenticating proxy.
	in.Creds = &connect.ProxyCredentials{Override: o.ProxyToken, Config: rest, Context: o.target.ContextName}
	if o.ProxyURL != "" {
		in.Creds.Authorization, _ = tunnel.ProxyAuthorization(o.ProxyURL) // checked by Validate
	}
	if o.Via != "" {
		relay, err := newRelay(o.configFlags, o.Via, o.ViaNamespace, o.address.ProxyPort, o.ErrOut)
		if err != nil {
			return err
		}
		defer relay.Close()
		in.Relay, in.RelayName = relay, o.Via
		in.RelayCreds = relayCredentials(relay, o.ViaProxyToken)
	}
	report := pathcheck.Run(ctx, in)
	if o.output != "" {
		if err := cmdutil.PrintStructured(o.Out, o.output, report); err != nil {
			return err
		}
	} else if err := printCheck(o.Out, report); err != nil {
		return err
	}
	if !report.OK {
		return &cmdutil.ExitError{Code: 1}
	}
	return nil
}

func printCheck(out io.Writer, r *pathcheck.Report) error {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	for _, h := range r.Hops {
		line := h.Detail
		if h.Fix != "" {
			line += " → fix: " + h.Fix
		}
		object := h.Object
		if object == "" {
			object = "-"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", h.Status, h.Hop, object, line)
	}
	return w.Flush()
}
