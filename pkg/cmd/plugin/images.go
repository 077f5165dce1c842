package plugin

import (
	"fmt"
	"slices"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/apiproxy/apiproxy/pkg/cmd/cmdutil"
	"github.com/apiproxy/apiproxy/pkg/install"
	"github.com/apiproxy/apiproxy/pkg/version"
)

func init() { registerSubcommand(newImagesCommand) }

// addImageFlags registers the install flags that decide which images the pods get, on install and on
// images alike, so `images` always answers for the same flags install takes.
func addImageFlags(f *pflag.FlagSet, roles *[]string, o *install.Options) {
	f.StringSliceVar(roles, "roles", []string{"proxy"}, "Roles to install, comma separated: proxy, node, webhook")
	imageHelp := "Agent image; the default is the image of this plugin's own release (" + install.DefaultImageRepo + ":<plugin version>: this dev build pins no digest)"
	if version.AgentImage != "" {
		imageHelp = "Agent image; the default is the image of this plugin's own release, pinned by digest"
	}
	f.StringVar(&o.Image, "image", o.Image, imageHelp)
	f.StringVar(&o.Registry, "registry", "", "Pull the agent image from this registry (a mirror): HOST[:PORT][/PATH] replaces the registry and path of --image (or of the default) and keeps its name, tag and digest, e.g. mirror.example:5000/team gives mirror.example:5000/team/agent:<tag>@<digest>; kubectl apiproxy images lists what to copy there")
}

// ImagesOptions are `kubectl apiproxy images`'s flags (Complete/Validate/Run).
type ImagesOptions struct {
	configFlags *genericclioptions.ConfigFlags
	genericiooptions.IOStreams

	install.Options
	roles  []string
	output string
}

func newImagesCommand(configFlags *genericclioptions.ConfigFlags, streams genericiooptions.IOStreams) *cobra.Command {
	o := &ImagesOptions{configFlags: configFlags, IOStreams: streams, Options: install.DefaultOptions()}
	cmd := &cobra.Command{
		Use:   "images",
		Short: "List the image references an install with the same flags would use (to mirror them)",
		Long: `Render what install would apply with the same --roles, --image and --registry, without contacting
a cluster, and list the images of its pod templates: one distinct reference per line, ready for a
mirroring tool; -o wide for the role, workload and container of each, -o json|yaml for scripts.`,
		Example: `  # Copy the agent (every platform, digest kept) into a mirror, then install from it
  crane copy "$(kubectl apiproxy images)" "$(kubectl apiproxy images --registry mirror.example:5000/team)"
  kubectl apiproxy install --registry mirror.example:5000/team --image-pull-secret mirror-pull

  # What each workload of a full install runs
  kubectl apiproxy images --roles proxy,node,webhook --registry mirror.example:5000/team -o wide`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.Complete(); err != nil {
				return err
			}
			if err := o.Validate(); err != nil {
				return err
			}
			return o.Run()
		},
	}
	addImageFlags(cmd.Flags(), &o.roles, &o.Options)
	cmd.Flags().StringVarP(&o.output, "output", "o", "", "Output format: '' (one distinct reference per line), wide (a table), json or yaml")
	return cmd
}

// Complete reads the roles.
func (o *ImagesOptions) Complete() error {
	var err error
	o.Namespace = apiproxyNamespace(o.configFlags)
	o.Roles, err = install.ParseRoles(o.roles)
	return err
}

// Validate checks the image flags and -o.
func (o *ImagesOptions) Validate() error {
	switch o.output {
	case "", "wide", "json", "yaml":
	default:
		return fmt.Errorf("-o %q: use wide, json or yaml, or leave it unset for one reference per line", o.output)
	}
	return o.ValidateImages()
}

// Run renders and prints.
func (o *ImagesOptions) Run() error {
	uses, err := install.RenderImages(o.Options)
	if err != nil {
		return err
	}
	switch o.output {
	case "json", "yaml":
		return cmdutil.PrintStructured(o.Out, o.output, uses)
	case "wide":
		w := tabwriter.NewWriter(o.Out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "ROLE\tWORKLOAD\tCONTAINER\tIMAGE")
		for _, u := range uses {
			container := u.Container
			if u.InitContainer {
				container += " (init)"
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", u.Role, u.Workload, container, u.Image)
		}
		return w.Flush()
	}
	var seen []string
	for _, u := range uses {
		if !slices.Contains(seen, u.Image) {
			seen = append(seen, u.Image)
			if _, err := fmt.Fprintln(o.Out, u.Image); err != nil {
				return err
			}
		}
	}
	return nil
}
