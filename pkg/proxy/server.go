// Package proxy is the server of `agent proxy`: an HTTP CONNECT proxy (and optional transparent TCP
// listeners) that only ever dials its upstream (the kube-apiserver) or an explicitly allowed target,
// so it can never be used as an open proxy. TLS stays end to end: bytes are relayed, never read.
package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/apiproxy/apiproxy/pkg/tunnel"
)

// Config is the proxy's behaviour. Zero durations disable the corresponding limit, except where noted.
type Config struct {
	// Upstream ("host:port") receives every tunnel whose authority is not allowed. Required.
	Upstream string
	// Allow lists the authorities dialed as named (nil: none).
	Allow *AllowList
	// UpstreamProxy ("host:port" or "http://host:port"), when set, makes every dial a CONNECT
	// through that proxy.
	UpstreamProxy string
	// DialTimeout bounds one dial (default 10s).
	DialTimeout time.Duration
	// HeaderTimeout bounds the time to receive a full request head (default 10s).
	HeaderTimeout time.Duration
	// MaxHeaderBytes bounds the request head (default 8 KiB).
	MaxHeaderBytes int
	// IdleTimeout closes tunnels that moved no byte for that long (0: never).
	IdleTimeout time.Duration
	// MaxTunnels caps concurrent tunnels; more are answered 503 (0: no cap).
	MaxTunnels int
	// KeepAlive is the TCP keepalive period of dialed connections (default 30s; <0 disables).
	KeepAlive time.Duration
	// Dialer dials TCP (the upstream, allowed targets, or the upstream proxy). Nil means a net.Dialer;
	// tests inject their own.
	Dialer tunnel.ContextDialer
	// Logger gets one line per tunnel. The zero value discards.
	Logger logr.Logger
	// Registerer receives the metrics (nil: not registered).
	Registerer prometheus.Registerer
}

// Server relays tunnels. Create it with New, feed it listeners with Serve / ServeTCP, stop it with
// Shutdown.
type Server struct {
	cfg     Config
	m       *metrics
	dialer  tunnel.ContextDialer
	tunnels atomic.Int64 // established or being dialed, counted against MaxTunnels

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]io.Closer // what Shutdown closes: the conn, then its tunnel
	draining  bool
	wg        sync.WaitGroup
}

// New validates cfg and returns a server.
func New(cfg Config) (*Server, error) {
	if cfg.Upstream == "" {
		return nil, errors.New("proxy: no upstream configured")
	}
	if _, _, err := ParseAuthority(cfg.Upstream); err != nil {
		return nil, fmt.Errorf("invalid upstream %q: %v", cfg.Upstream, err)
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 10 * time.Second
	}
	if cfg.HeaderTimeout == 0 {
		cfg.HeaderTimeout = 10 * time.Second
	}
	if cfg.MaxHeaderBytes <= 0 {
		cfg.MaxHeaderBytes = 8 << 10
	}
	if cfg.KeepAlive == 0 {
		cfg.KeepAlive = 30 * time.Second
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("proxy metrics: %w", err)
	}
	s := &Server{cfg: cfg, m: m, listeners: map[net.Listener]struct{}{}, conns: map[net.Conn]io.Closer{}}
	var base tunnel.ContextDialer = &net.Dialer{KeepAlive: cfg.KeepAlive}
	if cfg.Dialer != nil {
		base = cfg.Dialer
	}
	s.dialer = base
	if cfg.UpstreamProxy != "" {
		if _, err := tunnel.ProxyHostPort(cfg.UpstreamProxy); err != nil {
			return nil, fmt.Errorf("invalid upstream proxy: %w", err)
		}
		s.dialer = &tunnel.Dialer{Proxy: cfg.UpstreamProxy, Forward: base}
	}
	return s, nil
}

// Listen binds a TCP listener with the configured keepalive on accepted connections.
func Listen(ctx context.Context, addr string, keepAlive time.Duration) (net.Listener, error) {
	lc := listenConfig(keepAlive)
	return lc.Listen(ctx, "tcp", addr)
}

// ErrServerClosed is returned by Serve and ServeTCP after Shutdown.
var ErrServerClosed = errors.New("proxy: server closed")

// Serve accepts CONNECT requests on l until Shutdown.
func (s *Server) Serve(l net.Listener) error { return s.serve(l, s.handleConnect) }

// ServeTCP accepts raw TCP connections on l and relays each to the upstream (transparent listener).
func (s *Server) ServeTCP(l net.Listener) error { return s.serve(l, s.handleTCP) }

