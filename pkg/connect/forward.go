package connect

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/apiproxy/apiproxy/pkg/tunnel"
)

// Forwarder accepts local connections and tunnels each one through Dial, like
// `kubectl port-forward` does for a pod.
type Forwarder struct {
	Listener net.Listener
	// Dial opens one tunnel to the API server (a CONNECT through the proxy).
	Dial func(ctx context.Context) (net.Conn, error)
	// DialTimeout bounds each tunnel's setup.
	DialTimeout time.Duration
	// OnError reports a tunnel that could not be opened (the accepted connection is closed).
	OnError func(error)
}

// Serve runs until ctx is done or the listener fails. It returns the listener's error (nil when
// ctx ended it) as soon as the listener fails, having closed the listener and every open tunnel:
// a dead listener must not wait silently for long-lived tunnels (watches) to end.
func (f *Forwarder) Serve(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var mu sync.Mutex
	open := map[net.Conn]struct{}{}
	stop := context.AfterFunc(ctx, func() {
		_ = f.Listener.Close()
		mu.Lock()
		for c := range open {
			_ = c.Close()
		}
		mu.Unlock()
	})
	// Deferred calls run last first: cancel closes the listener and the tunnels (through stop's
	// AfterFunc), and only then do we wait for the handlers, which end once their sockets close.
	defer wg.Wait()
	defer stop()
	defer cancel()
	for {
		local, err := f.Listener.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("accepting on %s: %w", f.Listener.Addr(), err)
		}
		mu.Lock()
		open[local] = struct{}{}
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { mu.Lock(); delete(open, local); mu.Unlock() }()
			f.handle(ctx, local)
		}()
	}
}

func (f *Forwarder) handle(ctx context.Context, local net.Conn) {
	dctx := ctx
	if f.DialTimeout > 0 {
		var cancel context.CancelFunc
		dctx, cancel = context.WithTimeout(ctx, f.DialTimeout)
		defer cancel()
	}
	remote, err := f.Dial(dctx)
	if err != nil {
		_ = local.Close()
		if f.OnError != nil {
			f.OnError(err)
		}
		return
	}
	res := tunnel.Relay(local, remote, tunnel.RelayOptions{})
	klog.V(4).InfoS("tunnel closed", "client", local.RemoteAddr(), "sent", res.AToB, "received", res.BToA, "err", res.Err)
}
