package connect

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/apiproxy/apiproxy/pkg/tunnel"
)

// Check opens one tunnel and completes a TLS handshake with the API server through it, verifying the
// server's certificate for serverName with the target's CA and presenting the target's client
// certificate, so a broken path fails before any client uses it. Errors say which hop failed and
// what to do.
func Check(ctx context.Context, dial func(context.Context) (net.Conn, error), t *Target, serverName, proxy string) error {
	restCfg, err := clientcmd.NewDefaultClientConfig(*t.Config, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return fmt.Errorf("context %q: %w", t.ContextName, err)
	}
	tlsCfg, err := rest.TLSConfigFor(restCfg)
	if err != nil {
		return fmt.Errorf("context %q: TLS settings: %w", t.ContextName, err)
	}
	if tlsCfg == nil {
		return fmt.Errorf("context %q: server %s is not https: the proxy tunnels TLS end to end", t.ContextName, t.Server())
	}
	if serverName == "" {
		serverName = t.ServerName()
	}
	tlsCfg.ServerName = serverName

	conn, err := dial(ctx)
	if err != nil {
		return DescribeDialError(err, proxy)
	}
	defer conn.Close()
	tc := tls.Client(conn, tlsCfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		var hostErr x509.HostnameError
		if errors.As(err, &hostErr) {
			return fmt.Errorf("the API server reached through proxy %s presents a certificate not valid for %q (%v): pass --tls-server-name with a name the certificate carries", proxy, serverName, err)
		}
		var unknown x509.UnknownAuthorityError
		if errors.As(err, &unknown) {
			return fmt.Errorf("the server reached through proxy %s is not signed by context %q's certificate authority: is the proxy's upstream the API server of %q? (%v)", proxy, t.ContextName, t.ContextName, err)
		}
		return fmt.Errorf("TLS handshake with the API server through proxy %s failed: %w", proxy, err)
	}
	return nil
}

// DescribeDialError turns a tunnel dial failure into a message naming the proxy and the hop.
func DescribeDialError(err error, proxy string) error {
	var ce *tunnel.ConnectError
	var nt *NoTokenError
	if errors.As(err, &nt) {
		return nt
	}
	if errors.As(err, &ce) {
		if msg := describeAuthStatus(ce); msg != "" {
			return fmt.Errorf("proxy %s %s", proxy, msg)
		}
		return fmt.Errorf("proxy %s answered the CONNECT with %q: it reached the proxy, but the proxy could not open the tunnel to the API server (check the proxy's --upstream and its logs)", proxy, ce.Status)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("proxy %s did not answer in time: is it reachable from this machine (through the fabric)? raise --dial-timeout if the path is slow: %w", proxy, err)
	}
	return fmt.Errorf("cannot reach proxy %s from this machine: %w", proxy, err)
}

// describeAuthStatus explains the answers of a proxy that authenticates tunnels (agent proxy
// --auth tokenreview), or returns "" for other statuses. A 407 that reaches here came back although
// a token was sent (AuthDialer only retries once with it).
func describeAuthStatus(ce *tunnel.ConnectError) string {
	switch ce.StatusCode {
	case 407:
		return fmt.Sprintf("rejected the token (%q): it is not valid for the proxy's cluster (expired, or from another cluster?); pass a valid one with --proxy-token, e.g. a ServiceAccount token of that cluster", ce.Status)
	case 403:
		return fmt.Sprintf("authenticated you but does not let you tunnel (%q): you need \"create\" on \"tunnels\" in API group apiproxy.io in its cluster (kubectl create clusterrole apiproxy-tunnel --verb=create --resource=tunnels.apiproxy.io, and bind it to your user)", ce.Status)
	case 503:
		return fmt.Sprintf("could not check your token (%q): the proxy cannot reach its own API server for the review; try again later or check the proxy's logs", ce.Status)
	}
	return ""
}
