package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/apiproxy/apiproxy/pkg/health"
	"github.com/apiproxy/apiproxy/pkg/logbatch"
	"github.com/apiproxy/apiproxy/pkg/proxy"
	"github.com/apiproxy/apiproxy/pkg/proxy/tokenreview"
	"github.com/apiproxy/apiproxy/pkg/tunnel"
)

func init() { registerRole(newProxyCommand) }

// proxyOptions are the flags of `agent proxy` (names are a contract with the deploy manifests).
type proxyOptions struct {
	Listen        string
	ListenTCP     []string
	Upstream      string
	UpstreamProxy string
	// UpstreamProxyCredentialsFile holds the upstream proxy's credentials (a mounted Secret's key).
	UpstreamProxyCredentialsFile string
	AllowTargets                 []string
	MetricsAddr                  string
	MaxTunnels                   int
	MaxHeaderBytes               int
	HeaderTimeout                time.Duration
	DialTimeout                  time.Duration
	IdleTimeout                  time.Duration
	ShutdownGrace                time.Duration
	ShutdownDelay                time.Duration
	KeepAlive                    time.Duration
	ReadyDial                    bool
	MaxPendingHeads              int
	AllowSources                 []string
	Auth                         string
	Kubeconfig                   string
	AuditLog                     string
	HealthSocket                 string
	HandoffDir                   string

	// getenv reads KUBERNETES_SERVICE_*; tests replace it.
	getenv  func(string) string
	allow   *proxy.AllowList
	sources *proxy.SourceList
	// out receives the audit records of --audit-log -.
	out io.Writer
}

// --auth modes.
const (
	authNone        = "none"
	authTokenReview = "tokenreview"
)