// serve accepts on l. Each connection's handler owns it from then on and must end with s.done,
// either itself or, once the tunnel is relaying, from the relay's completion.
func (s *Server) serve(l net.Listener, handle func(net.Conn)) error {
	if !s.track(l) {
		l.Close()
		return ErrServerClosed
	}
	defer s.untrack(l)
	var backoff time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if s.isDraining() {
				return ErrServerClosed
			}
			// Out of file descriptors and the like: back off instead of spinning.
			var ne net.Error
			if errors.As(err, &ne) && !errors.Is(err, net.ErrClosed) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.cfg.Logger.Error(err, "accept failed, retrying", "listener", l.Addr().String(), "backoff", backoff)
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		if !s.trackConn(c) {
			c.Close()
			continue
		}
		go handle(c)
	}
}

func (s *Server) track(l net.Listener) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining {
		return false
	}
	s.listeners[l] = struct{}{}
	return true
}

func (s *Server) untrack(l net.Listener) {
	s.mu.Lock()
	delete(s.listeners, l)
	s.mu.Unlock()
}

func (s *Server) trackConn(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining {
		return false
	}
	s.conns[c] = c
	s.wg.Add(1)
	return true
}

func (s *Server) untrackConn(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.wg.Done()
}

func (s *Server) isDraining() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.draining
}

// Ready is nil while the server accepts connections on at least one listener.
func (s *Server) Ready() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining {
		return errors.New("draining")
	}
	if len(s.listeners) == 0 {
		return errors.New("no listener bound yet")
	}
	return nil
}

// Shutdown stops accepting at once, then waits for the open connections to finish until ctx is
// done; those still open then are closed. It returns ctx's error when it had to cut connections.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.draining = true
	for l := range s.listeners {
		l.Close()
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	s.mu.Lock()
	for _, c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	<-done
	return ctx.Err()
}

// Active is the number of tunnels dialing or relaying.
func (s *Server) Active() int { return int(s.tunnels.Load()) }

func (s *Server) acquire() bool {
	if n := s.tunnels.Add(1); s.cfg.MaxTunnels > 0 && n > int64(s.cfg.MaxTunnels) {
		s.tunnels.Add(-1)
		return false
	}
	return true
}

func (s *Server) release() { s.tunnels.Add(-1) }

var readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4096) }}

// tunnelLog accumulates the single log line of a connection.
type tunnelLog struct {
	kind, authority, dialed, result string
	start                           time.Time
	up, down                        int64
	err                             error
}

// done settles a finished connection: its metric, its log line, and the drain bookkeeping.
func (s *Server) done(c net.Conn, tl *tunnelLog) {
	defer s.untrackConn(c)
	s.m.total.WithLabelValues(tl.kind, tl.result).Inc()
	kv := []any{"listener", tl.kind, "peer", c.RemoteAddr().String(), "authority", tl.authority,
		"dialed", tl.dialed, "bytesUp", tl.up, "bytesDown", tl.down,
		"duration", time.Since(tl.start).Round(time.Microsecond).String(), "result", tl.result}
	if tl.err != nil {
		kv = append(kv, "error", tl.err.Error())
	}
	s.cfg.Logger.Info("tunnel", kv...)
}

func (s *Server) handleConnect(c net.Conn) {
	tl := &tunnelLog{kind: KindConnect, start: time.Now()}
	acquired := false
	handedOff := false
	defer func() {
		if handedOff {
			return
		}
		if acquired {
			s.release()
		}
		s.done(c, tl)
	}()

	_ = c.SetReadDeadline(tl.start.Add(s.cfg.HeaderTimeout))
	br := readerPool.Get().(*bufio.Reader)
	br.Reset(&limitedReader{r: c, n: int64(s.cfg.MaxHeaderBytes)})
	release := func() { br.Reset(nil); readerPool.Put(br) }
	req, err := ParseConnectRequest(br)
	if err != nil {
		release()
		tl.err = err
		var re *RequestError
		switch {
		case errors.As(err, &re):
			tl.result = ResultBadRequest
			if re.Status == http.StatusMethodNotAllowed {
				tl.result = ResultMethod
			}
			s.reject(c, re.Status, re.Reason, "Allow", "CONNECT")
		case errors.Is(err, errHeadTooLarge):
			tl.result = ResultBadRequest
			s.reject(c, http.StatusBadRequest, fmt.Sprintf("request head larger than %d bytes", s.cfg.MaxHeaderBytes))
		case errors.Is(err, os.ErrDeadlineExceeded):
			// A slow (or slowloris) client: cut it without an answer it would not read anyway.
			tl.result = ResultHeaderTimeout
			c.Close()
		default:
			tl.result = ResultClientGone
			c.Close()
		}
		return
	}
	tl.authority = req.Authority
	_ = c.SetReadDeadline(time.Time{})

	if !s.acquire() {
		release()
		tl.result = ResultOverCapacity
		s.reject(c, http.StatusServiceUnavailable, fmt.Sprintf("too many tunnels (max %d)", s.cfg.MaxTunnels))
		return
	}
	acquired = true

	target := s.cfg.Upstream
	if s.cfg.Allow.Allows(req.Host, req.Port) {
		target = req.Authority
	}
	tl.dialed = target
	up, status, err := s.dial(target)
	if err != nil {
		release()
		tl.err = err
		tl.result = ResultDialRefused
		if status == http.StatusGatewayTimeout {
			tl.result = ResultDialTimeout
		}
		s.reject(c, status, fmt.Sprintf("dial %s: %v", target, err))
		return
	}
	// 200 only now that the upstream is connected.
	if _, err := io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		release()
		up.Close()
		c.Close()
		tl.err, tl.result = err, ResultRelayError
		return
	}
	// Bytes the client pipelined right after the head (a TLS ClientHello) are already in br.
	if n := br.Buffered(); n > 0 {
		pipelined, _ := br.Peek(n)
		m, err := up.Write(pipelined)
		tl.up += int64(m)
		s.m.bytesUp.Add(float64(m))
		if err != nil {
			release()
			up.Close()
			c.Close()
			tl.err, tl.result = err, ResultRelayError
			return
		}
	}
	release() // no per-tunnel buffer from here on
	handedOff = true
	s.relay(c, up, tl)
}

