package plugin

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/apiproxy/apiproxy/pkg/cmd/cmdutil"
	"github.com/apiproxy/apiproxy/pkg/install"
)

func init() { registerSubcommand(newStatusCommand) }

// StatusOptions are `kubectl apiproxy status`'s flags (Complete/Validate/Run).
type StatusOptions struct {
	configFlags *genericclioptions.ConfigFlags
	genericiooptions.IOStreams
	namespace string
	output    string
}

func newStatusCommand(configFlags *genericclioptions.ConfigFlags, streams genericiooptions.IOStreams) *cobra.Command {
	o := &StatusOptions{configFlags: configFlags, IOStreams: streams}
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the installed agents: objects, readiness, the image digests that run against this plugin's, Liqo IP resource",
		Example: `  kubectl apiproxy status
  kubectl apiproxy status -n apiproxy-system -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.Complete()
			if err := o.Validate(); err != nil {
				return err
			}
			return o.Run(cmd.Context())
		},
	}
	cmd.Flags().StringVarP(&o.output, "output", "o", "", "Output format: json, or leave unset for a table")
	return cmd
}

// Complete fills the namespace.
func (o *StatusOptions) Complete() { o.namespace = apiproxyNamespace(o.configFlags) }

// Validate checks -o.
func (o *StatusOptions) Validate() error {
	if o.output != "" && o.output != "json" {
		return fmt.Errorf("-o %q: use json, or leave it unset for a table", o.output)
	}
	return nil
}

// Run prints the report.
func (o *StatusOptions) Run(ctx context.Context) error {
	if ctx == nil {
		ctx = context.Background()
	}
	c, err := newInstallClient(o.configFlags)
	if err != nil {
		return err
	}
	r, err := install.GetStatus(ctx, c, o.namespace)
	if err != nil {
		return err
	}
	if o.output == "json" {
		return cmdutil.PrintStructured(o.Out, o.output, r)
	}
	return printStatus(o.Out, r)
}

func printStatus(out io.Writer, r *install.Report) error {
	fmt.Fprintf(out, "Namespace %s, plugin %s: %s\n\n", r.Namespace, r.PluginVersion, yesNo(r.Ready, "ready", "NOT READY"))
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "ROLE\tREADY\tOBJECT\tSTATUS")
	for _, rs := range r.Roles {
		if !rs.Installed {
			fmt.Fprintf(w, "%s\t-\t-\tnot installed\n", rs.Role)
			continue
		}
		objs := append([]install.ObjectStatus(nil), rs.Objects...)
		sort.SliceStable(objs, func(i, j int) bool { return objs[i].Kind < objs[j].Kind })
		for _, ob := range objs {
			fmt.Fprintf(w, "%s\t%s\t%s/%s\t%s\n", rs.Role, yesNo(ob.Ready, "yes", "no"), strings.ToLower(ob.Kind), ob.Name, ob.Message)
		}
	}
	if err := w.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(out)
	for _, rs := range r.Roles {
		if len(rs.Problems) == 0 {
			continue
		}
		fmt.Fprintf(out, "%s problems:\n", rs.Role)
		for _, p := range rs.Problems {
			fmt.Fprint(out, p.Format("  "))
		}
		fmt.Fprintln(out)
	}
	// One line per workload image: what its pods run against what this plugin installs.
	for _, rs := range r.Roles {
		for _, wi := range rs.WorkloadImages {
			fmt.Fprintf(out, "%s image: %s (%s)\n", rs.Role, wi.Image, wi.Summary)
		}
	}
	if r.ProxyAuth != "" {
		fmt.Fprintf(out, "proxy auth: %s\n", r.ProxyAuth)
		if r.ProxyAuth == install.AuthTokenReview {
			fmt.Fprintf(out, "grant a tunnel: kubectl create clusterrolebinding NAME --clusterrole %s --serviceaccount NAMESPACE:NAME (or --user/--group)\n", install.TunnelRoleName)
		}
	}
	ip := r.IP
	switch {
	case !ip.Found:
		fmt.Fprintf(out, "Liqo IP resource: %s\n", ip.Message)
	default:
		remapped := ip.RemappedIP
		if remapped == "" && len(ip.IPMappings) > 0 {
			b, _ := json.Marshal(ip.IPMappings)
			remapped = string(b)
		}
		if remapped == "" {
			remapped = "-"
		}
		fmt.Fprintf(out, "Liqo IP resource %s/%s: local %s, remapped %s: %s\n", ip.Namespace, ip.Name, ip.LocalIP, remapped, ip.Message)
	}
	return nil
}

func yesNo(b bool, yes, no string) string {
	if b {
		return yes
	}
	return no
}
