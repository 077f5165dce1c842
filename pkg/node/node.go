// Package node keeps the node-local API server IP in place: the interface (created as a dummy
// device when missing), the IP as /32 or /128 on it and nowhere else, and optionally the five
// iptables rules. It re-syncs on a timer and, unlike a plain polling loop, at once when the kernel
// reports an address or link change, so an address deleted by someone else is back within
// milliseconds.
package node

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"

	"github.com/apiproxy/apiproxy/pkg/node/netif"
)

// Rules is what the syncer needs from the iptables layer (*rules.Manager).
type Rules interface {
	Ensure() (added int, err error)
	// Missing lists the rules not in place now, without changing anything.
	Missing() ([]string, error)
	Delete() error
}

// Config is what to keep in place.
type Config struct {
	IP        net.IP
	Interface string
	// Rules, when set, are ensured on every sync and deleted on cleanup.
	Rules Rules
	// Debounce is how long to wait after a kernel event for more events before syncing, so a burst
	// of changes costs one sync. Zero means DefaultDebounce.
	Debounce time.Duration
}

// DefaultDebounce is short enough to repair in well under a second, long enough to coalesce
// the handful of events one `ip addr del` or `ip link del` produces.
const DefaultDebounce = 5 * time.Millisecond

// Syncer converges the node to Config.
type Syncer struct {
	cfg     Config
	link    netif.Interface
	metrics *metrics

	mu      sync.Mutex // serialises Sync and Cleanup
	lastErr error
	synced  bool
	// repair asks Run for a sync now (a readiness check found something missing).
	repair chan struct{}
}

// New returns a syncer. Metrics go to reg when it is not nil.
func New(cfg Config, link netif.Interface, reg prometheus.Registerer) (*Syncer, error) {
	if cfg.IP == nil {
		return nil, errors.New("no IP address to keep")
	}
	if err := netif.ValidateLinkName(cfg.Interface); err != nil {
		return nil, err
	}
	if cfg.Debounce == 0 {
		cfg.Debounce = DefaultDebounce
	}
	m := newMetrics()
	if reg != nil {
		if err := m.register(reg); err != nil {
			return nil, err
		}
	}
	return &Syncer{cfg: cfg, link: link, metrics: m, repair: make(chan struct{}, 1)}, nil
}

// Sync makes one pass: link, address, stray copies of the address, rules. It returns the first
// error but still tries every step, so a rule failure does not keep the address away.
func (s *Syncer) Sync(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	err := s.sync(ctx)
	s.lastErr, s.synced = err, true
	if err != nil {
		s.metrics.errors.Inc()
		return err
	}
	s.metrics.lastSuccess.SetToCurrentTime()
	return nil
}

