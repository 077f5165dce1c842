package realnode

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// RegistryPort is the port of the node's OCI registry, on the node IP.
const RegistryPort = 5000

// The registry is the CNCF distribution registry (hack/test-assets.sh builds it into the node
// directory). It listens on the node IP only, which lives on the bridge the harness made, serves
// TLS with a certificate of its own CA, and keeps its blobs under StateDir, so Teardown removes them
// with everything else. containerd trusts that CA the way a user configures a private registry:
// config_path of the CRI image service, and certs.d/HOST:PORT/hosts.toml naming the CA.
func registryDir(parts ...string) string { return statePath(append([]string{"registry"}, parts...)...) }

// certsDir is containerd's registry host configuration (config_path).
func certsDir() string { return statePath("containerd", "certs.d") }

// writeRegistryConfig writes the registry's configuration and containerd's hosts.toml for it.
func writeRegistryConfig(c *Cluster) error {
	secret := make([]byte, 16)
	if _, err := rand.Read(secret); err != nil {
		return err
	}
	p := pki{dir: statePath("pki")}
	files := map[string]string{
		registryDir("config.yml"): fmt.Sprintf(registryConfig, registryDir("data"), c.Registry, hex.EncodeToString(secret),
			p.path("registry.crt"), p.path("registry.key")),
		filepath.Join(certsDir(), c.Registry, "hosts.toml"): fmt.Sprintf(registryHostsTOML, c.Registry, c.Registry, c.RegistryCA),
	}
	for path, content := range files {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return err
		}
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			return err
		}
	}
	return nil
}

// registryCmd runs `registry serve` with an environment of its own: no REGISTRY_* variable of this
// machine can override the file, and OTEL_TRACES_EXPORTER=none stops the trace exporter that would
// otherwise send to an OTLP collector on localhost:4318.
func (c *Cluster) registryCmd() *exec.Cmd {
	cmd := exec.Command(filepath.Join(c.nodeAssets, "registry"), "serve", registryDir("config.yml"))
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=" + registryDir(), "OTEL_TRACES_EXPORTER=none"}
	return cmd
}

// waitRegistry waits until the registry answers the API version check (GET /v2/) over TLS.
func (c *Cluster) waitRegistry(ctx context.Context) error {
	rt, err := c.RegistryTransport()
	if err != nil {
		return err
	}
	client := &http.Client{Transport: rt, Timeout: 2 * time.Second}
	return waitFor(ctx, "registry https://"+c.Registry+"/v2/", func() error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+c.Registry+"/v2/", nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET /v2/: %s", resp.Status)
		}
		return nil
	})
}

// RegistryTransport is an HTTP transport that trusts the registry's CA (and nothing else) and never
// goes through a proxy of the environment: for pushing to and reading from the node's registry.
func (c *Cluster) RegistryTransport() (http.RoundTripper, error) {
	ca, err := os.ReadFile(c.RegistryCA)
	if err != nil {
		return nil, fmt.Errorf("registry CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("registry CA %s holds no certificate", c.RegistryCA)
	}
	return &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout: 5 * time.Second,
		ForceAttemptHTTP2:   true,
	}, nil
}

// PushIndex pushes a multi-platform image index, with every image and blob it holds, to the node's
// registry as repoTag ("apiproxy/agent:v1.2.3", without the registry host) and returns the reference
// pinned by digest that pods name: "HOST:PORT/apiproxy/agent:v1.2.3@sha256:...".
func (c *Cluster) PushIndex(repoTag string, idx v1.ImageIndex) (string, error) {
	return c.push(repoTag, idx, func(ref name.Reference, opts ...remote.Option) error { return remote.WriteIndex(ref, idx, opts...) })
}

// PushImage pushes a single-platform image to the node's registry as repoTag and returns the
// reference pinned by digest, like PushIndex.
func (c *Cluster) PushImage(repoTag string, img v1.Image) (string, error) {
	return c.push(repoTag, img, func(ref name.Reference, opts ...remote.Option) error { return remote.Write(ref, img, opts...) })
}

func (c *Cluster) push(repoTag string, what interface{ Digest() (v1.Hash, error) }, write func(name.Reference, ...remote.Option) error) (string, error) {
	if strings.Contains(repoTag, "@") || strings.HasPrefix(repoTag, c.Registry) {
		return "", fmt.Errorf("push %q: give the repository and tag without the registry host or a digest, e.g. apiproxy/agent:v1.2.3", repoTag)
	}
	tag, err := name.NewTag(c.Registry+"/"+repoTag, name.StrictValidation)
	if err != nil {
		return "", fmt.Errorf("push %q: %w", repoTag, err)
	}
	rt, err := c.RegistryTransport()
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := write(tag, remote.WithTransport(rt), remote.WithContext(ctx)); err != nil {
		return "", fmt.Errorf("pushing %s: %w", tag, err)
	}
	d, err := what.Digest()
	if err != nil {
		return "", err
	}
	return tag.String() + "@" + d.String(), nil
}

// Blobs under the filesystem driver's root; no upload purging (the registry lives minutes), no
// notifications, proxy (pull-through), redis, debug server or auth: nothing that reaches out.
const registryConfig = `version: 0.1
log:
  level: info
  formatter: text
  fields:
    service: registry
storage:
  filesystem:
    rootdirectory: %s
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: %s
  secret: %s
  tls:
    certificate: %s
    key: %s
    minimumtls: tls1.2
  headers:
    X-Content-Type-Options: [nosniff]
`

// containerd's host configuration for the registry: pull and resolve from it over TLS, trusting
// the harness's registry CA.
const registryHostsTOML = `server = "https://%s"

[host."https://%s"]
  capabilities = ["pull", "resolve"]
  ca = %q
`
