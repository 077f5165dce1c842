// Package proxy is the server of `agent proxy`: an HTTP CONNECT proxy (and optional transparent TCP
// listeners) that only ever dials its upstream (the kube-apiserver) or an explicitly allowed target,
// so it can never be used as an open proxy. TLS stays end to end: bytes are relayed, never read.
package proxy

import (
	"bufio"
	"container/list"
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/apiproxy/apiproxy/pkg/gopool"
	"github.com/apiproxy/apiproxy/pkg/tunnel"
)

// Config is the proxy's behaviour. Zero durations disable the corresponding limit, except where noted.
type Config struct {
	// Upstream ("host:port") receives every tunnel whose authority is not allowed. Required.
	Upstream string
	// Allow lists the authorities dialed as named (nil: none).
	Allow *AllowList
	// UpstreamProxy ("host:port" or "http://host:port"), when set, makes every dial a CONNECT
	// through that proxy; the user info of a URL is sent as Proxy-Authorization (tunnel.Dialer).
	UpstreamProxy string
	// UpstreamProxyAuthorization, when set, gives the Proxy-Authorization of each CONNECT to
	// UpstreamProxy instead (a credentials file from a Secret).
	UpstreamProxyAuthorization func() (string, error)
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
	// MaxPendingHeads caps the CONNECT connections still without a complete request head; at the
	// cap, the oldest of them is answered 408 and closed, so idle or slow clients can't crowd out a
	// client that sends its head at once (default 4096).
	MaxPendingHeads int
	// AllowSources, when set, lists the only client addresses served (both listener kinds); others
	// are closed before anything is read.
	AllowSources *SourceList
	// Auth, when set, checks every CONNECT before anything is dialed (not the transparent
	// listeners: raw TCP carries no credentials).
	Auth Authenticator
	// AuthTimeout bounds one authentication (default 10s).
	AuthTimeout time.Duration
	// Audit, when set, receives one record per tunnel.
	Audit *AuditLog
	// KeepAlive is the TCP keepalive period of dialed connections (default 30s; <0 disables).
	KeepAlive time.Duration
	// Dialer dials TCP (the upstream, allowed targets, or the upstream proxy). Nil means a net.Dialer;
	// tests inject their own.
	Dialer tunnel.ContextDialer
	// Logger gets the proxy's events and, unless AccessLog is set, one line per tunnel. The zero
	// value discards.
	Logger logr.Logger
	// AccessLog, when set, receives the line per tunnel instead of Logger, in klog's text format,
	// one Write per line; give it a pkg/logbatch Writer to save a write(2) per tunnel.
	AccessLog io.Writer
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

	idPrefix   string
	ids        atomic.Uint64
	refusedLog sometimes

	pmu     sync.Mutex
	pending list.List // of *pendingConn, oldest first

	// upstream is what readiness knows about dialing the upstream (upstream.go).
	upstream upstreamHealth

	// ctx bounds every review and dial; Shutdown cancels it when the grace period ends, so nothing
	// a connection waits for outlives --shutdown-grace.
	ctx    context.Context
	cancel context.CancelFunc

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]io.Closer // what Shutdown closes: the conn, then its tunnel
	// closing: Shutdown has closed the listeners; draining: and every accept loop has returned, so
	// no connection comes in any more. In between, a connection an accept loop already took is
	// still served: with listening sockets shared between agents (--handoff-dir) it was taken off
	// the shared queue, and no other agent can accept it any more.
	closing, draining bool
	loops             sync.WaitGroup // accept loops
	wg                sync.WaitGroup // connections
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
	if cfg.MaxPendingHeads <= 0 {
		cfg.MaxPendingHeads = 4096
	}
	if cfg.AuthTimeout <= 0 {
		cfg.AuthTimeout = 10 * time.Second
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("proxy metrics: %w", err)
	}
	s := &Server{cfg: cfg, m: m, listeners: map[net.Listener]struct{}{}, conns: map[net.Conn]io.Closer{},
		idPrefix: newIDPrefix(), refusedLog: sometimes{interval: 10 * time.Second}}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	var base tunnel.ContextDialer = &net.Dialer{KeepAlive: cfg.KeepAlive}
	if cfg.Dialer != nil {
		base = cfg.Dialer
	}
	s.dialer = base
	if cfg.UpstreamProxy != "" {
		if _, err := tunnel.ProxyHostPort(cfg.UpstreamProxy); err != nil {
			return nil, fmt.Errorf("invalid upstream proxy: %w", err)
		}
		s.dialer = &tunnel.Dialer{Proxy: cfg.UpstreamProxy, Forward: base, Authorization: cfg.UpstreamProxyAuthorization}
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
func (s *Server) Serve(l net.Listener) error { return s.serve(l, KindConnect, s.handleConnect) }

// ServeTCP accepts raw TCP connections on l and relays each to the upstream (transparent listener).
func (s *Server) ServeTCP(l net.Listener) error { return s.serve(l, KindTCP, s.handleTCP) }

// serve accepts on l. Each connection's handler owns it from then on and must end with s.done,
// either itself or, once the tunnel is relaying, from the relay's completion.
func (s *Server) serve(l net.Listener, kind string, handle func(net.Conn)) error {
	if !s.track(l) {
		l.Close()
		return ErrServerClosed
	}
	defer s.untrack(l)
	var backoff time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if s.isClosing() {
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
		if !s.cfg.AllowSources.Allows(c.RemoteAddr()) {
			s.refuseSource(c, kind)
			continue
		}
		if !s.trackConn(c) {
			c.Close()
			continue
		}
		gopool.Go(func() { handle(c) })
	}
}

// refuseSource closes a connection from outside --allow-source without reading from it.
func (s *Server) refuseSource(c net.Conn, kind string) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0) // a reset: nothing to flush, and no TIME_WAIT on our side
	}
	c.Close()
	s.m.refused.WithLabelValues(kind).Inc()
	if ok, held := s.refusedLog.allow(time.Now()); ok {
		s.cfg.Logger.Info("refused a connection from outside --allow-source", "listener", kind,
			"source", c.RemoteAddr().String(), "alsoRefusedSinceLastLine", held)
	}
}

