// Package plugin builds the command tree of the `kubectl apiproxy` plugin.
package plugin

import (
	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/apiproxy/apiproxy/pkg/cmd/cmdutil"
)

// NewRootCommand returns `kubectl apiproxy` with the standard kubeconfig flags
// (--kubeconfig, --context, -n, ...) from cli-runtime.
func NewRootCommand(streams genericiooptions.IOStreams) *cobra.Command {
	configFlags := genericclioptions.NewConfigFlags(true)
	root := &cobra.Command{
		Use:   "kubectl-apiproxy",
		Short: "Reach a Kubernetes API server that is not publicly exposed, through a cluster-to-cluster fabric",
		Long: `kubectl apiproxy deploys and uses an HTTP CONNECT proxy in front of a cluster's API server, so
peer clusters (Liqo-style multi-cluster) and node-local clients reach it through the network fabric.
TLS always runs end to end between the client and the API server: the proxy never sees credentials.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Annotations: map[string]string{
			// Help and usage then read "kubectl apiproxy ...", as the user types it.
			cobra.CommandDisplayNameAnnotation: "kubectl apiproxy",
		},
	}
	root.SetIn(streams.In)
	root.SetOut(streams.Out)
	root.SetErr(streams.ErrOut)
	configFlags.AddFlags(root.PersistentFlags())

	root.AddCommand(cmdutil.NewVersionCommand(streams.Out))
	for _, add := range subcommands {
		root.AddCommand(add(configFlags, streams))
	}
	return root
}

// subcommands are registered by the file of this package that implements each command.
var subcommands []func(*genericclioptions.ConfigFlags, genericiooptions.IOStreams) *cobra.Command

func registerSubcommand(f func(*genericclioptions.ConfigFlags, genericiooptions.IOStreams) *cobra.Command) {
	subcommands = append(subcommands, f)
}
