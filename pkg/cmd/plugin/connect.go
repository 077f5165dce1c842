package plugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/apiproxy/apiproxy/pkg/cmd/cmdutil"
	"github.com/apiproxy/apiproxy/pkg/connect"
	"github.com/apiproxy/apiproxy/pkg/install"
	"github.com/apiproxy/apiproxy/pkg/tunnel"
)

func init() { registerSubcommand(newConnectCommand) }

const connectExample = `  # cl02 is the current context; cl01 is the peer whose fabric reaches cl02's proxy.
  # Run kubectl against cl02 through its proxy (a local listener, closed when kubectl exits):
  kubectl apiproxy connect --context cl02 --remote cl01 -- kubectl get ns

  # A kubeconfig with proxy-url, for clients inside cl01 that reach the fabric:
  kubectl apiproxy connect --context cl02 --remote cl01 --print-kubeconfig > cl02-via-cl01.yaml

  # Add a context "cl02-via-apiproxy" to your kubeconfig:
  kubectl apiproxy connect --context cl02 --remote cl01 --merge

  # Skip the address computation when you know the proxy URL:
  kubectl apiproxy connect --context cl02 --proxy-url http://10.81.0.3:8118

  # This machine reaches cl01's API server but not the fabric: relay through cl01's proxy
  # (a port-forward to its pod; needs pods/portforward in apiproxy-system of cl01):
  kubectl apiproxy connect --context cl02 --remote cl01 --via cl01 -- kubectl get ns`

// ConnectOptions are the options of `kubectl apiproxy connect`.
type ConnectOptions struct {
	configFlags *genericclioptions.ConfigFlags
	genericiooptions.IOStreams

	// Where the proxy is: computed from the Liqo resources (getIP), or given.
	address  *ProxyAddressOptions
	ProxyURL string

	PrintKubeconfig bool
	WriteKubeconfig string
	Merge           bool

	Listen        string
	TLSServerName string
	DialTimeout   time.Duration
	Command       []string

	// Via is the context whose API server and proxy pods relay the tunnels (port-forward, then
	// CONNECT to the remote proxy), for machines that reach that cluster but not the fabric.
	Via          string
	ViaNamespace string

	// ViaProxyToken is --via-proxy-token: the token shown to the --via cluster's proxy (the relay)
	// when it authenticates tunnels; default: the --via context's user's token.
	ViaProxyToken string
	// ProxyToken is --proxy-token: the token shown to a proxy that authenticates tunnels.
	ProxyToken string

	target   *connect.Target
	creds    *connect.ProxyCredentials
	proxyURL string // resolved, http://HOST:PORT
}

