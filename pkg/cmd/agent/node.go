package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/apiproxy/apiproxy/pkg/handoff"
	"github.com/apiproxy/apiproxy/pkg/health"
	"github.com/apiproxy/apiproxy/pkg/node"
	"github.com/apiproxy/apiproxy/pkg/node/netif"
	"github.com/apiproxy/apiproxy/pkg/node/rules"
)

func init() { registerRole(newNodeCommand) }

// NodeOptions are the flags of `agent node`, named as in Gardener's apiserver-proxy sidecar so it
// can replace it in place.
type NodeOptions struct {
	IPAddress     string
	Interface     string
	Port          int
	SetupIPTables bool
	Cleanup       bool
	Daemon        bool
	SyncInterval  time.Duration
	MetricsAddr   string
	// CleanupWhenOwnerDeleted is NAMESPACE/NAME of the DaemonSet running this agent: on SIGTERM it
	// cleans up only when that DaemonSet is gone or being deleted (uninstall), and keeps everything
	// for the next pod otherwise (rolling update, restart, API server unreachable).
	CleanupWhenOwnerDeleted string
	// Kubeconfig is for the owner check; empty means the pod's service account (in-cluster).
	Kubeconfig string
	// HealthSocket also serves the health endpoints on a Unix socket (exec probes); HandoffDir
	// shares the --metrics-addr listener with the other agents of the node (pkg/handoff).
	HealthSocket, HandoffDir string

	ip     net.IP
	owner  *node.Owner
	errOut io.Writer
}

// ownerCheckTimeout bounds the question asked on SIGTERM, well inside the DaemonSet's
// terminationGracePeriodSeconds (40): an API server that does not answer in time counts as
// unreachable, and the address stays.
const ownerCheckTimeout = 5 * time.Second

func newNodeCommand(_, errOut io.Writer) *cobra.Command {
	o := &NodeOptions{Interface: "lo", Port: 443, Daemon: true, SyncInterval: time.Minute, errOut: errOut}
	cmd := &cobra.Command{
		Use:   "node --ip-address IP",
		Short: "Keep the node-local API server IP (and optionally its iptables rules) on this node",
		Long: `Puts --ip-address as /32 (IPv4) or /128 (IPv6) on --interface, creating it as a dummy device when
it does not exist, and removes the same IP from every other interface. With --setup-iptables it also
keeps five rules (raw NOTRACK both ways, filter ACCEPT) for --port. As a daemon it re-syncs every
--sync-interval and at once when the kernel reports an address or link change.

On SIGTERM it leaves everything in place (the next agent takes over without a gap), unless --cleanup
(always remove) or --cleanup-when-owner-deleted NAMESPACE/NAME (remove only when that DaemonSet is
gone or being deleted, i.e. uninstalled; keep when it exists or the API server cannot answer).`,
		Example: `  agent node --ip-address 169.254.20.11 --interface apiproxy0 --setup-iptables --cleanup
  agent node --ip-address 169.254.20.11 --daemon=false    # init container: one sync, then exit
  agent node --ip-address 169.254.20.11 --interface apiproxy0 --cleanup-when-owner-deleted apiproxy-system/apiproxy-node`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.Validate(); err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, os.Interrupt)
			defer stop()
			return o.Run(ctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.IPAddress, "ip-address", "", "IP address on which the proxy listens (required), kept as /32 or /128")
	f.StringVar(&o.Interface, "interface", o.Interface, "[optional] interface to put the address on; created as a dummy device if missing")
	f.IntVar(&o.Port, "port", o.Port, "[optional] port on which the proxy listens (used by the iptables rules)")
	f.BoolVar(&o.SetupIPTables, "setup-iptables", false, "[optional] also keep the iptables rules (ip6tables for IPv6)")
	f.BoolVar(&o.Cleanup, "cleanup", false, "[optional] on SIGTERM/SIGINT remove the rules, the address, and the interface if this agent created it")
	f.BoolVar(&o.Daemon, "daemon", o.Daemon, "[optional] keep running and repairing; false: sync once and exit")
	f.DurationVar(&o.SyncInterval, "sync-interval", o.SyncInterval, "[optional] interval of the periodic re-sync (kernel events trigger one at once anyway)")
	f.StringVar(&o.MetricsAddr, "metrics-addr", "", `address for /healthz, /readyz and /metrics, e.g. ":9101" ("" disables)`)
	f.StringVar(&o.CleanupWhenOwnerDeleted, "cleanup-when-owner-deleted", "", "[optional] NAMESPACE/NAME of the DaemonSet running this agent: on SIGTERM/SIGINT clean up (as --cleanup) only if it is gone or being deleted (uninstall); keep everything while it exists (rolling update, restart) or when the API server cannot say. Needs get on that DaemonSet")
	f.StringVar(&o.Kubeconfig, "kubeconfig", "", "[optional] kubeconfig for --cleanup-when-owner-deleted (default: the pod's service account)")
	f.StringVar(&o.HealthSocket, "health-socket", "", "[optional] also serve /healthz, /readyz and /metrics on this Unix socket, for `agent probe` (exec probes: the TCP port of a hostNetwork pod is shared with the next pod during a rolling update)")
	f.StringVar(&o.HandoffDir, "handoff-dir", "", "[optional] share the --metrics-addr listener with the agents using the same directory, so the next pod of a rolling update takes it over instead of failing to bind")
	return cmd
}