func (s *Server) track(l net.Listener) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.listeners[l] = struct{}{}
	s.loops.Add(1)
	return true
}

func (s *Server) untrack(l net.Listener) {
	s.mu.Lock()
	delete(s.listeners, l)
	s.mu.Unlock()
	s.loops.Done()
}

func (s *Server) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
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
// done. Then the reviews and dials still running are cancelled and the remaining connections
// closed; Shutdown returns at most shutdownStraggle later, so a forced shutdown ends within the
// grace period and a moment (the caller still has time to flush its logs before a SIGKILL). It
// returns ctx's error when it had to cut connections.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	for l := range s.listeners {
		l.Close()
	}
	s.mu.Unlock()
	// A connection accepted just before the close is served, not dropped: wait for the accept
	// loops to hand their last connections over (they return at once on the closed listeners).
	loops := make(chan struct{})
	go func() { s.loops.Wait(); close(loops) }()
	select {
	case <-loops:
	case <-ctx.Done():
	}
	s.mu.Lock()
	s.draining = true
	s.mu.Unlock()
	// Connections still without a complete head get 503 now rather than a new tunnel later.
	s.pmu.Lock()
	for e := s.pending.Front(); e != nil; e = e.Next() {
		e.Value.(*pendingConn).interrupt(interruptDrain)
	}
	s.pmu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		s.cancel()
		return nil
	case <-ctx.Done():
	}
	s.cancel()
	s.mu.Lock()
	for _, c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	// Handlers return at once now: their review or dial is cancelled and their connection closed.
	// One blocked elsewhere (an Authenticator that ignores its context) is not waited for.
	t := time.NewTimer(shutdownStraggle)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		s.cfg.Logger.Info("shutdown: connections still busy after the grace period, not waiting for them")
	}
	return ctx.Err()
}

// shutdownStraggle is how long Shutdown waits, after the grace period, for the handlers it
// interrupted.
const shutdownStraggle = 500 * time.Millisecond

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

// Why a pending connection's wait for its head was cut short.
const (
	interruptNone int32 = iota
	interruptEvict
	interruptDrain
)

// pendingConn is a CONNECT connection waiting for its request head.
type pendingConn struct {
	c    net.Conn
	elem *list.Element // nil once removed; guarded by Server.pmu
	why  atomic.Int32
}

// interrupt ends the head's wait: the owner's read fails with a deadline error and it answers
// according to why. Only the owner writes to the connection.
func (p *pendingConn) interrupt(why int32) {
	p.why.CompareAndSwap(interruptNone, why)
	_ = p.c.SetReadDeadline(time.Unix(1, 0))
}

