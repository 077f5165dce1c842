// Package tunnel holds the client half of HTTP CONNECT tunnels and the byte relay between two
// connections. `agent proxy` uses both (upstream dials through another proxy, and its tunnels), and
// so does `kubectl apiproxy connect` on the client side.
package tunnel

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// ConnectError is a CONNECT that the proxy answered with something other than 2xx.
type ConnectError struct {
	Proxy      string // the proxy's address, as dialed
	Target     string // the authority that was requested
	StatusCode int
	Status     string // the status line's text, e.g. "502 Bad Gateway"
}

func (e *ConnectError) Error() string {
	return fmt.Sprintf("proxy %s refused CONNECT %s: %s", e.Proxy, e.Target, e.Status)
}

// ContextDialer is what dials a TCP connection; *net.Dialer and *Dialer are ContextDialers.
type ContextDialer interface {
	DialContext(ctx context.Context, network, addr string) (net.Conn, error)
}

// Dialer opens CONNECT tunnels through one proxy.
type Dialer struct {
	// Proxy is the proxy's address: "host:port" or "http://host:port".
	Proxy string
	// Timeout bounds the TCP dial plus the CONNECT handshake when the context has no earlier deadline.
	// Zero means only the context bounds it.
	Timeout time.Duration
	// Forward dials the proxy itself; nil means a net.Dialer with 30s TCP keepalive.
	Forward ContextDialer
	// Header is sent with every CONNECT (e.g. Proxy-Authorization); may be nil.
	Header http.Header
	// Authorization, when set and Header has no Proxy-Authorization, gives that header's value for
	// each CONNECT (e.g. a CredentialsFile's, re-read when the Secret rotates). Without either, the
	// user info of Proxy is sent (ProxyAuthorization).
	Authorization func() (string, error)
}

// DialConnect opens a tunnel to target ("host:port") through the HTTP proxy at proxyAddr
// ("host:port" or "http://host:port"), bounded by ctx.
func DialConnect(ctx context.Context, proxyAddr, target string) (net.Conn, error) {
	return (&Dialer{Proxy: proxyAddr}).DialContext(ctx, "tcp", target)
}

// ProxyHostPort turns "host:port" or "http://host:port" into "host:port". Only plain-HTTP proxies are
// supported: the tunnel carries TLS end to end anyway.
func ProxyHostPort(proxy string) (string, error) {
	hp := proxy
	if strings.Contains(proxy, "://") {
		u, err := url.Parse(proxy)
		if err != nil {
			// url.Error quotes the whole URL, credentials included.
			return "", fmt.Errorf("invalid proxy URL %q: %w", Redact(proxy), errors.Unwrap(err))
		}
		if u.Scheme != "http" {
			return "", fmt.Errorf("invalid proxy URL %q: scheme %q is not supported, use http://HOST:PORT", Redact(proxy), u.Scheme)
		}
		if u.Path != "" && u.Path != "/" {
			return "", fmt.Errorf("invalid proxy URL %q: a proxy URL has no path", Redact(proxy))
		}
		hp = u.Host
		if u.Port() == "" {
			hp = net.JoinHostPort(u.Hostname(), "80")
		}
	}
	host, port, err := net.SplitHostPort(hp)
	if err != nil || port == "" {
		return "", fmt.Errorf("invalid proxy address %q: want HOST:PORT or http://HOST:PORT", Redact(proxy))
	}
	return net.JoinHostPort(host, port), nil
}

