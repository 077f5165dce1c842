package plugin

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/apiproxy/apiproxy/pkg/install"
)

func init() { registerSubcommand(newUninstallCommand) }

// UninstallOptions are `kubectl apiproxy uninstall`'s flags (Complete/Validate/Run).
type UninstallOptions struct {
	configFlags *genericclioptions.ConfigFlags
	genericiooptions.IOStreams
	namespace  string
	dryRunFlag string
	dryRun     install.DryRun
	timeout    time.Duration
}

func newUninstallCommand(configFlags *genericclioptions.ConfigFlags, streams genericiooptions.IOStreams) *cobra.Command {
	o := &UninstallOptions{configFlags: configFlags, IOStreams: streams}
	cmd := &cobra.Command{
		Use:   "uninstall",
		Short: "Remove everything install created (found by its labels)",
		Long: `Delete every object labelled app.kubernetes.io/part-of=apiproxy by the install into the namespace:
the webhook configuration first, then Liqo's IP resource, the workloads, Services, Secrets, RBAC, and
the namespace itself when install created it.

With the node role, the DaemonSet goes first and uninstall waits (at most --timeout) for its pods to
stop: each one, finding its DaemonSet deleted, removes the node IP, its interface and its iptables
rules from its node. A rolling update or a restart of those pods keeps them in place.`,
		Example: `  # See what would go
  kubectl apiproxy uninstall --dry-run
  kubectl apiproxy uninstall -n apiproxy-system`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.Complete(); err != nil {
				return err
			}
			return o.Run(cmd.Context())
		},
	}
	cmd.Flags().StringVar(&o.dryRunFlag, "dry-run", "none", `"none", "client" (list what would be deleted) or "server" (the API server checks the deletions, persists nothing)`)
	cmd.Flags().Lookup("dry-run").NoOptDefVal = "client"
	cmd.Flags().DurationVar(&o.timeout, "timeout", 2*time.Minute, "How long to wait for the node role's pods to stop (and clean their nodes) before deleting the rest")
	return cmd
}

// Complete fills the namespace and dry-run mode.
func (o *UninstallOptions) Complete() error {
	o.namespace = apiproxyNamespace(o.configFlags)
	var err error
	if o.dryRun, err = install.ParseDryRun(o.dryRunFlag); err != nil {
		return err
	}
	if o.timeout <= 0 {
		return fmt.Errorf("--timeout %s must be positive, e.g. --timeout 2m", o.timeout)
	}
	return nil
}

// Run deletes (or lists) and prints one line per object.
func (o *UninstallOptions) Run(ctx context.Context) error {
	if ctx == nil {
		ctx = context.Background()
	}
	c, err := newInstallClient(o.configFlags)
	if err != nil {
		return err
	}
	objs, err := install.Uninstall(ctx, c, o.namespace, o.dryRun, o.timeout, o.ErrOut)
	what := "deleted"
	switch o.dryRun {
	case install.DryRunClient:
		what = "deleted (dry run)"
	case install.DryRunServer:
		what = "deleted (server dry run)"
	}
	if perr := printObjects(o.Out, "", objs, what); perr != nil && err == nil {
		err = perr
	}
	if err == nil && len(objs) == 0 {
		fmt.Fprintf(o.ErrOut, "nothing labelled %s=%s found for namespace %s\n", install.LabelPartOf, install.PartOf, o.namespace)
	}
	return err
}
