// Package cmdutil holds the small pieces both binaries' command trees share.
package cmdutil

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/apiproxy/apiproxy/pkg/version"
)

// NewVersionCommand prints the build identity stamped by `make build`; `-o json|yaml` for scripts.
func NewVersionCommand(out io.Writer) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the version of this binary",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return PrintVersion(out, output)
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "Output format: '' (one line), json or yaml")
	return cmd
}

// PrintVersion writes version.Get() in the given format.
func PrintVersion(out io.Writer, format string) error {
	info := version.Get()
	switch format {
	case "":
		_, err := fmt.Fprintln(out, info.String())
		return err
	case "json", "yaml":
		return PrintStructured(out, format, info)
	default:
		return fmt.Errorf("unknown output format %q: use json or yaml, or leave -o unset", format)
	}
}
