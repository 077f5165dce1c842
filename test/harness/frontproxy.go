package harness

import (
	"os"
	"path/filepath"
	"time"

	"github.com/apiproxy/apiproxy/pkg/certs"
)

// newFrontProxy writes the aggregation layer's front-proxy CA and the kube-apiserver's front-proxy
// client certificate (CN front-proxy-client) into dir.
func newFrontProxy(dir string) (*FrontProxy, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	ca, err := certs.NewCA("front-proxy-ca", 24*time.Hour)
	if err != nil {
		return nil, err
	}
	client, err := ca.Issue(certs.Request{CommonName: "front-proxy-client", Client: true, Validity: 24 * time.Hour})
	if err != nil {
		return nil, err
	}
	fp := &FrontProxy{
		CAFile:            filepath.Join(dir, "ca.crt"),
		ClientCertFile:    filepath.Join(dir, "client.crt"),
		ClientKeyFile:     filepath.Join(dir, "client.key"),
		AllowedNames:      []string{"front-proxy-client"},
		UsernameHeader:    "X-Remote-User",
		GroupHeader:       "X-Remote-Group",
		ExtraHeaderPrefix: "X-Remote-Extra-",
	}
	for path, data := range map[string][]byte{fp.CAFile: ca.CertPEM, fp.ClientCertFile: client.CertPEM, fp.ClientKeyFile: client.KeyPEM} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			return nil, err
		}
	}
	return fp, nil
}
