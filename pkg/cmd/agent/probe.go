package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/apiproxy/apiproxy/pkg/health"
)

func init() { registerRole(newProbeCommand) }

// probeOptions are the flags of `agent probe`, the kubelet's exec probe of the node role: in a
// hostNetwork pod a TCP health port is the node's, shared by the old and the new pod of a surge
// rollout, so each container answers on a Unix socket of its own (--health-socket) and the probe
// asks exactly that process. Its output is the kubelet's event text ("Readiness probe failed:
// [-]upstream failed: ..."), which `status` and `install --wait` show.
type probeOptions struct {
	socket, addr, path string
	timeout            time.Duration
}

func newProbeCommand(out, _ io.Writer) *cobra.Command {
	o := &probeOptions{path: "/readyz?verbose", timeout: health.DefaultProbeTimeout}
	cmd := &cobra.Command{
		Use:   "probe (--socket PATH | --addr HOST:PORT)",
		Short: "Ask a running agent's health endpoint (exec probes): prints the answer, exits 1 unless it is 2xx",
		Example: `  agent probe --socket /run/apiproxy/health/proxy.sock                 # readiness, every check listed
  agent probe --socket /run/apiproxy/health/node.sock --path /healthz
  agent probe --addr 127.0.0.1:9090`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if (o.socket == "") == (o.addr == "") {
				return errors.New("give exactly one of --socket PATH (the agent's --health-socket) or --addr HOST:PORT (its --metrics-addr)")
			}
			target := o.addr
			if o.socket != "" {
				target = "unix:" + o.socket
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), o.timeout)
			defer cancel()
			body, ok, err := health.Probe(ctx, target, o.path)
			if err != nil {
				return err
			}
			fmt.Fprint(out, body)
			if !ok {
				// The body already says why; the exit status is what the kubelet reads.
				return fmt.Errorf("%s: not ok", strings.SplitN(o.path, "?", 2)[0])
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.socket, "socket", "", "the agent's --health-socket")
	f.StringVar(&o.addr, "addr", "", "the agent's --metrics-addr, HOST:PORT")
	f.StringVar(&o.path, "path", o.path, "what to ask: /readyz?verbose, /readyz, /healthz or /metrics")
	f.DurationVar(&o.timeout, "timeout", o.timeout, "give up after this long (keep it below the probe's timeoutSeconds)")
	return cmd
}
