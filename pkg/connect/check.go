package connect

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/apiproxy/apiproxy/pkg/hops"
)

// Check opens one tunnel and completes a TLS handshake with the API server through it, verifying the
// server's certificate for serverName with the target's CA and presenting the target's client
// certificate, so a broken path fails before any client uses it. Errors say which hop failed and
// what to do (package hops, shared with `kubectl apiproxy check`).
func Check(ctx context.Context, dial func(context.Context) (net.Conn, error), t *Target, serverName, proxy string) error {
	tlsCfg, err := TLSConfig(t, serverName)
	if err != nil {
		return err
	}
	conn, err := dial(ctx)
	if err != nil {
		return DescribeDialError(err, proxy)
	}
	defer conn.Close()
	tc := tls.Client(conn, tlsCfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return hops.TLSError(err, proxy, tlsCfg.ServerName, t.ContextName)
	}
	return nil
}

// TLSConfig is the target's client TLS configuration (its CA, its client certificate) verifying the
// API server for serverName (default: the target's ServerName).
func TLSConfig(t *Target, serverName string) (*tls.Config, error) {
	restCfg, err := clientcmd.NewDefaultClientConfig(*t.Config, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("context %q: %w", t.ContextName, err)
	}
	tlsCfg, err := rest.TLSConfigFor(restCfg)
	if err != nil {
		return nil, fmt.Errorf("context %q: TLS settings: %w", t.ContextName, err)
	}
	if tlsCfg == nil {
		return nil, fmt.Errorf("context %q: server %s is not https: the proxy tunnels TLS end to end", t.ContextName, t.Server())
	}
	if serverName == "" {
		serverName = t.ServerName()
	}
	tlsCfg.ServerName = serverName
	return tlsCfg, nil
}

// DescribeDialError turns a tunnel dial failure into a message naming the proxy and the hop. A
// missing token (the proxy asked for one and the kubeconfig user has none) is its own message.
func DescribeDialError(err error, proxy string) error {
	var nt *NoTokenError
	if errors.As(err, &nt) {
		return nt
	}
	return hops.DialError(err, proxy)
}