func newConnectCommand(configFlags *genericclioptions.ConfigFlags, streams genericiooptions.IOStreams) *cobra.Command {
	o := &ConnectOptions{configFlags: configFlags, IOStreams: streams, address: NewProxyAddressOptions()}
	cmd := &cobra.Command{
		Use:   "connect [--remote CONTEXT | --proxy-url URL] [flags] [-- COMMAND [ARGS...]]",
		Short: "Reach the current context's API server through its proxy, as seen from a peer cluster",
		Long: `connect reaches the API server of the current context (the provider, e.g. cl02) through its
apiproxy CONNECT proxy, at the address the peer given by --remote (e.g. cl01) uses (see get-ip).

By default it listens locally (--listen) and tunnels every connection through the proxy, writes a
kubeconfig that points at the listener, and runs until interrupted, like kubectl port-forward. After
"--", it runs the command with KUBECONFIG set and exits with the command's status.
--print-kubeconfig, --write-kubeconfig and --merge instead produce a kubeconfig with proxy-url, for
clients that reach the proxy themselves (inside the peer cluster). TLS stays end to end: the proxy
never sees your credentials.

--via CONTEXT is for a machine that reaches the peer's API server but not the fabric: every tunnel
is a stream of one port-forward session (through that API server) to a ready apiproxy proxy pod
there, which CONNECTs to the proxy address, which CONNECTs to the API server. It needs "create" on
pods/portforward in --via-namespace of that cluster, and the proxy there must allow the address
(install --relay). It works with the local listener and "-- COMMAND" only.

A proxy that authenticates tunnels (agent proxy --auth tokenreview) answers 407: connect then sends
the context's user's bearer token as Proxy-Authorization (a token, tokenFile, or exec/auth-provider
plugin, as kubectl gets it). --proxy-token TOKEN sends that token instead (a user with only a client
certificate needs it, e.g. a ServiceAccount token). --print-kubeconfig, --write-kubeconfig and --merge
then write the token into proxy-url (http://apiproxy:TOKEN@HOST:PORT), so keep that file private.`,
		Example: connectExample,
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
	f := cmd.Flags()
	f.StringVar(&o.ProxyURL, "proxy-url", "", "Proxy URL (http://HOST:PORT); skips computing it from the Liqo resources")
	f.BoolVar(&o.PrintKubeconfig, "print-kubeconfig", false, "Print a kubeconfig with proxy-url for the current context and exit")
	f.StringVar(&o.WriteKubeconfig, "write-kubeconfig", "", "Write a kubeconfig with proxy-url for the current context to this path and exit")
	f.BoolVar(&o.Merge, "merge", false, "Add a context <context>-via-apiproxy with proxy-url to your kubeconfig and exit")
	f.StringVar(&o.Listen, "listen", "127.0.0.1:0", "Local address of the tunnelling listener")
	f.StringVar(&o.TLSServerName, "tls-server-name", "", "Name to verify the API server's certificate against (default: the context's server host)")
	f.DurationVar(&o.DialTimeout, "dial-timeout", 10*time.Second, "Timeout to reach the proxy and open a tunnel (TCP dial plus CONNECT)")
	f.StringVar(&o.Via, "via", "", "Relay through this context's cluster: port-forward (through its API server) to its apiproxy proxy pod, which CONNECTs to the proxy address (needs pods/portforward there)")
	f.StringVar(&o.ViaNamespace, "via-namespace", install.DefaultNamespace, "Namespace of the proxy's pods in the --via cluster")
	f.StringVar(&o.ViaProxyToken, "via-proxy-token", "", "Token for the --via cluster's proxy when it authenticates tunnels (a token of the --via cluster); default: the --via context's user's token, when the relay asks (407)")
	f.StringVar(&o.ProxyToken, "proxy-token", "", "Token for a proxy that authenticates tunnels (sent as Proxy-Authorization); default: the context's user's token, when the proxy asks (407)")
	return cmd
}

// Complete resolves the target context and the proxy URL.
func (o *ConnectOptions) Complete(cmd *cobra.Command, args []string) error {
	if dash := cmd.ArgsLenAtDash(); dash >= 0 {
		if dash > 0 {
			return fmt.Errorf("unexpected arguments %v before \"--\"", args[:dash])
		}
		o.Command = args[dash:]
	} else if len(args) > 0 {
		return fmt.Errorf("unexpected arguments %v: put the command to run after \"--\"", args)
	}
	raw, err := o.configFlags.ToRawKubeConfigLoader().RawConfig()
	if err != nil {
		return fmt.Errorf("loading kubeconfig: %w", err)
	}
	contextName := ""
	if o.configFlags.Context != nil {
		contextName = *o.configFlags.Context
	}
	if o.target, err = connect.NewTarget(raw, contextName); err != nil {
		return err
	}
	restConfig, err := o.configFlags.ToRESTConfig()
	if err != nil {
		return fmt.Errorf("client configuration of context %q: %w", o.target.ContextName, err)
	}
	o.creds = &connect.ProxyCredentials{Override: o.ProxyToken, Config: restConfig, Context: o.target.ContextName}
	if o.ProxyURL != "" {
		// Invalid credentials are reported by Validate; proxyURL is only ever shown without them.
		o.creds.Authorization, _ = tunnel.ProxyAuthorization(o.ProxyURL)
	}
	return nil
}

// validateProxyURL checks --proxy-url, whose credentials (http://token:TOKEN@HOST:PORT) stand for
// --proxy-token: not both.
func validateProxyURL(proxyURL, proxyToken string) error {
	if _, err := tunnel.ProxyHostPort(proxyURL); err != nil {
		return err
	}
	if _, err := tunnel.ProxyAuthorization(proxyURL); err != nil {
		return fmt.Errorf("--proxy-url %s: %w", tunnel.Redact(proxyURL), err)
	}
	if _, creds := tunnel.StripCredentials(proxyURL); creds && proxyToken != "" {
		return errors.New("--proxy-url carries credentials and --proxy-token is given: keep one")
	}
	return nil
}

// Validate checks that the flags make one coherent request.
func (o *ConnectOptions) Validate() error {
	modes := 0
	for _, on := range []bool{o.PrintKubeconfig, o.WriteKubeconfig != "", o.Merge} {
		if on {
			modes++
		}
	}
	if modes > 1 {
		return errors.New("--print-kubeconfig, --write-kubeconfig and --merge are exclusive: pick one")
	}
	if modes == 1 && o.Via != "" {
		return fmt.Errorf("--via cannot be combined with --print-kubeconfig, --write-kubeconfig or --merge: a kubeconfig's proxy-url names one proxy and cannot express the port-forward hop through %q; use the local listener (the default) or \"-- COMMAND\"", o.Via)
	}
	if o.ViaNamespace == "" {
		return errors.New("--via-namespace must not be empty")
	}
	if o.ViaProxyToken != "" && o.Via == "" {
		return errors.New("--via-proxy-token is the token for the --via cluster's proxy: give --via CONTEXT too, or use --proxy-token")
	}
	if modes == 1 && len(o.Command) > 0 {
		return errors.New("a command after \"--\" runs against the local listener: drop --print-kubeconfig/--write-kubeconfig/--merge")
	}
	if o.ProxyURL != "" {
		if err := validateProxyURL(o.ProxyURL, o.ProxyToken); err != nil {
			return err
		}
	} else if err := o.address.Validate(); err != nil {
		return fmt.Errorf("%w; or give the proxy directly with --proxy-url http://HOST:PORT", err)
	}
	if _, _, err := net.SplitHostPort(o.Listen); err != nil {
		return fmt.Errorf("--listen %q: want HOST:PORT (e.g. 127.0.0.1:0): %w", o.Listen, err)
	}
	return nil
}

// Run produces the kubeconfig, or serves the listener (and runs the command).
func (o *ConnectOptions) Run(ctx context.Context) error {
	if ctx == nil {
		ctx = context.Background()
	}
	proxyURL, err := o.resolveProxyURL(ctx)
	if err != nil {
		return err
	}
	o.proxyURL = proxyURL

	if o.PrintKubeconfig || o.WriteKubeconfig != "" || o.Merge {
		if proxyURL, err = o.kubeconfigProxyURL(ctx, proxyURL); err != nil {
			return err
		}
	}
	switch {
	case o.PrintKubeconfig:
		b, err := connect.Serialize(o.target.WithProxyURL(proxyURL))
		if err != nil {
			return err
		}
		_, err = o.Out.Write(b)
		return err
	case o.WriteKubeconfig != "":
		if err := clientcmd.WriteToFile(*o.target.WithProxyURL(proxyURL), o.WriteKubeconfig); err != nil {
			return fmt.Errorf("writing %s: %w", o.WriteKubeconfig, err)
		}
		fmt.Fprintf(o.ErrOut, "wrote %s: context %q reaches %s through %s\n", o.WriteKubeconfig, o.target.ContextName, o.target.Server(), o.proxyURL)
		return nil
	case o.Merge:
		return o.merge(proxyURL)
	}
	return o.serve(ctx)
}

func (o *ConnectOptions) resolveProxyURL(ctx context.Context) (string, error) {
	if o.ProxyURL != "" {
		hp, _ := tunnel.ProxyHostPort(o.ProxyURL)
		return "http://" + hp, nil
	}
	res, err := o.address.Resolve(ctx, o.configFlags)
	if err != nil {
		return "", err
	}
	for _, w := range res.Warnings {
		fmt.Fprintln(o.ErrOut, "Warning:", w)
	}
	fmt.Fprintln(o.ErrOut, DescribeIPChoice(res))
	fmt.Fprintf(o.ErrOut, "proxy of %q as seen from %q: %s\n", o.target.ContextName, res.Consumer, res.ProxyURL)
	return res.ProxyURL, nil
}

func (o *ConnectOptions) merge(proxyURL string) error {
	access := o.configFlags.ToRawKubeConfigLoader().ConfigAccess()
	start, err := access.GetStartingConfig()
	if err != nil {
		return err
	}
	name := o.target.ContextName + "-via-apiproxy"
	withProxy := o.target.WithProxyURL(proxyURL)
	connect.MergeInto(start, withProxy, o.target.ContextName, name)
	if err := clientcmd.ModifyConfig(access, *start, false); err != nil {
		return fmt.Errorf("updating kubeconfig: %w", err)
	}
	fmt.Fprintf(o.ErrOut, "added context %q (through %s) to %s\n", name, o.proxyURL, access.GetDefaultFilename())
	return nil
}

func (o *ConnectOptions) dialer() func(context.Context) (net.Conn, error) {
	d := &connect.AuthDialer{
		Dialer: tunnel.Dialer{Proxy: o.proxyURL, Timeout: o.DialTimeout, Forward: &net.Dialer{KeepAlive: 30 * time.Second}},
		Creds:  o.creds,
	}
	authority, _ := o.target.Authority()
	return func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, "tcp", authority) }
}

