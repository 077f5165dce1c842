package connect

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/transport"

	"github.com/apiproxy/apiproxy/pkg/tunnel"
)

// ProxyUser is the user name of a proxy-url that carries a token as its password: client-go sends
// it as "Proxy-Authorization: Basic base64(apiproxy:TOKEN)", which the proxy accepts like a Bearer
// token.
const ProxyUser = "apiproxy"

// ProxyCredentials are the token connect shows a proxy that asks for one (407): --proxy-token
// when given, else the token of the target context's user, obtained through client-go's own
// transport (a token, a tokenFile it re-reads, an exec or auth-provider plugin it runs, caches and
// refreshes), never a copy of that logic.
type ProxyCredentials struct {
	// Override is --proxy-token.
	Override string
	// Authorization is a whole Proxy-Authorization value from the credentials of --proxy-url
	// (tunnel.ProxyAuthorization): sent from the first CONNECT on, instead of any token.
	Authorization string
	// Config is the target context's client configuration (its user's credentials).
	Config *rest.Config
	// Context names that context in messages.
	Context string
	// Flag names the flag that overrides the token in messages ("--proxy-token" when empty).
	Flag string

	once sync.Once
	rt   http.RoundTripper
	err  error
}

// NoTokenError: the proxy wants a token and the kubeconfig user has none (a client certificate
// cannot be shown to a proxy: TLS goes through it end to end).
type NoTokenError struct {
	Context, Proxy string
	Flag           string // the flag that gives a token ("--proxy-token" when empty)
	Err            error  // why the user's credentials gave no token, if they failed
}

func (e *NoTokenError) Error() string {
	why := "its user has no bearer token (a client certificate only proves who you are to the API server: TLS goes through the proxy end to end)"
	if e.Err != nil {
		why = fmt.Sprintf("its user's token could not be obtained: %v", e.Err)
	}
	flag := tokenFlag(e.Flag)
	return fmt.Sprintf("proxy %s requires a token (407 Proxy Authentication Required), and context %q cannot give one: %s. Pass one with %s TOKEN, e.g. a ServiceAccount's: %s \"$(kubectl create token NAME -n NAMESPACE)\"",
		e.Proxy, e.Context, why, flag, flag)
}

func (e *NoTokenError) Unwrap() error { return e.Err }

// tokenFlag is the flag that gives a proxy token: flag, or connect's and check's --proxy-token.
func tokenFlag(flag string) string {
	if flag == "" {
		return "--proxy-token"
	}
	return flag
}

// Describe names the token sent, for messages (never the token itself).
func (p *ProxyCredentials) Describe() string {
	if p.Authorization != "" {
		return "the --proxy-url's credentials"
	}
	if p.Override != "" {
		return "the " + tokenFlag(p.Flag) + " token"
	}
	return fmt.Sprintf("context %q's user's token", p.Context)
}

// Explicit says that the user gave credentials (--proxy-token or in --proxy-url): they are sent
// from the first CONNECT on, not only after a 407.
func (p *ProxyCredentials) Explicit() bool {
	return p != nil && (p.Override != "" || p.Authorization != "")
}

// Token returns the token to send: Override, else the user's bearer token ("" with no error when
// the user has none).
func (p *ProxyCredentials) Token(ctx context.Context) (string, error) {
	if p.Override != "" {
		return p.Override, nil
	}
	if p.Config == nil {
		return "", nil
	}
	p.once.Do(func() {
		var tc *transport.Config
		if tc, p.err = p.Config.TransportConfig(); p.err != nil {
			return
		}
		p.rt, p.err = transport.HTTPWrappersForConfig(tc, authorizationCapture{})
	})
	if p.err != nil {
		return "", p.err
	}
	// A request that never leaves this process: the wrappers add the user's Authorization header
	// (running the exec plugin when its cached credential expired) and the capture returns it.
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://apiproxy.invalid/", nil)
	if err != nil {
		return "", err
	}
	resp, err := p.rt.RoundTrip(req)
	if err != nil {
		return "", err
	}
	_ = resp.Body.Close()
	token, ok := strings.CutPrefix(resp.Header.Get(capturedHeader), "Bearer ")
	if !ok {
		return "", nil // Basic or no Authorization: nothing a proxy can check as a token
	}
	return token, nil
}

const capturedHeader = "X-Apiproxy-Captured-Authorization"

// authorizationCapture is the innermost RoundTripper of the credential wrappers: it answers every
// request itself, echoing the Authorization header it was given.
type authorizationCapture struct{}

func (authorizationCapture) RoundTrip(req *http.Request) (*http.Response, error) {
	h := http.Header{}
	h.Set(capturedHeader, req.Header.Get("Authorization"))
	return &http.Response{StatusCode: http.StatusOK, Status: "200 OK", Header: h, Body: io.NopCloser(strings.NewReader("")), Request: req}, nil
}

// ProxyURLWithToken is proxyURL ("http://host:port") with the token as the password of user
// ProxyUser, for a kubeconfig's proxy-url.
func ProxyURLWithToken(proxyURL, token string) (string, error) {
	u, err := url.Parse(proxyURL)
	if err != nil {
		return "", err
	}
	u.User = url.UserPassword(ProxyUser, token)
	return u.String(), nil
}

// AuthDialer opens CONNECT tunnels like Dialer, adding "Proxy-Authorization: Bearer TOKEN" from
// Creds once the proxy has asked for it with a 407 (from the first CONNECT on with --proxy-token).
// The token is asked for again on each dial, so an exec plugin's refreshed token is used.
type AuthDialer struct {
	Dialer tunnel.Dialer // its Header is replaced
	Creds  *ProxyCredentials
	// Required is set after the first 407: later dials send the token at once.
	Required atomic.Bool
}

// DialContext opens a tunnel to target.
func (a *AuthDialer) DialContext(ctx context.Context, network, target string) (net.Conn, error) {
	send := a.Creds.Explicit() || a.Creds != nil && a.Required.Load()
	conn, err := a.dial(ctx, network, target, send)
	var ce *tunnel.ConnectError
	if send || !errors.As(err, &ce) || ce.StatusCode != http.StatusProxyAuthRequired || a.Creds == nil {
		return conn, err
	}
	a.Required.Store(true)
	return a.dial(ctx, network, target, true)
}

func (a *AuthDialer) dial(ctx context.Context, network, target string, withToken bool) (net.Conn, error) {
	d := a.Dialer
	d.Header = nil
	if withToken && a.Creds.Authorization != "" {
		d.Header = http.Header{"Proxy-Authorization": {a.Creds.Authorization}}
	} else if withToken {
		token, err := a.Creds.Token(ctx)
		if err != nil || token == "" {
			return nil, &NoTokenError{Context: a.Creds.Context, Proxy: a.Dialer.Proxy, Flag: a.Creds.Flag, Err: err}
		}
		d.Header = http.Header{"Proxy-Authorization": {"Bearer " + token}}
	}
	return d.DialContext(ctx, network, target)
}
