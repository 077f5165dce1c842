package testnet

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// AuthProxy is a CONNECT proxy for tests that demands a token the way `agent proxy --auth
// tokenreview` does: "Proxy-Authorization: Bearer TOKEN", or Basic with TOKEN as the password (what
// client-go sends for a proxy-url with user info). Without it: 407 with Proxy-Authenticate; with a
// wrong one: 407 too. Every accepted tunnel goes to Upstream, whatever authority it names.
type AuthProxy struct {
	Addr     string
	Token    string
	Upstream string

	mu   sync.Mutex
	seen []string // per CONNECT: "none", "bearer", "basic" or "bad"
}

// StartAuthProxy serves an AuthProxy on 127.0.0.1 until the test ends.
func StartAuthProxy(t testing.TB, token, upstream string) *AuthProxy {
	t.Helper()
	p := &AuthProxy{Token: token, Upstream: upstream}
	p.Addr = Serve(t, "tcp", "127.0.0.1:0", p.handle)
	return p
}

// Seen returns how each CONNECT so far authenticated, in order, and forgets them.
func (p *AuthProxy) Seen() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := p.seen
	p.seen = nil
	return out
}

func (p *AuthProxy) check(h string) string {
	scheme, cred, _ := strings.Cut(h, " ")
	switch {
	case h == "":
		return "none"
	case strings.EqualFold(scheme, "Bearer") && cred == p.Token:
		return "bearer"
	case strings.EqualFold(scheme, "Basic"):
		b, err := base64.StdEncoding.DecodeString(cred)
		if _, pass, ok := strings.Cut(string(b), ":"); err == nil && ok && pass == p.Token {
			return "basic"
		}
	}
	return "bad"
}

func (p *AuthProxy) handle(c net.Conn) {
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	if req.Method != http.MethodConnect {
		_, _ = io.WriteString(c, "HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
		return
	}
	how := p.check(req.Header.Get("Proxy-Authorization"))
	p.mu.Lock()
	p.seen = append(p.seen, how)
	p.mu.Unlock()
	if how != "bearer" && how != "basic" {
		_, _ = io.WriteString(c, "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Bearer realm=\"apiproxy\"\r\nProxy-Authenticate: Basic realm=\"apiproxy\"\r\nContent-Length: 0\r\n\r\n")
		return
	}
	up, err := net.DialTimeout("tcp", p.Upstream, 10*time.Second)
	if err != nil {
		_, _ = fmt.Fprintf(c, "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
		return
	}
	defer up.Close()
	_, _ = io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n")
	go func() {
		_, _ = io.Copy(up, br) // what the client sent after the head, then the rest
		if tc, ok := up.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
	}()
	// The tunnel ends when the upstream does: returning closes both connections.
	_, _ = io.Copy(c, up)
}