// kubeconfigProxyURL is the proxy-url a written kubeconfig gets: with the token as the password
// when one is in use (--proxy-token, or the proxy answers 407 to a probe CONNECT), else proxyURL.
// The probe needs this machine to reach the proxy; when it cannot, the URL stays without a token.
func (o *ConnectOptions) kubeconfigProxyURL(ctx context.Context, proxyURL string) (string, error) {
	if o.creds.Authorization != "" {
		fmt.Fprintf(o.ErrOut, "Note: the kubeconfig's proxy-url carries the --proxy-url's credentials: keep it private\n")
		return o.ProxyURL, nil
	}
	token := o.ProxyToken
	if token == "" {
		probeTimeout := min(o.DialTimeout, 5*time.Second)
		pctx, cancel := context.WithTimeout(ctx, probeTimeout)
		defer cancel()
		authority, err := o.target.Authority()
		if err != nil {
			return "", err
		}
		d := &tunnel.Dialer{Proxy: proxyURL, Timeout: probeTimeout}
		conn, err := d.DialContext(pctx, "tcp", authority)
		var ce *tunnel.ConnectError
		switch {
		case err == nil:
			_ = conn.Close()
			return proxyURL, nil
		case errors.As(err, &ce) && ce.StatusCode == http.StatusProxyAuthRequired:
			if token, err = o.creds.Token(ctx); err != nil || token == "" {
				return "", &connect.NoTokenError{Context: o.target.ContextName, Proxy: proxyURL, Err: err}
			}
		default:
			fmt.Fprintf(o.ErrOut, "Note: could not reach proxy %s from here to see whether it requires a token (%v); if it does, re-run with --proxy-token\n", proxyURL, err)
			return proxyURL, nil
		}
	}
	fmt.Fprintf(o.ErrOut, "Note: the kubeconfig's proxy-url carries a token for the proxy: keep it private\n")
	return connect.ProxyURLWithToken(proxyURL, token)
}

