package proxy

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Upstream readiness: a proxy that cannot reach its API server is of no use, but one slow or failed
// dial must not take it out of service (a DaemonSet's pods would flap in status, a Deployment's in
// its Service). So readiness asks whether a dial to the upstream succeeded within a window: every
// tunnel's own dial counts, and WatchUpstream dials only when no tunnel did for an interval, so a
// busy proxy adds nothing and an idle one adds one dial per interval.

// Defaults of WatchUpstream: a dial at most every 10 s when idle, each bounded by 5 s, and ready as
// long as one succeeded within the last 30 s (three intervals: it takes three failed checks in a
// row, or 30 s without a working dial, to turn unready).
const (
	DefaultUpstreamCheckInterval = 10 * time.Second
	DefaultUpstreamCheckTimeout  = 5 * time.Second
	DefaultUpstreamWindow        = 30 * time.Second
)

type upstreamHealth struct {
	mu      sync.Mutex
	lastOK  time.Time
	lastErr error
	errAt   time.Time
	window  time.Duration
	watched bool
}

func (u *upstreamHealth) record(err error, now time.Time) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if err == nil {
		u.lastOK = now
		return
	}
	u.lastErr, u.errAt = err, now
}

func (u *upstreamHealth) sinceOK(now time.Time) time.Duration {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.lastOK.IsZero() {
		return -1
	}
	return now.Sub(u.lastOK)
}

// WatchUpstream keeps UpstreamReady current, from a goroutine, until ctx is done: it dials the
// upstream (through --upstream-proxy when set) at once, then whenever no dial succeeded for
// interval, each dial bounded by timeout; a success counts for window. Zero values take the
// defaults. From its return on, UpstreamReady judges.
func (s *Server) WatchUpstream(ctx context.Context, interval, timeout, window time.Duration) {
	interval = cmpOr(interval, DefaultUpstreamCheckInterval)
	timeout = cmpOr(timeout, DefaultUpstreamCheckTimeout)
	s.upstream.mu.Lock()
	s.upstream.window, s.upstream.watched = cmpOr(window, DefaultUpstreamWindow), true
	s.upstream.mu.Unlock()
	go s.watchUpstream(ctx, interval, timeout)
}

func (s *Server) watchUpstream(ctx context.Context, interval, timeout time.Duration) {
	check := func() {
		if age := s.upstream.sinceOK(time.Now()); age >= 0 && age < interval {
			return // a tunnel dialed it a moment ago
		}
		dctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		c, err := s.dialer.DialContext(dctx, "tcp", s.cfg.Upstream)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			_ = c.Close()
		}
		s.upstream.record(err, time.Now())
	}
	check()
	// Tick faster than interval so an idle proxy re-checks about interval after its last success.
	t := time.NewTicker(max(interval/4, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			check()
		}
	}
}

// UpstreamReady is nil when a dial to the upstream succeeded within the window of WatchUpstream
// (always nil when it is not watched), else it says since when none did and the last error.
func (s *Server) UpstreamReady() error {
	u := &s.upstream
	now := time.Now()
	u.mu.Lock()
	defer u.mu.Unlock()
	if !u.watched {
		return nil
	}
	if !u.lastOK.IsZero() && now.Sub(u.lastOK) <= u.window {
		return nil
	}
	// No ages in the message: it becomes the kubelet's probe event, and a stable text lets the
	// events of a lasting failure aggregate into one (x N) instead of piling up.
	var why string
	switch {
	case u.lastOK.IsZero() && u.lastErr == nil:
		return fmt.Errorf("%s not dialed yet", s.cfg.Upstream)
	case u.lastOK.IsZero():
		why = fmt.Sprintf("no dial to %s has succeeded yet", s.cfg.Upstream)
	default:
		why = fmt.Sprintf("no dial to %s succeeded in the last %s", s.cfg.Upstream, u.window)
	}
	if u.lastErr != nil {
		why += fmt.Sprintf("; last error: %v", u.lastErr)
	}
	return errors.New(why)
}

func cmpOr(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}