// DialContext implements the usual dial signature, so a Dialer can stand in for a net.Dialer. Only
// TCP networks are supported.
func (d *Dialer) DialContext(ctx context.Context, network, target string) (net.Conn, error) {
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return nil, fmt.Errorf("CONNECT via proxy %s: network %q is not supported", Redact(d.Proxy), network)
	}
	proxy, err := ProxyHostPort(d.Proxy)
	if err != nil {
		return nil, err
	}
	hdr, err := d.header()
	if err != nil {
		return nil, fmt.Errorf("CONNECT via proxy %s: %w", proxy, err)
	}
	if d.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d.Timeout)
		defer cancel()
	}
	var nd ContextDialer = &net.Dialer{KeepAlive: 30 * time.Second}
	if d.Forward != nil {
		nd = d.Forward
	}
	conn, err := nd.DialContext(ctx, "tcp", proxy)
	if err != nil {
		return nil, fmt.Errorf("dial proxy %s: %w", proxy, err)
	}
	c, err := handshake(ctx, conn, proxy, target, hdr)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// header is what the CONNECT carries: Header, with Proxy-Authorization from Authorization or the
// proxy URL's user info when Header has none.
func (d *Dialer) header() (http.Header, error) {
	if d.Header.Get("Proxy-Authorization") != "" {
		return d.Header, nil
	}
	var auth string
	var err error
	if d.Authorization != nil {
		auth, err = d.Authorization()
	} else {
		auth, err = ProxyAuthorization(d.Proxy)
	}
	if err != nil || auth == "" {
		return d.Header, err
	}
	h := d.Header.Clone()
	if h == nil {
		h = http.Header{}
	}
	h.Set("Proxy-Authorization", auth)
	return h, nil
}

func handshake(ctx context.Context, conn net.Conn, proxy, target string, hdr http.Header) (net.Conn, error) {
	// The handshake obeys ctx: its deadline directly, its cancellation by expiring the deadline now.
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	var b strings.Builder
	b.WriteString("CONNECT " + target + " HTTP/1.1\r\nHost: " + target + "\r\n")
	for k, vs := range hdr {
		for _, v := range vs {
			b.WriteString(k + ": " + v + "\r\n")
		}
	}
	b.WriteString("\r\n")
	if _, err := conn.Write([]byte(b.String())); err != nil {
		return nil, handshakeErr(ctx, proxy, target, err)
	}
	br := bufio.NewReaderSize(conn, 1024)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		return nil, handshakeErr(ctx, proxy, target, err)
	}
	// Any 2xx establishes the tunnel (RFC 9110, 9.3.6); the rest is a refusal, kept with its status
	// so that the caller can map it faithfully.
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		resp.Body.Close()
		return nil, &ConnectError{Proxy: proxy, Target: target, StatusCode: resp.StatusCode, Status: resp.Status}
	}
	if !stop() {
		// ctx ended while we were finishing: the deadline may already be in the past.
		return nil, handshakeErr(ctx, proxy, target, ctx.Err())
	}
	_ = conn.SetDeadline(time.Time{})
	if n := br.Buffered(); n > 0 {
		// The proxy (or the target behind it) already sent bytes after the 200: keep them.
		rest, _ := br.Peek(n)
		return &bufferedConn{Conn: conn, buf: append([]byte(nil), rest...)}, nil
	}
	return conn, nil
}

func handshakeErr(ctx context.Context, proxy, target string, err error) error {
	var ne net.Error
	_, hasDeadline := ctx.Deadline()
	switch {
	case ctx.Err() != nil:
		err = ctx.Err()
	case hasDeadline && errors.As(err, &ne) && ne.Timeout():
		// The connection's deadline (ctx's) fired a hair before ctx's own timer.
		err = context.DeadlineExceeded
	}
	return fmt.Errorf("CONNECT %s via proxy %s: %w", target, proxy, err)
}

// bufferedConn replays bytes read past the CONNECT response before reading the connection again.
type bufferedConn struct {
	net.Conn
	buf []byte
}

func (c *bufferedConn) Read(p []byte) (int, error) {
	if len(c.buf) > 0 {
		n := copy(p, c.buf)
		c.buf = c.buf[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// CloseWrite half-closes the underlying connection when it supports it.
func (c *bufferedConn) CloseWrite() error { return closeWrite(c.Conn) }

// NetConn returns the underlying connection (like tls.Conn.NetConn).
func (c *bufferedConn) NetConn() net.Conn { return c.Conn }

func closeWrite(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}