// Validate checks the flags before anything on the node is touched.
func (o *NodeOptions) Validate() error {
	if o.IPAddress == "" {
		return errors.New("--ip-address is required, e.g. --ip-address 169.254.20.11")
	}
	if o.ip = net.ParseIP(o.IPAddress); o.ip == nil {
		return fmt.Errorf("--ip-address %q is not an IP address; give a single address such as 169.254.20.11 or fd00::2, without a prefix length", o.IPAddress)
	}
	if ip4 := o.ip.To4(); ip4 != nil {
		o.ip = ip4
	}
	if o.ip.IsUnspecified() || o.ip.IsMulticast() {
		return fmt.Errorf("--ip-address %s cannot be put on an interface; give a unicast address", o.IPAddress)
	}
	if err := netif.ValidateLinkName(o.Interface); err != nil {
		return fmt.Errorf("--interface: %w", err)
	}
	if o.Port < 1 || o.Port > 65535 {
		return fmt.Errorf("--port %d is out of range; give a TCP port between 1 and 65535", o.Port)
	}
	if o.SyncInterval <= 0 {
		return fmt.Errorf("--sync-interval %s must be positive, e.g. 1m", o.SyncInterval)
	}
	if o.Cleanup && !o.Daemon {
		return errors.New("--cleanup removes everything when the daemon stops; with --daemon=false it would undo the sync at once: drop one of the two flags")
	}
	if o.CleanupWhenOwnerDeleted != "" {
		if o.Cleanup {
			return errors.New("--cleanup always removes everything on SIGTERM, --cleanup-when-owner-deleted only when the DaemonSet is deleted: drop one of the two flags")
		}
		if !o.Daemon {
			return errors.New("--cleanup-when-owner-deleted applies when the daemon stops; with --daemon=false there is nothing to clean later: drop it")
		}
		ns, name, err := node.ParseOwner(o.CleanupWhenOwnerDeleted)
		if err != nil {
			return fmt.Errorf("--cleanup-when-owner-deleted: %w", err)
		}
		o.owner = &node.Owner{Namespace: ns, Name: name}
	} else if o.Kubeconfig != "" {
		return errors.New("--kubeconfig is only used by --cleanup-when-owner-deleted: add it or drop --kubeconfig")
	}
	return nil
}

// ownerClient builds the client of the SIGTERM question now, so a missing token fails at start,
// not at uninstall. It contacts nothing: the node role must work without the API server.
func (o *NodeOptions) ownerClient() error {
	var cfg *rest.Config
	var err error
	if o.Kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", o.Kubeconfig)
	} else {
		cfg, err = rest.InClusterConfig()
	}
	if err != nil {
		return fmt.Errorf("--cleanup-when-owner-deleted needs API access (get on %s): %w; mount the service account token or pass --kubeconfig", o.owner, err)
	}
	cfg.Timeout = ownerCheckTimeout
	cfg.UserAgent = "apiproxy-agent-node"
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	o.owner.Client = cs
	return nil
}