func (s *Syncer) sync(ctx context.Context) error {
	name, ip := s.cfg.Interface, s.cfg.IP
	created, err := s.link.EnsureLink(name)
	if err != nil {
		return err
	}
	if created {
		s.metrics.repairs.WithLabelValues("link").Inc()
		klog.InfoS("Created interface (dummy, or a port-less bridge where the kernel lacks dummy)", "interface", name)
	}
	added, err := s.link.EnsureAddress(name, ip)
	if err != nil {
		return err
	}
	if added {
		s.metrics.repairs.WithLabelValues("address").Inc()
		klog.InfoS("Added address", "address", hostCIDR(ip), "interface", name)
	}
	var errs []error
	others, err := s.link.LinksWithAddress(ip)
	if err != nil {
		errs = append(errs, err)
	}
	for _, other := range others {
		if other == name {
			continue
		}
		// A moved IP must not linger: the old copy would still attract traffic.
		if err := s.link.DeleteAddress(other, ip); err != nil {
			errs = append(errs, err)
			continue
		}
		s.metrics.repairs.WithLabelValues("stray_address").Inc()
		klog.InfoS("Removed address from another interface", "address", ip.String(), "interface", other)
	}
	if s.cfg.Rules != nil && ctx.Err() == nil {
		n, err := s.cfg.Rules.Ensure()
		if n > 0 {
			s.metrics.repairs.WithLabelValues("rule").Add(float64(n))
			klog.InfoS("Added iptables rules", "count", n)
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Ready is the readiness check of the last sync: nil when it succeeded.
func (s *Syncer) Ready() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.synced {
		return errors.New("not synced yet")
	}
	return s.lastErr
}

// AddressReady asks the kernel now whether the address is on the interface, and on no other (where
// it would attract the traffic). Readiness must reflect the node as it is, not the last sync: an
// address removed by someone else is reported until the repair. A gap asks Run for a sync.
func (s *Syncer) AddressReady() error {
	links, err := s.link.LinksWithAddress(s.cfg.IP)
	if err != nil {
		return err
	}
	var others []string
	on := false
	for _, l := range links {
		if l == s.cfg.Interface {
			on = true
		} else {
			others = append(others, l)
		}
	}
	switch {
	case !on:
		s.requestRepair()
		return fmt.Errorf("%s is not on %s", hostCIDR(s.cfg.IP), s.cfg.Interface)
	case len(others) > 0:
		s.requestRepair()
		return fmt.Errorf("%s is also on %v", s.cfg.IP, others)
	}
	return nil
}

// RulesReady checks now that every iptables rule is in place (nil without rules). A missing rule
// (iptables changes raise no kernel event here) asks Run for a sync.
func (s *Syncer) RulesReady() error {
	if s.cfg.Rules == nil {
		return nil
	}
	missing, err := s.cfg.Rules.Missing()
	if len(missing) > 0 {
		s.requestRepair()
		err = errors.Join(fmt.Errorf("%d rule(s) missing: %s", len(missing), strings.Join(missing, "; ")), err)
	}
	return err
}

func (s *Syncer) requestRepair() {
	select {
	case s.repair <- struct{}{}:
	default:
	}
}

// Run syncs now, then every interval and whenever the kernel reports a change to the address or
// the interface, until ctx is done. Sync errors are logged and retried, never fatal: the next
// event or tick tries again. If the kernel subscription breaks, the timer keeps things in place
// while it is re-established.
func (s *Syncer) Run(ctx context.Context, interval time.Duration) error {
	var resubscribe <-chan time.Time
	events := s.subscribe(ctx)
	if events == nil {
		resubscribe = time.After(time.Second)
	}
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	var debounce <-chan time.Time
	s.syncAndLog(ctx, "start")
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
			s.syncAndLog(ctx, "interval")
		case <-resubscribe:
			resubscribe = nil
			if events = s.subscribe(ctx); events == nil {
				resubscribe = time.After(time.Second)
				continue
			}
			// Changes made while we were deaf went unnoticed: look now.
			s.syncAndLog(ctx, "resubscribed")
		case e, ok := <-events:
			if !ok {
				// Socket overrun or error: netlink closed the subscription.
				events, resubscribe = nil, time.After(100*time.Millisecond)
				continue
			}
			if s.relevant(e) && debounce == nil {
				debounce = time.After(s.cfg.Debounce)
			}
		case <-debounce:
			debounce = nil
			s.syncAndLog(ctx, "kernel event")
		case <-s.repair:
			s.syncAndLog(ctx, "readiness check")
		}
	}
}

func (s *Syncer) relevant(e netif.Event) bool {
	if e.IP != nil {
		return e.IP.Equal(s.cfg.IP)
	}
	return e.Link == s.cfg.Interface
}

func (s *Syncer) subscribe(ctx context.Context) <-chan netif.Event {
	ch := make(chan netif.Event, 256)
	if err := s.link.Subscribe(ctx, ch); err != nil {
		klog.ErrorS(err, "Cannot watch address and link changes; repairing on the sync interval only")
		return nil
	}
	return ch
}

func (s *Syncer) syncAndLog(ctx context.Context, why string) {
	if ctx.Err() != nil {
		return
	}
	start := time.Now()
	if err := s.Sync(ctx); err != nil {
		klog.ErrorS(err, "Sync failed", "trigger", why)
		return
	}
	klog.V(2).InfoS("Synced", "trigger", why, "took", time.Since(start))
}

// Cleanup removes the rules and the address, and the interface if an agent created it (never
// `lo`, never a device that existed before).
func (s *Syncer) Cleanup() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	if s.cfg.Rules != nil {
		if err := s.cfg.Rules.Delete(); err != nil {
			errs = append(errs, err)
		}
	}
	name := s.cfg.Interface
	if err := s.link.DeleteAddress(name, s.cfg.IP); err != nil {
		errs = append(errs, err)
	}
	owned, err := s.link.OwnedLink(name)
	if err != nil {
		errs = append(errs, err)
	}
	if owned && name != "lo" {
		if err := s.link.DeleteLink(name); err != nil {
			errs = append(errs, err)
		} else {
			klog.InfoS("Deleted interface", "interface", name)
		}
	}
	return errors.Join(errs...)
}

func hostCIDR(ip net.IP) string {
	return (&net.IPNet{IP: ip, Mask: netif.HostMask(ip)}).String()
}

type metrics struct {
	lastSuccess prometheus.Gauge
	repairs     *prometheus.CounterVec
	errors      prometheus.Counter
}

func newMetrics() *metrics {
	return &metrics{
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "apiproxy_node_last_successful_sync_timestamp_seconds",
			Help: "Unix time of the last sync that left interface, address and rules in place.",
		}),
		repairs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "apiproxy_node_repairs_total",
			Help: "Changes made to reach the desired state (the initial setup included), by kind: link, address, stray_address, rule.",
		}, []string{"kind"}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "apiproxy_node_sync_errors_total",
			Help: "Syncs that failed.",
		}),
	}
}

func (m *metrics) register(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.lastSuccess, m.repairs, m.errors} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("register node metrics: %w", err)
		}
	}
	return nil
}
