package webhook

import (
	"crypto/tls"
	"net/http"

	crwebhook "sigs.k8s.io/controller-runtime/pkg/webhook"
)

// ServerOptions are the seed's serving flags.
type ServerOptions struct {
	Host string
	Port int
	// CertDir holds CertName and KeyName (the serving pair, re-read whenever the files change) and,
	// when ClientCAName is set, the CA that client certificates must chain to.
	CertDir, CertName, KeyName, ClientCAName string
}

// NewServer returns controller-runtime's webhook server serving h at Path: TLS 1.2+, the serving
// certificate hot-reloaded by its certwatcher, and, with ClientCAName, client certificates required
// and verified (tls.RequireAndVerifyClientCert). Start(ctx) serves until ctx is done, then drains.
func NewServer(o ServerOptions, h http.Handler) crwebhook.Server {
	s := crwebhook.NewServer(crwebhook.Options{
		Host:         o.Host,
		Port:         o.Port,
		CertDir:      o.CertDir,
		CertName:     o.CertName,
		KeyName:      o.KeyName,
		ClientCAName: o.ClientCAName,
		TLSOpts:      []func(*tls.Config){func(c *tls.Config) { c.MinVersion = tls.VersionTLS12 }},
	})
	s.Register(Path, h)
	return s
}