func newProxyCommand(out, errOut io.Writer) *cobra.Command {
	o := &proxyOptions{getenv: os.Getenv, out: out}
	cmd := &cobra.Command{
		Use:   "proxy",
		Short: "HTTP CONNECT proxy (and transparent TCP listeners) to the local kube-apiserver",
		Long: `Accepts HTTP CONNECT tunnels and relays each to the upstream API server, whatever authority it
names, unless the authority matches an --allow-target (then it is dialed as named). Nothing else is
ever dialed: it is not an open proxy. TLS runs end to end; the proxy holds no credentials.

--listen-tcp adds transparent listeners (e.g. on a node IP) that relay raw TCP to the upstream.
--upstream-proxy makes every upstream dial itself a CONNECT through another proxy.

Who may tunnel: --allow-source limits the client addresses of every listener (others are closed
unread). --auth tokenreview requires a Kubernetes token in Proxy-Authorization on CONNECT listeners
(Bearer, or Basic with the token as password), checked with a TokenReview and a SubjectAccessReview
(create tunnels.apiproxy.io, resource name = the CONNECT authority); transparent --listen-tcp
listeners carry no credentials, so --auth does not apply to them: restrict them with --allow-source.
--audit-log writes one JSON record per tunnel.`,
		Example: `  # in a pod: upstream from KUBERNETES_SERVICE_HOST/PORT
  agent proxy --listen :8118 --metrics-addr :9090

  # consumer side of a fabric: node IP listener, tunnels through the provider's proxy
  agent proxy --listen "" --listen-tcp 10.96.0.2:443 --upstream kubernetes.default.svc:443 --upstream-proxy http://10.81.0.3:8118

  # only peers from the fabric, each with a token granted by RBAC, audited
  agent proxy --allow-source 10.81.0.0/16 --auth tokenreview --audit-log -`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.Complete(); err != nil {
				return err
			}
			if err := o.Validate(); err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			return o.Run(ctx, errOut)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Listen, "listen", ":8118", `CONNECT listener address ("" disables it)`)
	f.StringArrayVar(&o.ListenTCP, "listen-tcp", nil, "transparent TCP listener IP:PORT relaying raw bytes to the upstream (repeatable)")
	f.StringVar(&o.Upstream, "upstream", "", "API server HOST:PORT (default: KUBERNETES_SERVICE_HOST:KUBERNETES_SERVICE_PORT)")
	f.StringVar(&o.UpstreamProxy, "upstream-proxy", "", "dial every upstream through this CONNECT proxy, http://HOST:PORT; credentials in the URL are sent as Proxy-Authorization (http://token:TOKEN@HOST:PORT as Bearer, http://USER:PASSWORD@HOST:PORT as Basic), but they show in the process list: prefer --upstream-proxy-credentials-file")
	f.StringVar(&o.UpstreamProxyCredentialsFile, "upstream-proxy-credentials-file", "", "file with the --upstream-proxy's credentials, read again when it changes (a mounted Secret): a token (sent as Bearer) or USER:PASSWORD (Basic; the user token means Bearer)")
	f.StringArrayVar(&o.AllowTargets, "allow-target", nil, "authority dialed as named when a CONNECT asks for it: HOST:PORT or CIDR:PORT (repeatable)")
	f.StringVar(&o.MetricsAddr, "metrics-addr", ":9090", `address of /healthz, /readyz and /metrics ("" disables it)`)
	f.IntVar(&o.MaxTunnels, "max-tunnels", 10000, "concurrent tunnels; more get 503 (0: unlimited)")
	f.IntVar(&o.MaxHeaderBytes, "max-header-bytes", 8192, "largest CONNECT request head accepted")
	f.DurationVar(&o.HeaderTimeout, "header-timeout", 10*time.Second, "time a client has to send its complete CONNECT request head")
	f.DurationVar(&o.DialTimeout, "dial-timeout", 10*time.Second, "time to connect to the upstream before answering 504")
	f.DurationVar(&o.IdleTimeout, "idle-timeout", 0, "close tunnels idle in both directions for that long (0: never; watches can be silent for long)")
	f.DurationVar(&o.ShutdownGrace, "shutdown-grace", 30*time.Second, "on SIGTERM/SIGINT, how long open tunnels may still run")
	f.DurationVar(&o.ShutdownDelay, "shutdown-delay", 0, "on SIGTERM/SIGINT, keep accepting this long with /readyz failing before the listeners close, so kube-proxy and load balancers stop sending new connections first")
	f.DurationVar(&o.KeepAlive, "tcp-keepalive", 30*time.Second, "TCP keepalive period on both sides of each tunnel (<0 disables)")
	f.BoolVar(&o.ReadyDial, "readiness-dial-upstream", false, "/readyz also requires that a dial to the upstream succeeded within the last 30s (the tunnels' own dials count; when they are idle, one dial every 10s): one slow or failed dial does not make it unready")
	f.StringVar(&o.HealthSocket, "health-socket", "", "also serve /healthz, /readyz and /metrics on this Unix socket, for `agent probe` (exec probes of hostNetwork pods, whose TCP ports are shared)")
	f.StringVar(&o.HandoffDir, "handoff-dir", "", "share the listening sockets (listeners and --metrics-addr) with the agents that use the same directory: a starting agent takes over a running one's sockets instead of binding, so restarts, rolling updates and a killed process leave no gap and drop no connection waiting to be accepted")
	f.IntVar(&o.MaxPendingHeads, "max-pending-heads", 4096, "CONNECT connections waiting for their request head; at the cap the oldest gets 408")
	f.StringArrayVar(&o.AllowSources, "allow-source", nil, "only accept clients from this CIDR, on every listener (repeatable; default: everyone)")
	f.StringVar(&o.Auth, "auth", authNone, "CONNECT authentication: none, or tokenreview (Proxy-Authorization token checked by TokenReview + SubjectAccessReview)")
	f.StringVar(&o.Kubeconfig, "kubeconfig", "", "kubeconfig of the API server that reviews tokens for --auth tokenreview (default: in-cluster)")
	f.StringVar(&o.AuditLog, "audit-log", "", `write one JSON record per tunnel to this file, or "-" for stdout`)
	return cmd
}

// Complete fills the upstream from the in-cluster environment when --upstream is not given.
func (o *proxyOptions) Complete() error {
	if o.Upstream != "" {
		return nil
	}
	host, port := o.getenv("KUBERNETES_SERVICE_HOST"), o.getenv("KUBERNETES_SERVICE_PORT")
	if host == "" {
		return errors.New("no upstream: pass --upstream HOST:PORT, or run in a pod where KUBERNETES_SERVICE_HOST (and _PORT) are set")
	}
	if port == "" {
		port = "443"
	}
	o.Upstream = net.JoinHostPort(strings.Trim(host, "[]"), port)
	return nil
}