// addPending registers c as waiting for its head, evicting the oldest waiting connection when the
// cap is reached.
func (s *Server) addPending(c net.Conn) *pendingConn {
	p := &pendingConn{c: c}
	s.pmu.Lock()
	if s.pending.Len() >= s.cfg.MaxPendingHeads {
		oldest := s.pending.Front()
		op := oldest.Value.(*pendingConn)
		s.pending.Remove(oldest)
		op.elem = nil
		op.interrupt(interruptEvict)
		s.m.pending.Dec()
	}
	p.elem = s.pending.PushBack(p)
	s.pmu.Unlock()
	s.m.pending.Inc()
	return p
}

// removePending ends p's wait. After it returns no one else touches p's deadline.
func (s *Server) removePending(p *pendingConn) {
	s.pmu.Lock()
	if p.elem != nil {
		s.pending.Remove(p.elem)
		p.elem = nil
		s.m.pending.Dec()
	}
	s.pmu.Unlock()
}

// PendingHeads is the number of CONNECT connections still without a complete head.
func (s *Server) PendingHeads() int {
	s.pmu.Lock()
	defer s.pmu.Unlock()
	return s.pending.Len()
}

// tunnelLog accumulates the single log line (and audit record) of a connection.
type tunnelLog struct {
	kind, source, authority, dialed, result, auth string
	id                                            string
	status                                        int
	identity                                      *Identity
	start                                         time.Time
	up, down                                      int64
	sent                                          bool // the client sent at least one byte
	err                                           error
}

