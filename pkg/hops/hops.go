// Package hops names what failed on the path from a client to an API server through its CONNECT
// proxy, and what to do about it. `connect` (before it serves) and `check` (hop by hop) report the
// same failures with the same words from here.
package hops

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"syscall"

	"github.com/apiproxy/apiproxy/pkg/tunnel"
)

// The hops of the path past the address computation, in order.
const (
	TCP     = "tcp"
	Connect = "connect"
	TLS     = "tls"
	Readyz  = "readyz"
	Access  = "access"
)

// TunnelRoleJSON is the ClusterRole that grants tunnels through an authenticating proxy, for
// `kubectl apply -f -`. `kubectl create clusterrole --resource=tunnels.apiproxy.io` refuses it:
// kubectl checks resources against discovery, and no API serves tunnels (only RBAC names them).
const TunnelRoleJSON = `{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRole","metadata":{"name":"apiproxy-tunnel"},"rules":[{"apiGroups":["apiproxy.io"],"resources":["tunnels"],"verbs":["create"]}]}`

// Failure is a failed hop: what happened, and the fix.
type Failure struct {
	Hop string
	Msg string
	Fix string
	Err error
}

func (f *Failure) Error() string {
	s := f.Msg
	if f.Fix != "" {
		s += ": " + f.Fix
	}
	if f.Err != nil {
		s += " (" + f.Err.Error() + ")"
	}
	return s
}

func (f *Failure) Unwrap() error { return f.Err }

// DialError describes a failed tunnel dial (TCP to the proxy, then CONNECT) through proxy.
func DialError(err error, proxy string) *Failure {
	var ce *tunnel.ConnectError
	if errors.As(err, &ce) {
		return ConnectAnswer(ce.StatusCode, ce.Status, proxy)
	}
	if errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		// TCP was accepted, then closed before any answer: what agent proxy does to a client
		// outside --allow-source (a reset, before reading anything).
		return &Failure{Hop: Connect, Msg: fmt.Sprintf("proxy %s closed the connection without answering the CONNECT", proxy), Fix: RefusedSourceFix, Err: err}
	}
	return TCPError(err, proxy)
}

// TCPError describes a TCP connection to the proxy that failed.
func TCPError(err error, proxy string) *Failure {
	if errors.Is(err, context.DeadlineExceeded) {
		return &Failure{Hop: TCP, Msg: fmt.Sprintf("proxy %s did not answer in time", proxy),
			Fix: "is it reachable from this machine (through the fabric)? raise --dial-timeout if the path is slow", Err: err}
	}
	if errors.Is(err, syscall.ECONNRESET) {
		// On a short path the proxy's reset can beat the end of the TCP handshake.
		return &Failure{Hop: TCP, Msg: fmt.Sprintf("proxy %s reset the connection at once", proxy), Fix: RefusedSourceFix, Err: err}
	}
	return &Failure{Hop: TCP, Msg: fmt.Sprintf("cannot reach proxy %s from this machine", proxy),
		Fix: "is the proxy running and listening on that port (kubectl apiproxy status; --proxy-port), and does the fabric route the address here?", Err: err}
}

// RefusedSourceFix is the fix of a connection the proxy closed unanswered (a source outside its
// --allow-source).
const RefusedSourceFix = "this machine's source address is probably not in the proxy's --allow-source (install --allow-source CIDR, or the peers of its NetworkPolicy); the proxy logs each refused source"

// ConnectAnswer explains a CONNECT the proxy answered with something other than 200.
func ConnectAnswer(code int, status, proxy string) *Failure {
	f := &Failure{Hop: Connect, Msg: fmt.Sprintf("proxy %s answered the CONNECT with %q", proxy, status)}
	switch code {
	case http.StatusProxyAuthRequired:
		f.Fix = "the proxy authenticates tunnels (agent proxy --auth tokenreview) and got no token or rejected the token it got (expired, or from another cluster?): pass a valid one with --proxy-token, e.g. a ServiceAccount token of the proxy's cluster"
	case http.StatusForbidden:
		f.Fix = "the proxy refused this client: the token's user may not create tunnels.apiproxy.io in the proxy's cluster: there, bind it to the role apiproxy-tunnel: kubectl create clusterrolebinding NAME --clusterrole=apiproxy-tunnel --serviceaccount=NAMESPACE:NAME (or --user/--group). kubectl apiproxy install --auth tokenreview created that role; for a proxy run without install, create it once: echo '" + TunnelRoleJSON + "' | kubectl apply -f -"
	case http.StatusBadGateway:
		f.Fix = "it reached the proxy, but the API server refused the proxy's connection: check the proxy's --upstream and its logs"
	case http.StatusGatewayTimeout:
		f.Fix = "it reached the proxy, but the proxy's dial to the API server timed out: check the proxy's --upstream, the API server, and the proxy's logs"
	case http.StatusServiceUnavailable:
		f.Fix = "the proxy is overloaded (--max-tunnels), or could not check your token with its own API server (it fails closed): retry, then check the proxy's logs"
	case http.StatusMethodNotAllowed, http.StatusBadRequest:
		f.Fix = "whatever listens there is not an apiproxy CONNECT proxy: check the address and --proxy-port"
	default:
		f.Fix = "the proxy could not open the tunnel to the API server: check the proxy's --upstream and its logs"
	}
	return f
}

// TLSError describes a failed TLS handshake with the API server through proxy, verified for
// serverName with the CA of context.
func TLSError(err error, proxy, serverName, context string) *Failure {
	var hostErr x509.HostnameError
	if errors.As(err, &hostErr) {
		return &Failure{Hop: TLS, Msg: fmt.Sprintf("the API server reached through proxy %s presents a certificate not valid for %q", proxy, serverName),
			Fix: "pass --tls-server-name with a name the certificate carries", Err: err}
	}
	var unknown x509.UnknownAuthorityError
	if errors.As(err, &unknown) {
		return &Failure{Hop: TLS, Msg: fmt.Sprintf("the server reached through proxy %s is not signed by context %q's certificate authority", proxy, context),
			Fix: fmt.Sprintf("is the proxy's upstream the API server of %q?", context), Err: err}
	}
	return &Failure{Hop: TLS, Msg: fmt.Sprintf("TLS handshake with the API server through proxy %s failed", proxy),
		Fix: "is the proxy's upstream an API server (https)?", Err: err}
}