// Validate checks every flag and says which one is wrong.
func (o *proxyOptions) Validate() error {
	if _, _, err := proxy.ParseAuthority(o.Upstream); err != nil {
		return fmt.Errorf("invalid --upstream %q: want HOST:PORT (IPv6 in brackets): %v", o.Upstream, err)
	}
	if o.Listen == "" && len(o.ListenTCP) == 0 {
		return errors.New("nothing to listen on: --listen is empty and no --listen-tcp given")
	}
	for _, a := range append([]string{o.Listen}, o.ListenTCP...) {
		if a == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(a); err != nil {
			return fmt.Errorf("invalid listen address %q: want [IP]:PORT: %v", a, err)
		}
	}
	if o.UpstreamProxy != "" {
		if _, err := tunnel.ProxyHostPort(o.UpstreamProxy); err != nil {
			return fmt.Errorf("invalid --upstream-proxy: %v", err)
		}
		if _, err := tunnel.ProxyAuthorization(o.UpstreamProxy); err != nil {
			return fmt.Errorf("invalid --upstream-proxy %s: %v", tunnel.Redact(o.UpstreamProxy), err)
		}
	}
	if o.UpstreamProxyCredentialsFile != "" {
		if o.UpstreamProxy == "" {
			return errors.New("--upstream-proxy-credentials-file needs --upstream-proxy")
		}
		if _, hasCreds := tunnel.StripCredentials(o.UpstreamProxy); hasCreds {
			return errors.New("--upstream-proxy carries credentials and --upstream-proxy-credentials-file is given: keep only the file")
		}
		// Read now, so a wrong mount fails the start and not every dial.
		if _, err := (&tunnel.CredentialsFile{Path: o.UpstreamProxyCredentialsFile}).Authorization(); err != nil {
			return fmt.Errorf("invalid --upstream-proxy-credentials-file: %v", err)
		}
	}
	al, err := proxy.ParseAllowList(o.AllowTargets)
	if err != nil {
		return err
	}
	o.allow = al
	if len(o.AllowSources) > 0 {
		if o.sources, err = proxy.ParseSourceList(o.AllowSources); err != nil {
			return err
		}
	}
	switch o.Auth {
	case authNone, "":
		if o.Kubeconfig != "" {
			return errors.New("--kubeconfig is only used by --auth tokenreview")
		}
	case authTokenReview:
		if klog.V(8).Enabled() {
			// client-go logs request bodies from -v 8 on: the TokenReviews' bodies are tokens.
			return errors.New("--auth tokenreview refuses -v 8 and above: client-go would log the tokens under review")
		}
		if o.Listen == "" {
			return errors.New("--auth tokenreview needs a CONNECT listener (--listen): transparent --listen-tcp listeners carry no credentials; use --allow-source for them")
		}
	default:
		return fmt.Errorf("invalid --auth %q: want none or tokenreview", o.Auth)
	}
	switch {
	case o.MaxPendingHeads < 1:
		return fmt.Errorf("invalid --max-pending-heads %d: must be >= 1", o.MaxPendingHeads)
	case o.MaxTunnels < 0:
		return fmt.Errorf("invalid --max-tunnels %d: must be >= 0", o.MaxTunnels)
	case o.MaxHeaderBytes < 256:
		return fmt.Errorf("invalid --max-header-bytes %d: must be >= 256", o.MaxHeaderBytes)
	case o.HeaderTimeout <= 0:
		return fmt.Errorf("invalid --header-timeout %s: must be > 0", o.HeaderTimeout)
	case o.DialTimeout <= 0:
		return fmt.Errorf("invalid --dial-timeout %s: must be > 0", o.DialTimeout)
	case o.IdleTimeout < 0:
		return fmt.Errorf("invalid --idle-timeout %s: must be >= 0", o.IdleTimeout)
	case o.ShutdownGrace < 0:
		return fmt.Errorf("invalid --shutdown-grace %s: must be >= 0", o.ShutdownGrace)
	case o.ShutdownDelay < 0:
		return fmt.Errorf("invalid --shutdown-delay %s: must be >= 0", o.ShutdownDelay)
	}
	return nil
}

