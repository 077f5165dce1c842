// Package agent builds the command tree of the in-cluster `agent` binary: one binary, one role per
// subcommand (proxy, node, webhook), so a single image serves every DaemonSet and Deployment.
package agent

import (
	"flag"
	"io"

	"github.com/spf13/cobra"
	"k8s.io/klog/v2"

	"github.com/apiproxy/apiproxy/pkg/cmd/cmdutil"
)

// NewRootCommand returns `agent` with every role registered.
func NewRootCommand(out, errOut io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:           "agent",
		Short:         "In-cluster agents of kubectl-apiproxy: CONNECT proxy, node IP keeper, pod webhook",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(out)
	root.SetErr(errOut)
	// klog's flags (-v, --vmodule, ...) on every role; logs go to stderr.
	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(fs)
	root.PersistentFlags().AddGoFlagSet(fs)

	root.AddCommand(cmdutil.NewVersionCommand(out))
	for _, add := range roles {
		root.AddCommand(add(out, errOut))
	}
	return root
}

// roles are registered by the files of this package that implement each role, so adding a role
// touches only its own file.
var roles []func(out, errOut io.Writer) *cobra.Command

func registerRole(f func(out, errOut io.Writer) *cobra.Command) { roles = append(roles, f) }
