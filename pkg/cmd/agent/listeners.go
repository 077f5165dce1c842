package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/klog/v2"

	"github.com/apiproxy/apiproxy/pkg/handoff"
	"github.com/apiproxy/apiproxy/pkg/health"
	"github.com/apiproxy/apiproxy/pkg/proxy"
	"github.com/apiproxy/apiproxy/pkg/tunnel"
)

// proxyListeners are the proxy's listening sockets (--listen, --listen-tcp, --metrics-addr), bound
// here or, with --handoff-dir, shared with the other agents of the directory. Shared sockets are
// accepted on by one agent at a time (handoff.Dir.Turn): this one stands by until its turn, and
// when it took the sockets over from an agent that serves them, it first waits until a dial to the
// upstream has worked, so a broken release never takes connections it cannot serve.
type proxyListeners struct {
	logger logr.Logger
	srv    *proxy.Server
	o      *proxyOptions
	shared *handoff.Dir
	data   []dataListener

	waitingUpstream, standingBy atomic.Int32
	errc                        chan error

	mu       sync.Mutex
	releases []func() // the turns held
}

type dataListener struct {
	addr string
	tcp  bool
	l    net.Listener    // bound here (without --handoff-dir)
	sock *handoff.Socket // shared (with --handoff-dir)
}

// bindListeners binds (or takes over) every address and, with --handoff-dir, starts offering them.
// The metrics listener is given to hs; every agent serves its own metrics on it.
func (o *proxyOptions) bindListeners(ctx context.Context, logger logr.Logger, srv *proxy.Server, hs *health.Server) (*proxyListeners, error) {
	ls := &proxyListeners{logger: logger, srv: srv, o: o}
	bind := func(ctx context.Context, addr string) (net.Listener, error) {
		return proxy.Listen(ctx, addr, o.KeepAlive)
	}
	if o.HandoffDir != "" {
		octx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		d, err := handoff.Open(octx, o.HandoffDir, "proxy", logger.WithName("handoff"))
		if err != nil {
			return nil, fmt.Errorf("--handoff-dir: %w", err)
		}
		ls.shared = d
	}
	add := func(flag, addr string, tcp bool) error {
		dl := dataListener{addr: addr, tcp: tcp}
		var err error
		if ls.shared == nil {
			dl.l, err = bind(ctx, addr)
		} else if dl.sock, err = ls.shared.Listen(ctx, addr, bind); err == nil {
			logger.Info("listener", "addr", addr, "source", string(dl.sock.Source))
		}
		if err != nil {
			return fmt.Errorf("%s %s: %w", flag, addr, err)
		}
		ls.data = append(ls.data, dl)
		return nil
	}
	err := func() error {
		if o.Listen != "" {
			if err := add("--listen", o.Listen, false); err != nil {
				return err
			}
		}
		for _, a := range o.ListenTCP {
			if err := add("--listen-tcp", a, true); err != nil {
				return err
			}
		}
		if o.MetricsAddr != "" {
			if ls.shared == nil {
				if err := hs.Listen(o.MetricsAddr); err != nil {
					return fmt.Errorf("--metrics-addr %s: %w", o.MetricsAddr, err)
				}
			} else {
				sock, err := ls.shared.Listen(ctx, o.MetricsAddr, bind)
				if err != nil {
					return fmt.Errorf("--metrics-addr %s: %w", o.MetricsAddr, err)
				}
				l, err := sock.Listener()
				if err != nil {
					return fmt.Errorf("--metrics-addr %s: %w", o.MetricsAddr, err)
				}
				hs.Use(l)
			}
		}
		if err := hs.ListenSocket(o.HealthSocket); err != nil {
			return fmt.Errorf("--health-socket %s: %w", o.HealthSocket, err)
		}
		if ls.shared != nil {
			if err := ls.shared.Serve(); err != nil {
				return fmt.Errorf("--handoff-dir %s: %w", o.HandoffDir, err)
			}
		}
		return nil
	}()
	if err != nil {
		ls.close()
		return nil, err
	}
	return ls, nil
}