// Run serves until ctx ends (a signal), then drains for --shutdown-grace.
func (o *proxyOptions) Run(ctx context.Context, errOut io.Writer) error {
	logger := klog.Background().WithName("proxy")
	// The line per tunnel is the access log: klog's format, written in batches (see pkg/logbatch).
	accessLog := logbatch.New(errOut, 100*time.Millisecond)
	defer accessLog.Flush()
	hs := health.New()
	cfg := proxy.Config{
		Upstream: o.Upstream, Allow: o.allow, UpstreamProxy: o.UpstreamProxy,
		UpstreamProxyAuthorization: o.upstreamProxyAuthorization(),
		DialTimeout:                o.DialTimeout, HeaderTimeout: o.HeaderTimeout, MaxHeaderBytes: o.MaxHeaderBytes,
		IdleTimeout: o.IdleTimeout, MaxTunnels: o.MaxTunnels, KeepAlive: o.KeepAlive,
		MaxPendingHeads: o.MaxPendingHeads, AllowSources: o.sources,
		Logger: logger, AccessLog: accessLog, Registerer: hs.Registry,
	}
	if o.Auth == authTokenReview {
		a, err := o.tokenReviewer()
		if err != nil {
			return err
		}
		cfg.Auth = a
	}
	switch o.AuditLog {
	case "":
	case "-":
		cfg.Audit = proxy.NewAuditLog(o.out)
	default:
		f, err := os.OpenFile(o.AuditLog, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return fmt.Errorf("--audit-log: %w", err)
		}
		defer f.Close()
		cfg.Audit = proxy.NewAuditLog(f)
	}
	srv, err := proxy.New(cfg)
	if err != nil {
		return err
	}
	ls, err := o.bindListeners(ctx, logger, srv, hs)
	if err != nil {
		return err
	}
	defer ls.close()
	var stopping atomic.Bool
	hs.AddReadyCheck("listeners", func() error {
		if stopping.Load() {
			return errors.New("shutting down")
		}
		return ls.ready()
	})
	wctx, stopWatch := context.WithCancel(context.Background())
	defer stopWatch()
	if o.ReadyDial || ls.takenOver() {
		srv.WatchUpstream(wctx, 0, 0, 0)
	}
	if o.ReadyDial {
		hs.AddReadyCheck("upstream", srv.UpstreamReady)
	}
	errc := ls.serve(ctx)
	// Serve the health endpoints once the listeners are registered, so /readyz never flaps to
	// "no listener" at start.
	for i := 0; i < 500 && srv.Ready() != nil; i++ {
		time.Sleep(time.Millisecond)
	}
	hctx, hcancel := context.WithCancel(context.Background())
	defer hcancel()
	go func() { _ = hs.Serve(hctx) }()
	if hs.Addr() != "" {
		logger.Info("health and metrics", "addr", hs.Addr())
	}

	var serveErr error
	select {
	case <-ctx.Done():
		// A Service's endpoints change only after the pod is marked terminating, and kube-proxy (or
		// a load balancer) applies that a moment later: closing the listeners at once refuses the
		// connections still routed here in between (measured on a real node: about 15 refused
		// requests in a rolling restart without the delay, none with 5 s). Fail readiness and
		// keep serving for --shutdown-delay first.
		if o.ShutdownDelay > 0 {
			stopping.Store(true)
			logger.Info("shutting down: not ready, still accepting", "delay", o.ShutdownDelay)
			select {
			case <-time.After(o.ShutdownDelay):
			case serveErr = <-errc:
			}
		}
	case serveErr = <-errc:
	}
	// Give the sockets (and the turns to accept on them) to the agents that stay, then stop.
	ls.stopAccepting()
	logger.Info("draining", "grace", o.ShutdownGrace, "activeTunnels", srv.Active())
	sctx, cancel := context.WithTimeout(context.Background(), o.ShutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		logger.Info("grace period over, closed the remaining tunnels")
	} else {
		logger.Info("drained")
	}
	if err := accessLog.Flush(); err != nil {
		logger.Error(err, "writing the access log")
	}
	klog.Flush()
	if serveErr != nil && !errors.Is(serveErr, proxy.ErrServerClosed) {
		return serveErr
	}
	return nil
}

// authMode is what --auth means on one listener: transparent listeners can't authenticate.
func authMode(auth string, tcp bool) string {
	if tcp {
		return authNone
	}
	return auth
}

// tokenReviewer builds --auth tokenreview's client: --kubeconfig, else the pod's service account.
func (o *proxyOptions) tokenReviewer() (*tokenreview.Authenticator, error) {
	var rc *rest.Config
	var err error
	if o.Kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", o.Kubeconfig)
	} else {
		rc, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("--auth tokenreview needs an API server client: %w (outside a cluster, pass --kubeconfig)", err)
	}
	rc.QPS, rc.Burst = 50, 100 // one review per new tunnel (cached), not per request
	rc.UserAgent = "apiproxy-agent-proxy"
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("--auth tokenreview client: %w", err)
	}
	return tokenreview.New(cs, tokenreview.Options{}), nil
}

// upstreamProxyAuthorization reads --upstream-proxy-credentials-file for each upstream CONNECT (nil
// without it: the URL's own credentials, if any, are sent).
func (o *proxyOptions) upstreamProxyAuthorization() func() (string, error) {
	if o.UpstreamProxyCredentialsFile == "" {
		return nil
	}
	return (&tunnel.CredentialsFile{Path: o.UpstreamProxyCredentialsFile}).Authorization
}
