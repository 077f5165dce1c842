package proxy

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// scriptedDialer answers dials as the test says: ok, refused, or hanging until the context ends.
type scriptedDialer struct {
	mu    sync.Mutex
	mode  string
	dials int
}

func (d *scriptedDialer) set(mode string) { d.mu.Lock(); d.mode = mode; d.mu.Unlock() }

func (d *scriptedDialer) DialContext(ctx context.Context, _, _ string) (net.Conn, error) {
	d.mu.Lock()
	mode := d.mode
	d.dials++
	d.mu.Unlock()
	switch mode {
	case "ok":
		a, b := net.Pipe()
		go b.Close()
		return a, nil
	case "hang":
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return nil, errors.New("connect: connection refused")
}

func (d *scriptedDialer) count() int { d.mu.Lock(); defer d.mu.Unlock(); return d.dials }

// Readiness follows the upstream, but only a window without any successful dial makes it unready:
// one slow (timed out) dial does not, a tunnel's own dial counts as a check, and the error says
// since when nothing worked and why.
func TestUpstreamReadiness(t *testing.T) {
	d := &scriptedDialer{mode: "refused"}
	s, err := New(Config{Upstream: "10.96.0.1:443", Dialer: d})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.UpstreamReady(); err != nil {
		t.Fatalf("not watched: %v, want ready", err)
	}
	const interval, timeout, window = 40 * time.Millisecond, 20 * time.Millisecond, 300 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s.WatchUpstream(ctx, interval, timeout, window)
	waitFor := func(what string, cond func(error) bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for err := s.UpstreamReady(); !cond(err); err = s.UpstreamReady() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: UpstreamReady = %v", what, err)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitFor("refused from the start", func(err error) bool {
		return err != nil && strings.Contains(err.Error(), "no dial to 10.96.0.1:443 has succeeded yet") && strings.Contains(err.Error(), "connection refused")
	})
	d.set("ok")
	waitFor("the first successful dial", func(err error) bool { return err == nil })

	// Slow dials for less than the window: still ready throughout.
	d.set("hang")
	until := time.Now().Add(window / 2)
	for time.Now().Before(until) {
		if err := s.UpstreamReady(); err != nil {
			t.Fatalf("unready after one slow dial: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// A tunnel's successful dial keeps it ready without a check of its own.
	d.set("ok")
	before := d.count()
	if c, _, err := s.dial(s.cfg.Upstream); err != nil {
		t.Fatal(err)
	} else {
		c.Close()
	}
	time.Sleep(interval / 2)
	if got := d.count() - before; got != 1 {
		t.Errorf("%d dials right after a tunnel's dial, want only the tunnel's", got)
	}

	// Nothing works for longer than the window: unready, saying so.
	d.set("refused")
	waitFor("a window without a working dial", func(err error) bool {
		return err != nil && strings.Contains(err.Error(), "no dial to 10.96.0.1:443 succeeded in the last 300ms") && strings.Contains(err.Error(), "connection refused")
	})
	d.set("ok")
	waitFor("back", func(err error) bool { return err == nil })
}