func newIDPrefix() string {
	var b [4]byte
	_, _ = crand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (s *Server) newLog(kind string, c net.Conn) *tunnelLog {
	return &tunnelLog{kind: kind, start: time.Now(), source: c.RemoteAddr().String(),
		id: s.idPrefix + "-" + strconv.FormatUint(s.ids.Add(1), 36)}
}

// done settles a finished connection: its metric, its log line and audit record, and the drain
// bookkeeping. A connection whose client never sent a byte (a TCP health probe) gets no line: it is
// only counted, unless dialing the upstream for it failed (the transparent path dials at once).
func (s *Server) done(c net.Conn, tl *tunnelLog) {
	defer s.untrackConn(c)
	// The counter moves once the line and the audit record are written, so whoever watches it finds
	// them (the deferred Inc runs before untrackConn).
	defer s.m.total.WithLabelValues(tl.kind, tl.result).Inc()
	if !tl.sent && tl.up == 0 && tl.result != ResultDialRefused && tl.result != ResultDialTimeout {
		return
	}
	now := time.Now()
	d := now.Sub(tl.start)
	if s.cfg.AccessLog != nil {
		s.writeAccessLine(tl, now, d)
	} else if logger := s.cfg.Logger; logger.Enabled() {
		kv := make([]any, 0, 26)
		kv = append(kv, "id", tl.id, "listener", tl.kind, "peer", tl.source, "authority", tl.authority,
			"dialed", tl.dialed, "bytesUp", tl.up, "bytesDown", tl.down, "duration", d.Round(time.Microsecond),
			"result", tl.result)
		if tl.identity != nil {
			kv = append(kv, "user", tl.identity.User)
		}
		if tl.err != nil {
			kv = append(kv, "error", tl.err.Error())
		}
		logger.Info("tunnel", kv...)
	}
	if s.cfg.Audit != nil {
		r := &AuditRecord{Time: tl.start.UTC().Format(time.RFC3339Nano), ID: tl.id, Listener: tl.kind,
			Source: tl.source, Auth: tl.auth, Authority: tl.authority, Dialed: tl.dialed, Status: tl.status,
			BytesUp: tl.up, BytesDown: tl.down, Duration: d.Seconds(), End: tl.result}
		if tl.identity != nil {
			r.User, r.Groups = tl.identity.User, tl.identity.Groups
		}
		if tl.err != nil {
			r.Error = tl.err.Error()
		}
		if err := s.cfg.Audit.Write(r); err != nil {
			s.cfg.Logger.Error(err, "writing the audit log")
		}
	}
}

// headReader hands out the byte that ended the wait for the head, then reads the connection, up to
// the head size limit.
type headReader struct {
	first byte
	has   bool
	err   error // the first read error: bufio.Reader.ReadLine hands out a partial line without it
	limitedReader
}

func (h *headReader) Read(p []byte) (int, error) {
	if h.has && len(p) > 0 {
		p[0], h.has = h.first, false
		return 1, nil
	}
	n, err := h.limitedReader.Read(p)
	if err != nil && h.err == nil {
		h.err = err
	}
	return n, err
}

func (s *Server) handleConnect(c net.Conn) {
	tl := s.newLog(KindConnect, c)
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

	// Wait for the first byte without a buffer: an idle connection costs its goroutine only.
	p := s.addPending(c)
	_ = c.SetReadDeadline(tl.start.Add(s.cfg.HeaderTimeout))
	var req *ConnectRequest
	var first [1]byte
	n, err := c.Read(first[:])
	br := readerPool.Get().(*bufio.Reader)
	release := func() {
		if br != nil {
			br.Reset(nil)
			readerPool.Put(br)
			br = nil
		}
	}
	defer release()
	if n == 1 {
		tl.sent = true
		hr := &headReader{first: first[0], has: true, limitedReader: limitedReader{r: c, n: int64(s.cfg.MaxHeaderBytes) - 1}}
		br.Reset(hr)
		req, err = ParseConnectRequest(br)
		if err != nil && errors.Is(hr.err, os.ErrDeadlineExceeded) {
			// A line cut by the deadline may have been parsed as if complete: the deadline is the
			// reason, not the malformed text.
			err = fmt.Errorf("reading the request head: %w", hr.err)
		}
	} else if err == nil {
		err = io.ErrUnexpectedEOF
	}
	s.removePending(p)
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
			tl.status = re.Status
			s.reject(c, re.Status, re.Reason, "Allow: CONNECT")
		case errors.Is(err, errHeadTooLarge):
			tl.result, tl.status = ResultBadRequest, http.StatusBadRequest
			s.reject(c, http.StatusBadRequest, fmt.Sprintf("request head larger than %d bytes", s.cfg.MaxHeaderBytes))
		case errors.Is(err, os.ErrDeadlineExceeded):
			switch p.why.Load() {
			case interruptDrain:
				tl.result, tl.status = ResultDrainRefused, http.StatusServiceUnavailable
				s.reject(c, tl.status, "the proxy is shutting down")
			case interruptEvict:
				tl.result, tl.status = ResultEvicted, http.StatusRequestTimeout
				s.reject(c, tl.status, "request head not received in time")
			default:
				tl.result, tl.status = ResultHeaderTimeout, http.StatusRequestTimeout
				s.reject(c, tl.status, "request head not received in time")
			}
		default:
			tl.result = ResultClientGone
			if !tl.sent {
				tl.result = ResultNoRequest
			}
			c.Close()
		}
		return
	}
	tl.authority = req.Authority
	_ = c.SetReadDeadline(time.Time{})

	if s.isDraining() {
		release()
		tl.result, tl.status = ResultDrainRefused, http.StatusServiceUnavailable
		s.reject(c, tl.status, "the proxy is shutting down")
		return
	}
	// Authenticate before taking a tunnel slot: a review can take up to --auth-timeout, and clients
	// without a valid token must not hold the slots that clients with one need (the reviews of
	// unseen tokens are bounded by the Authenticator itself).
	if s.cfg.Auth != nil {
		if !s.authenticate(c, req, tl) {
			release()
			return
		}
	}
	if !s.acquire() {
		release()
		tl.result, tl.status = ResultOverCapacity, http.StatusServiceUnavailable
		s.reject(c, http.StatusServiceUnavailable, "too many tunnels")
		return
	}
	acquired = true

	target := s.cfg.Upstream
	if t, ok := s.cfg.Allow.Match(req.Host, req.Port); ok {
		target = t
	}
	tl.dialed = target
	up, status, err := s.dial(target)
	if err != nil {
		release()
		tl.err, tl.status = err, status
		tl.result = ResultDialRefused
		if status == http.StatusGatewayTimeout {
			tl.result = ResultDialTimeout
		}
		if s.ctx.Err() != nil {
			tl.result = ResultDrained // cut by the end of the grace period
		}
		// The client learns the status, never the address or errno: those would map what lies
		// behind the proxy. The details are in the log line and the metrics.
		s.reject(c, status, upstreamReason(status))
		return
	}
	tl.status = http.StatusOK
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