func (o *ConnectOptions) serve(ctx context.Context) error {
	authority, err := o.target.Authority()
	if err != nil {
		return err
	}
	dial := o.dialer()
	describe := func(err error) error { return connect.DescribeDialError(err, o.proxyURL) }
	if o.Via != "" {
		relay, err := o.relay()
		if err != nil {
			return err
		}
		defer relay.Close()
		remote, _ := tunnel.ProxyHostPort(o.proxyURL)
		vd := &connect.ViaDialer{Relay: relay, RemoteProxy: remote, Timeout: o.DialTimeout, Creds: o.creds, RelayCreds: relayCredentials(relay, o.ViaProxyToken)}
		dial = func(ctx context.Context) (net.Conn, error) { return vd.DialContext(ctx, "tcp", authority) }
		// Relay errors already name their hop.
		describe = func(err error) error { return err }
	}
	// Fail fast, naming the hop, before anyone relies on the listener.
	cctx, cancel := context.WithTimeout(ctx, o.DialTimeout+5*time.Second)
	first, err := dial(cctx)
	if err == nil {
		err = connect.Check(cctx, func(context.Context) (net.Conn, error) { return first, nil }, o.target, o.TLSServerName, o.proxyURL)
	} else {
		err = describe(err)
	}
	cancel()
	if err != nil {
		return err
	}

	l, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", o.Listen, err)
	}
	dir, err := os.MkdirTemp("", "kubectl-apiproxy-")
	if err != nil {
		l.Close()
		return err
	}
	defer os.RemoveAll(dir)
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := clientcmd.WriteToFile(*o.target.WithListener(l.Addr().String(), o.TLSServerName), kubeconfig); err != nil {
		l.Close()
		return err
	}

	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	fwd := &connect.Forwarder{
		Listener: l, Dial: dial, DialTimeout: o.DialTimeout,
		OnError: func(err error) { fmt.Fprintln(o.ErrOut, "tunnel:", describe(err)) },
	}
	served := make(chan error, 1)
	go func() { served <- fwd.Serve(ctx) }()

	if o.Via != "" {
		fmt.Fprintf(o.ErrOut, "Tunnelling %s to %s (context %q) through proxy %s, relayed by context %q's proxy (namespace %s)\n", l.Addr(), o.target.Server(), o.target.ContextName, o.proxyURL, o.Via, o.ViaNamespace)
	} else {
		fmt.Fprintf(o.ErrOut, "Tunnelling %s to %s (context %q) through proxy %s\n", l.Addr(), o.target.Server(), o.target.ContextName, o.proxyURL)
	}
	if len(o.Command) == 0 {
		fmt.Fprintf(o.ErrOut, "Use it with the kubeconfig below; Ctrl-C to stop.\n")
		fmt.Fprintf(o.Out, "export KUBECONFIG=%s\n", kubeconfig)
		select {
		case <-ctx.Done():
			return nil
		case err := <-served:
			if err != nil {
				return listenerError(err)
			}
			return nil
		}
	}
	return o.runCommand(ctx, kubeconfig, stop, served)
}