// cleanupOnExit decides, once the daemon stops, whether to take everything away.
func (o *NodeOptions) cleanupOnExit(s *node.Syncer) error {
	switch {
	case o.Cleanup:
	case o.owner != nil:
		ctx, cancel := context.WithTimeout(context.Background(), ownerCheckTimeout)
		deleted, err := o.owner.Deleted(ctx)
		cancel()
		if err != nil {
			klog.InfoS("Keeping the address: cannot tell whether the owner was deleted (safe default)", "owner", o.owner.String(), "err", err)
			return nil
		}
		if !deleted {
			klog.InfoS("Keeping the address for the next pod: the owner still exists (rolling update or restart)", "owner", o.owner.String())
			return nil
		}
		klog.InfoS("The owner is deleted (uninstall): cleaning up", "owner", o.owner.String())
	default:
		return nil
	}
	if err := s.Cleanup(); err != nil {
		return fmt.Errorf("cleanup: %w", err)
	}
	klog.InfoS("Cleaned up", "address", o.ip.String(), "interface", o.Interface)
	if o.HandoffDir != "" {
		// Nobody hands sockets over here any more: the forwarders of a deleted DaemonSet are
		// stopping too, and removing their socket files only spares them the unlink.
		if err := os.RemoveAll(o.HandoffDir); err != nil {
			return fmt.Errorf("cleanup: %w", err)
		}
		klog.InfoS("Removed the handoff directory", "dir", o.HandoffDir)
	}
	return nil
}

// Run syncs once (--daemon=false) or keeps syncing until ctx is done.
func (o *NodeOptions) Run(ctx context.Context) error {
	link, err := netif.New()
	if err != nil {
		return err
	}
	defer link.Close()
	cfg := node.Config{IP: o.ip, Interface: o.Interface}
	if o.SetupIPTables {
		m, err := rules.New(o.ip, o.Port)
		if err != nil {
			return err
		}
		klog.InfoS("Keeping iptables rules", "backend", m.Backend(), "rules", len(m.Rules()))
		cfg.Rules = m
	}
	hs := health.New()
	s, err := node.New(cfg, link, hs.Registry)
	if err != nil {
		return err
	}
	if o.owner != nil {
		if err := o.ownerClient(); err != nil {
			return err
		}
	}
	if !o.Daemon {
		if err := s.Sync(ctx); err != nil {
			return fmt.Errorf("sync failed: %w", err)
		}
		fmt.Fprintf(o.errOut, "%s is on %s\n", o.ip, o.Interface)
		return nil
	}

	// A first sync that fails for lack of privileges will fail forever: say so and stop, rather
	// than crash-loop silently in the logs.
	if err := s.Sync(ctx); errors.Is(err, netif.ErrPermission) {
		return err
	}
	// Ready only when the node is as it should be now: the last sync worked, the address is on the
	// interface (asked from the kernel) and, when kept, every rule is there.
	hs.AddReadyCheck("sync", s.Ready)
	hs.AddReadyCheck("address", s.AddressReady)
	if cfg.Rules != nil {
		hs.AddReadyCheck("rules", s.RulesReady)
	}
	if err := o.listenHealth(ctx, hs); err != nil {
		return err
	}
	hctx, stopHealth := context.WithCancel(context.Background())
	defer stopHealth()
	go func() {
		if err := hs.Serve(hctx); err != nil {
			klog.ErrorS(err, "Health server stopped")
		}
	}()
	klog.InfoS("Keeping address in place", "address", o.ip.String(), "interface", o.Interface,
		"iptables", o.SetupIPTables, "syncInterval", o.SyncInterval, "metrics", hs.Addr())
	_ = s.Run(ctx, o.SyncInterval)
	return o.cleanupOnExit(s)
}

// listenHealth binds --metrics-addr (taken over from the agents of --handoff-dir when one holds it)
// and --health-socket.
func (o *NodeOptions) listenHealth(ctx context.Context, hs *health.Server) error {
	if o.MetricsAddr != "" {
		if o.HandoffDir == "" {
			if err := hs.Listen(o.MetricsAddr); err != nil {
				return fmt.Errorf("--metrics-addr %s: %w", o.MetricsAddr, err)
			}
		} else {
			octx, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			d, err := handoff.Open(octx, o.HandoffDir, "node", klog.Background().WithName("handoff"))
			if err != nil {
				return fmt.Errorf("--handoff-dir: %w", err)
			}
			sock, err := d.Listen(octx, o.MetricsAddr, func(ctx context.Context, addr string) (net.Listener, error) {
				var lc net.ListenConfig
				return lc.Listen(ctx, "tcp", addr)
			})
			var l net.Listener
			if err == nil {
				l, err = sock.Listener()
			}
			if err == nil {
				err = d.Serve()
			}
			if err != nil {
				d.Close()
				return fmt.Errorf("--metrics-addr %s: %w", o.MetricsAddr, err)
			}
			hs.Use(l)
			// Offered until the agent stops; the listener itself closes with the health server.
			go func() { <-ctx.Done(); d.Close() }()
		}
	}
	if err := hs.ListenSocket(o.HealthSocket); err != nil {
		return fmt.Errorf("--health-socket %s: %w", o.HealthSocket, err)
	}
	return nil
}
