package agent

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	crlog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/apiproxy/apiproxy/pkg/health"
	"github.com/apiproxy/apiproxy/pkg/webhook"
)

func init() { registerRole(newWebhookCommand) }

// webhookOptions are the flags of `agent webhook`.
type webhookOptions struct {
	fqdn         string
	apiPort      int
	hostAliasIP  string
	certDir      string
	certName     string
	keyName      string
	clientCAName string
	host         string
	port         int
	metricsAddr  string
	kubeconfig   string

	aliasIP net.IP
}

func newWebhookCommand(_, _ io.Writer) *cobra.Command {
	o := &webhookOptions{}
	cmd := &cobra.Command{
		Use:   "webhook --apiserver-fqdn NAME --cert-dir DIR",
		Short: "Mutating pod webhook: point every new pod's containers at the API server's FQDN",
		Long: `Serves the mutating admission webhook at ` + webhook.Path + ` over TLS. Every container
and init container of a new pod that has no KUBERNETES_SERVICE_HOST gets it set to --apiserver-fqdn
(existing values are never changed). --apiserver-port adds KUBERNETES_SERVICE_PORT and the
KUBERNETES_PORT* family; --host-alias-ip maps the FQDN to that IP in the pod's hostAliases.
Pods annotated liqo.io/api-server-support=disabled|remote or labelled apiproxy.io/inject=disabled are
left unchanged. Ephemeral containers (kubectl debug) get the same variables.

A variable set through envFrom counts as set: ConfigMaps named in envFrom are read (get, in-cluster
credentials or --kubeconfig) and a container whose map sets KUBERNETES_SERVICE_HOST is left alone;
Secrets are never read, so a container with a secretRef that could set it is left alone too, as is
one whose ConfigMap cannot be read. The API server passes the reason on as a warning.
The serving certificate is re-read when its files change.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.validate(); err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, os.Interrupt)
			defer stop()
			return o.run(ctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.fqdn, "apiserver-fqdn", "", "fully qualified domain name of the Kube API server written to KUBERNETES_SERVICE_HOST, e.g. example.com. (a trailing dot is allowed; an IP address is accepted too)")
	f.IntVar(&o.apiPort, "apiserver-port", 0, "[optional] API server port: also inject KUBERNETES_SERVICE_PORT and the KUBERNETES_PORT* variables (0 = do not)")
	f.StringVar(&o.hostAliasIP, "host-alias-ip", "", "[optional] add a hostAliases entry mapping the FQDN (and kubernetes.default[.svc] when the FQDN is one of those) to this IP")
	f.StringVar(&o.certDir, "cert-dir", "", "directory that contains the server key and certificate (and the client CA)")
	f.StringVar(&o.certName, "cert-name", "tls.crt", "[optional] server certificate file name in --cert-dir")
	f.StringVar(&o.keyName, "key-name", "tls.key", "[optional] server key file name in --cert-dir")
	f.StringVar(&o.clientCAName, "client-ca-name", "", `[optional] CA certificate file name in --cert-dir used to verify clients' certificates; "" means client certificates are not required`)
	f.StringVar(&o.host, "host", "", `[optional] address to listen on; "" means all addresses`)
	f.IntVar(&o.port, "port", 9443, "[optional] port to serve the webhook on")
	f.StringVar(&o.metricsAddr, "metrics-addr", ":8080", `plain-HTTP address of /healthz, /readyz and /metrics ("" disables it)`)
	f.StringVar(&o.kubeconfig, "kubeconfig", "", `[optional] kubeconfig for reading the ConfigMaps named in envFrom; "" means the in-cluster service account`)
	return cmd
}

func (o *webhookOptions) validate() error {
	if o.fqdn == "" {
		return fmt.Errorf("--apiserver-fqdn is required: the API server name pods should use, e.g. --apiserver-fqdn=api.example.com.")
	}
	isIP := net.ParseIP(o.fqdn) != nil
	if !isIP {
		if errs := validation.IsDNS1123Subdomain(strings.TrimSuffix(o.fqdn, ".")); len(errs) > 0 {
			return fmt.Errorf("--apiserver-fqdn %q is not a DNS name (lowercase, e.g. api.example.com.) nor an IP address: %s", o.fqdn, strings.Join(errs, "; "))
		}
	}
	if o.apiPort < 0 || o.apiPort > 65535 {
		return fmt.Errorf("--apiserver-port %d is out of range: use 1-65535, or 0 to not inject the port variables", o.apiPort)
	}
	if o.hostAliasIP != "" {
		o.aliasIP = net.ParseIP(o.hostAliasIP)
		if o.aliasIP == nil {
			return fmt.Errorf("--host-alias-ip %q is not an IP address", o.hostAliasIP)
		}
		if isIP {
			return fmt.Errorf("--host-alias-ip needs --apiserver-fqdn to be a name, not the IP %s: there is nothing to resolve", o.fqdn)
		}
	}
	if o.port < 1 || o.port > 65535 {
		return fmt.Errorf("--port %d is out of range 1-65535", o.port)
	}
	if o.certDir == "" {
		return fmt.Errorf("--cert-dir is required: the directory holding %s and %s", o.certName, o.keyName)
	}
	files := []string{o.certName, o.keyName}
	if o.clientCAName != "" {
		files = append(files, o.clientCAName)
	}
	for _, name := range files {
		if _, err := os.Stat(filepath.Join(o.certDir, name)); err != nil {
			return fmt.Errorf("--cert-dir %s: %w (see --cert-name, --key-name, --client-ca-name)", o.certDir, err)
		}
	}
	return nil
}

func (o *webhookOptions) run(ctx context.Context) error {
	// controller-runtime's server and certwatcher log through its logger: send it to klog.
	crlog.SetLogger(klog.NewKlogr())
	hs := health.New()
	cms, err := o.configMapReader()
	if err != nil {
		return err
	}
	h, err := webhook.NewHandler(webhook.Config{FQDN: o.fqdn, Port: o.apiPort, HostAliasIP: o.aliasIP, ConfigMaps: cms}, hs.Registry)
	if err != nil {
		return err
	}
	srv := webhook.NewServer(webhook.ServerOptions{
		Host: o.host, Port: o.port,
		CertDir: o.certDir, CertName: o.certName, KeyName: o.keyName, ClientCAName: o.clientCAName,
	}, h)
	started := srv.StartedChecker()
	hs.AddReadyCheck("webhook-server", func() error { return started(&http.Request{}) })
	if err := hs.Listen(o.metricsAddr); err != nil {
		return fmt.Errorf("--metrics-addr %s: %w", o.metricsAddr, err)
	}
	klog.InfoS("Serving the pod webhook", "path", webhook.Path, "addr", net.JoinHostPort(o.host, fmt.Sprint(o.port)),
		"fqdn", o.fqdn, "apiserverPort", o.apiPort, "hostAliasIP", o.hostAliasIP, "clientCA", o.clientCAName != "", "metrics", hs.Addr())
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return srv.Start(gctx) })
	g.Go(func() error { return hs.Serve(gctx) })
	err = g.Wait()
	klog.InfoS("Pod webhook stopped")
	return err
}

// configMapReader is the webhook's read access to ConfigMaps. Outside a cluster and without
// --kubeconfig there is none: containers with a configMapRef in envFrom are then left alone.
func (o *webhookOptions) configMapReader() (webhook.ConfigMapReader, error) {
	var cfg *rest.Config
	var err error
	if o.kubeconfig != "" {
		if cfg, err = clientcmd.BuildConfigFromFlags("", o.kubeconfig); err != nil {
			return nil, fmt.Errorf("--kubeconfig %s: %w", o.kubeconfig, err)
		}
	} else if cfg, err = rest.InClusterConfig(); err != nil {
		klog.InfoS("No API access: containers with a ConfigMap in envFrom will be left unchanged", "reason", err)
		return nil, nil
	}
	// Pod bursts must not queue behind client-go's default 5 QPS: each read has ~1 s.
	cfg.QPS, cfg.Burst = 50, 100
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return webhook.NewConfigMapReader(cs, configMapReadTimeout), nil
}

// configMapReadTimeout bounds one ConfigMap read: the API server gives the webhook 2 s in all.
const configMapReadTimeout = time.Second