// relay builds the port-forward relay into the --via context's proxy pods (same kubeconfig files as
// the current context).
func (o *ConnectOptions) relay() (*connect.Relay, error) {
	return newRelay(o.configFlags, o.Via, o.ViaNamespace, o.address.ProxyPort, o.ErrOut)
}

// relayCredentials are what the relay gets when it asks for a token: --via-proxy-token, else the
// --via context's user's token (the relay's TokenReview runs in that cluster).
func relayCredentials(relay *connect.Relay, override string) *connect.ProxyCredentials {
	return &connect.ProxyCredentials{Override: override, Config: relay.Config, Context: relay.Context, Flag: "--via-proxy-token"}
}

// newRelay is the relay of connect --via and check --via: port-forward through the via context's
// API server to its apiproxy proxy pods in namespace.
func newRelay(configFlags *genericclioptions.ConfigFlags, via, namespace string, port int, log io.Writer) (*connect.Relay, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if configFlags.KubeConfig != nil && *configFlags.KubeConfig != "" {
		rules.ExplicitPath = *configFlags.KubeConfig
	}
	raw, err := rules.Load()
	if err != nil {
		return nil, fmt.Errorf("loading the kubeconfig for --via: %w", err)
	}
	if err := checkContext(raw, via, "--via", "the kubeconfig"); err != nil {
		return nil, err
	}
	cfg, err := clientcmd.NewNonInteractiveClientConfig(*raw, via, &clientcmd.ConfigOverrides{}, rules).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("client configuration of the --via context %q: %w", via, err)
	}
	return &connect.Relay{
		Config: cfg, Context: via, Namespace: namespace, Port: port,
		Selector: install.LabelPartOf + "=" + install.PartOf + "," + install.LabelComponent + "=proxy",
		Log:      func(format string, args ...any) { fmt.Fprintf(log, format+"\n", args...) },
	}, nil
}

func (o *ConnectOptions) runCommand(ctx context.Context, kubeconfig string, stop func(), served <-chan error) error {
	cmd := exec.Command(o.Command[0], o.Command[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = o.In, o.Out, o.ErrOut
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("running %q: %w", o.Command[0], err)
	}
	// The command shares our terminal: Ctrl-C reaches it directly; we only wait for it.
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	var err error
	select {
	case err = <-waited:
		stop()
		<-served
	case serr := <-served:
		if serr != nil {
			// The command can no longer reach the API server: say why, stop it, fail.
			fmt.Fprintf(o.ErrOut, "connect: the local listener failed, stopping %q: %v\n", o.Command[0], serr)
			if cmd.Process.Signal(syscall.SIGTERM) != nil {
				_ = cmd.Process.Kill()
			}
			<-waited
			stop()
			return listenerError(serr)
		}
		err = <-waited
		stop()
	}
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		return &cmdutil.ExitError{Code: exitErr.ExitCode()}
	}
	return err
}

// listenerError is the failure of the local listener, which ends connect with a non-zero status.
func listenerError(err error) error {
	return fmt.Errorf("the local tunnelling listener failed (no new tunnels can open; raise the open-file limit with ulimit -n if it says \"too many open files\"): %w", err)
}