// takenOver says whether a listener came from a running agent.
func (ls *proxyListeners) takenOver() bool {
	for _, d := range ls.data {
		if d.sock != nil && d.sock.Source == handoff.TakenOver {
			return true
		}
	}
	return false
}

// serve starts accepting: at once on the sockets bound here, at this agent's turn on shared ones.
// The channel receives the serve loops' ends.
func (ls *proxyListeners) serve(ctx context.Context) <-chan error {
	ls.errc = make(chan error, len(ls.data))
	for _, d := range ls.data {
		if d.sock == nil {
			ls.start(d, d.l, 0)
			continue
		}
		ls.standingBy.Add(1)
		go func() {
			defer ls.standingBy.Add(-1)
			if d.sock.Source == handoff.TakenOver {
				ls.waitingUpstream.Add(1)
				ok := waitUpstream(ctx, ls.srv)
				ls.waitingUpstream.Add(-1)
				if !ok {
					return
				}
			}
			start := time.Now()
			release, err := ls.shared.Turn(ctx, d.addr)
			if err != nil {
				if ctx.Err() == nil {
					ls.errc <- err
				}
				return
			}
			l, err := d.sock.Listener()
			if err != nil {
				release()
				ls.errc <- fmt.Errorf("%s: %w", d.addr, err)
				return
			}
			ls.mu.Lock()
			ls.releases = append(ls.releases, release)
			ls.mu.Unlock()
			ls.start(d, l, time.Since(start))
		}()
	}
	return ls.errc
}

func (ls *proxyListeners) start(d dataListener, l net.Listener, waited time.Duration) {
	o := ls.o
	kind, serve := "CONNECT", ls.srv.Serve
	if d.tcp {
		kind, serve = "transparent TCP", ls.srv.ServeTCP
	}
	kv := []any{"kind", kind, "addr", l.Addr().String(), "upstream", o.Upstream, "upstreamProxy", tunnel.Redact(o.UpstreamProxy), "allowTargets", o.allow.Len(),
		"allowSources", o.sources.Len(), "auth", authMode(o.Auth, d.tcp)}
	if d.sock != nil {
		// Waited for the turn: the agent that accepted before stopped or died.
		kv = append(kv, "source", string(d.sock.Source), "waitedForTurn", waited.Round(time.Millisecond))
	}
	ls.logger.Info("listening", kv...)
	go func() { ls.errc <- serve(l) }()
}

// ready: every listener accepts, or stands by for its turn (holding the socket, with a working
// upstream); not while it waits for the upstream after taking the sockets over.
func (ls *proxyListeners) ready() error {
	if ls.waitingUpstream.Load() > 0 {
		return errors.New("taken over from the running agent, which serves them: not accepting here until a dial to the upstream works")
	}
	if ls.standingBy.Load() > 0 {
		return nil
	}
	return ls.srv.Ready()
}

// stopAccepting stops offering the sockets and gives the turns back, so the agents that stay
// accept (the listeners themselves close in the server's Shutdown, a moment later).
func (ls *proxyListeners) stopAccepting() {
	if ls.shared != nil {
		ls.shared.Close()
	}
	ls.mu.Lock()
	defer ls.mu.Unlock()
	for _, r := range ls.releases {
		r()
	}
	ls.releases = nil
}

// close releases everything on the way out.
func (ls *proxyListeners) close() {
	ls.stopAccepting()
	for _, d := range ls.data {
		if d.l != nil {
			d.l.Close()
		}
		if d.sock != nil {
			d.sock.Close()
		}
	}
}

// waitUpstream waits until a dial to the upstream has worked (false when ctx ends first), saying
// what it waits for when that takes a while.
func waitUpstream(ctx context.Context, srv *proxy.Server) bool {
	logger := klog.Background().WithName("proxy")
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	said := time.Now()
	for {
		err := srv.UpstreamReady()
		if err == nil {
			return true
		}
		if time.Since(said) > 10*time.Second {
			logger.Info("not accepting on the listeners taken over yet: the upstream does not work", "reason", err.Error())
			said = time.Now()
		}
		select {
		case <-ctx.Done():
			return false
		case <-tick.C:
		}
	}
}