func (s *Server) handleTCP(c net.Conn) {
	tl := &tunnelLog{kind: KindTCP, start: time.Now()}
	if !s.acquire() {
		tl.result = ResultOverCapacity
		c.Close()
		s.done(c, tl)
		return
	}
	tl.dialed = s.cfg.Upstream
	up, status, err := s.dial(s.cfg.Upstream)
	if err != nil {
		tl.err = err
		tl.result = ResultDialRefused
		if status == http.StatusGatewayTimeout {
			tl.result = ResultDialTimeout
		}
		c.Close()
		s.release()
		s.done(c, tl)
		return
	}
	s.relay(c, up, tl)
}

// relay hands the tunnel to its two relay goroutines and returns: the handler's goroutine (and the
// stack that parsing and dialing grew) ends here. The slot, metrics and log line are settled when
// the tunnel is over.
func (s *Server) relay(c, up net.Conn, tl *tunnelLog) {
	active := s.m.active.WithLabelValues(tl.kind)
	active.Inc()
	t := tunnel.NewTunnel(c, up, tunnel.RelayOptions{
		IdleTimeout: s.cfg.IdleTimeout,
		Progress:    s.progress,
		// Idle tunnels wait without a goroutine; they are then closed only through t.Close.
		ParkIdle: true,
	}, func(res tunnel.RelayResult) {
		active.Dec()
		s.release()
		tl.up += res.AToB
		tl.down = res.BToA
		switch {
		case res.Idle:
			tl.result = ResultIdle
		case res.Closed:
			tl.result = ResultDrained
		case res.Err != nil:
			tl.result, tl.err = ResultRelayError, res.Err
		default:
			tl.result = ResultOK
		}
		s.done(c, tl)
	})
	s.mu.Lock()
	s.conns[c] = t
	s.mu.Unlock()
	t.Run()
}

func (s *Server) progress(toUpstream bool, n int64) {
	if toUpstream {
		s.m.bytesUp.Add(float64(n))
	} else {
		s.m.bytesDn.Add(float64(n))
	}
}

// dial connects to target, and says which status a failure maps to: 504 for a timeout, else 502.
func (s *Server) dial(target string) (net.Conn, int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.DialTimeout)
	defer cancel()
	start := time.Now()
	c, err := s.dialer.DialContext(ctx, "tcp", target)
	if err != nil {
		s.m.dialTime.WithLabelValues("error").Observe(time.Since(start).Seconds())
		return nil, dialStatus(err), err
	}
	s.m.dialTime.WithLabelValues("ok").Observe(time.Since(start).Seconds())
	return c, http.StatusOK, nil
}

func dialStatus(err error) int {
	var ce *tunnel.ConnectError
	if errors.As(err, &ce) {
		if ce.StatusCode == http.StatusGatewayTimeout {
			return http.StatusGatewayTimeout
		}
		return http.StatusBadGateway
	}
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, syscall.ETIMEDOUT) || (errors.As(err, &ne) && ne.Timeout()) {
		return http.StatusGatewayTimeout
	}
	return http.StatusBadGateway
}

// reject answers status and closes c gracefully: half-close, then drain what the client still
// sends for a moment, so the answer is not destroyed by a reset.
func (s *Server) reject(c net.Conn, status int, reason string, extra ...string) {
	body := reason + "\n"
	head := "HTTP/1.1 " + strconv.Itoa(status) + " " + http.StatusText(status) + "\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\nConnection: close\r\n"
	if status == http.StatusMethodNotAllowed && len(extra) == 2 {
		head += extra[0] + ": " + extra[1] + "\r\n"
	}
	_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, _ = io.WriteString(c, head+"\r\n"+body)
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		_ = c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		_, _ = io.CopyN(io.Discard, c, 64<<10)
	}
	c.Close()
}