// authenticate runs --auth for req and answers a refusal itself; it reports whether to go on.
func (s *Server) authenticate(c net.Conn, req *ConnectRequest, tl *tunnelLog) bool {
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.AuthTimeout)
	defer cancel()
	id, err := s.cfg.Auth.Authenticate(ctx, req)
	if err == nil {
		tl.identity, tl.auth = id, AuthAllowed
		s.m.auth.WithLabelValues(AuthAllowed).Inc()
		return true
	}
	tl.err = err
	var ae *AuthError
	switch {
	case errors.As(err, &ae) && ae.Status == http.StatusProxyAuthRequired:
		tl.auth, tl.result, tl.status = AuthUnauthenticated, ResultUnauthenticated, ae.Status
		var hdrs []string
		for _, ch := range s.cfg.Auth.Challenges() {
			hdrs = append(hdrs, "Proxy-Authenticate: "+ch)
		}
		s.reject(c, ae.Status, "proxy authentication required: send Proxy-Authorization: Bearer <token>", hdrs...)
	case errors.As(err, &ae) && ae.Status == http.StatusForbidden:
		tl.identity = ae.Identity
		tl.auth, tl.result, tl.status = AuthForbidden, ResultForbidden, ae.Status
		s.reject(c, ae.Status, "not allowed to open this tunnel")
	case s.ctx.Err() != nil:
		// Cut by the end of the grace period: the connection is already closed.
		tl.auth, tl.result, tl.status = AuthUnavailable, ResultDrained, http.StatusServiceUnavailable
		c.Close()
	default:
		tl.auth, tl.result, tl.status = AuthUnavailable, ResultAuthUnavailable, http.StatusServiceUnavailable
		s.reject(c, tl.status, "authentication is unavailable, try again later")
	}
	s.m.auth.WithLabelValues(tl.auth).Inc()
	return false
}

func upstreamReason(status int) string {
	switch status {
	case http.StatusGatewayTimeout:
		return "upstream connection timed out"
	case http.StatusForbidden:
		return "the upstream proxy refused the tunnel"
	case http.StatusTooManyRequests, http.StatusServiceUnavailable:
		return "the upstream proxy is unavailable, try again later"
	default:
		return "upstream connection failed"
	}
}

func (s *Server) handleTCP(c net.Conn) {
	tl := s.newLog(KindTCP, c)
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

// dial connects to target, and says which status a failure maps to (see dialStatus).
func (s *Server) dial(target string) (net.Conn, int, error) {
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.DialTimeout)
	defer cancel()
	start := time.Now()
	c, err := s.dialer.DialContext(ctx, "tcp", target)
	if target == s.cfg.Upstream {
		s.upstream.record(err, time.Now())
	}
	if err != nil {
		s.m.dialTime.WithLabelValues("error").Observe(time.Since(start).Seconds())
		return nil, dialStatus(err), err
	}
	s.m.dialTime.WithLabelValues("ok").Observe(time.Since(start).Seconds())
	return c, http.StatusOK, nil
}

// dialStatus maps a failed dial to our answer: 504 for a timeout, else 502. A refusal by the
// --upstream-proxy keeps its meaning where it has one for our client too (403 forbidden, 429 and
// 503 try later, 502, 504); its other answers (a 407 for credentials we don't have, a 400) are our
// gateway's failure: 502.
func dialStatus(err error) int {
	var ce *tunnel.ConnectError
	if errors.As(err, &ce) {
		switch ce.StatusCode {
		case http.StatusForbidden, http.StatusTooManyRequests, http.StatusBadGateway,
			http.StatusServiceUnavailable, http.StatusGatewayTimeout:
			return ce.StatusCode
		}
		return http.StatusBadGateway
	}
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, syscall.ETIMEDOUT) || (errors.As(err, &ne) && ne.Timeout()) {
		return http.StatusGatewayTimeout
	}
	return http.StatusBadGateway
}

// reject answers status with a short generic reason and closes c gracefully: half-close, then drain
// what the client still sends for a moment, so the answer is not destroyed by a reset. headers are
// extra "Name: value" lines.
func (s *Server) reject(c net.Conn, status int, reason string, headers ...string) {
	body := reason + "\n"
	head := "HTTP/1.1 " + strconv.Itoa(status) + " " + http.StatusText(status) + "\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\nConnection: close\r\n"
	for _, h := range headers {
		if status == http.StatusMethodNotAllowed || !strings.HasPrefix(h, "Allow:") {
			head += h + "\r\n"
		}
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
