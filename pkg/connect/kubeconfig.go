// Package connect is the client side of `kubectl apiproxy connect`: kubeconfigs that reach a cluster's
// API server through its CONNECT proxy, and a local listener that tunnels every accepted connection
// through that proxy. TLS stays end to end between the client and the API server: the listener and
// the proxy only move bytes.
package connect

import (
	"fmt"
	"net"
	"net/url"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Target is the cluster to reach, taken from the user's kubeconfig: one context, flattened so that
// every certificate is embedded and the result stands alone.
type Target struct {
	ContextName string
	Config      *clientcmdapi.Config // minified to ContextName and flattened
}

// NewTarget extracts contextName ("" = current) from raw, minified and flattened.
func NewTarget(raw clientcmdapi.Config, contextName string) (*Target, error) {
	cfg := raw.DeepCopy()
	if contextName == "" {
		contextName = cfg.CurrentContext
	}
	if contextName == "" {
		return nil, fmt.Errorf("no current context in the kubeconfig: pass --context")
	}
	if _, ok := cfg.Contexts[contextName]; !ok {
		return nil, fmt.Errorf("context %q not found in the kubeconfig", contextName)
	}
	cfg.CurrentContext = contextName
	if err := clientcmdapi.MinifyConfig(cfg); err != nil {
		return nil, fmt.Errorf("context %q: %w", contextName, err)
	}
	if err := clientcmdapi.FlattenConfig(cfg); err != nil {
		return nil, fmt.Errorf("context %q: embedding its certificates: %w", contextName, err)
	}
	return &Target{ContextName: contextName, Config: cfg}, nil
}

func (t *Target) cluster() *clientcmdapi.Cluster {
	return t.Config.Clusters[t.Config.Contexts[t.ContextName].Cluster]
}

// Server is the API server URL of the target context.
func (t *Target) Server() string { return t.cluster().Server }

// Authority is the API server's host:port, the authority a CONNECT names.
func (t *Target) Authority() (string, error) {
	u, err := url.Parse(t.Server())
	if err != nil || u.Host == "" {
		return "", fmt.Errorf("context %q: server %q is not a URL", t.ContextName, t.Server())
	}
	port := u.Port()
	if port == "" {
		port = "443"
	}
	return net.JoinHostPort(u.Hostname(), port), nil
}

// ServerName is the name the API server's certificate is verified against: the context's
// tls-server-name when set, else the host of its server URL.
func (t *Target) ServerName() string {
	if c := t.cluster(); c.TLSServerName != "" {
		return c.TLSServerName
	}
	u, err := url.Parse(t.Server())
	if err != nil {
		return ""
	}
	return u.Hostname()
}

// WithProxyURL returns the target's kubeconfig with proxy-url set: clients that can reach the proxy
// (inside the consumer cluster, through the fabric) use it as is.
func (t *Target) WithProxyURL(proxyURL string) *clientcmdapi.Config {
	cfg := t.Config.DeepCopy()
	cfg.Clusters[cfg.Contexts[t.ContextName].Cluster].ProxyURL = proxyURL
	return cfg
}

// WithListener returns the target's kubeconfig pointed at a local listener; tls-server-name keeps
// the API server's certificate verified against its real name.
func (t *Target) WithListener(listenAddr, tlsServerName string) *clientcmdapi.Config {
	cfg := t.Config.DeepCopy()
	c := cfg.Clusters[cfg.Contexts[t.ContextName].Cluster]
	if tlsServerName == "" {
		tlsServerName = t.ServerName()
	}
	c.TLSServerName = tlsServerName
	c.Server = "https://" + listenAddr
	c.ProxyURL = ""
	return cfg
}

// MergeInto adds the target as context `<name>` (with a cluster of the same name, and the target's
// user under that name too) into dst, which is modified in place.
func MergeInto(dst *clientcmdapi.Config, src *clientcmdapi.Config, srcContext, name string) {
	ctx := src.Contexts[srcContext]
	cluster := src.Clusters[ctx.Cluster].DeepCopy()
	user := src.AuthInfos[ctx.AuthInfo].DeepCopy()
	dst.Clusters[name] = cluster
	dst.AuthInfos[name] = user
	dst.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: name, Namespace: ctx.Namespace}
}

// Serialize renders a kubeconfig as YAML.
func Serialize(cfg *clientcmdapi.Config) ([]byte, error) { return clientcmd.Write(*cfg) }
