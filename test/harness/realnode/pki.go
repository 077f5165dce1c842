package realnode

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/apiproxy/apiproxy/pkg/certs"
)

// pki is the cluster's throw-away PKI: one CA for the cluster, one for the node's registry, a
// service-account key, and a kubeconfig per client.
type pki struct{ dir string }

func (p pki) path(name string) string       { return filepath.Join(p.dir, name) }
func (p pki) kubeconfig(user string) string { return p.path(user + ".kubeconfig") }

func writePKI(dir string, c *Cluster) (pki, error) {
	p := pki{dir: dir}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return p, err
	}
	const validity = 48 * time.Hour
	ca, err := certs.NewCA("apiproxy-realnode-ca", validity)
	if err != nil {
		return p, err
	}
	files := map[string][]byte{"ca.crt": ca.CertPEM, "ca.key": ca.KeyPEM}
	nodeIP, svcIP := net.ParseIP(c.NodeIP), net.ParseIP(c.KubernetesServiceIP)
	issue := func(name string, req certs.Request) error {
		req.Validity = validity
		kp, err := ca.Issue(req)
		if err != nil {
			return fmt.Errorf("%s certificate: %w", name, err)
		}
		files[name+".crt"], files[name+".key"] = kp.CertPEM, kp.KeyPEM
		return nil
	}
	reqs := map[string]certs.Request{
		"apiserver": {CommonName: "kube-apiserver", Server: true,
			DNSNames: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
			IPs:      []net.IP{net.ParseIP("127.0.0.1"), svcIP, nodeIP}},
		"apiserver-kubelet-client": {CommonName: "kube-apiserver-kubelet-client", Organizations: []string{"system:masters"}, Client: true},
		"kubelet-serving": {CommonName: "system:node:" + c.NodeName, Organizations: []string{"system:nodes"}, Server: true,
			DNSNames: []string{c.NodeName, "localhost"}, IPs: []net.IP{net.ParseIP("127.0.0.1"), nodeIP}},
		"admin":                   {CommonName: "admin", Organizations: []string{"system:masters"}, Client: true},
		"kubelet":                 {CommonName: "system:node:" + c.NodeName, Organizations: []string{"system:nodes"}, Client: true},
		"kube-controller-manager": {CommonName: "system:kube-controller-manager", Client: true},
		"kube-scheduler":          {CommonName: "system:kube-scheduler", Client: true},
		"kube-proxy":              {CommonName: "system:kube-proxy", Client: true},
	}
	for name, req := range reqs {
		if err := issue(name, req); err != nil {
			return p, err
		}
	}
	// The registry has a CA of its own, as a private registry would: containerd trusts it through
	// hosts.toml, not through the cluster's CA.
	regCA, err := certs.NewCA("apiproxy-realnode-registry-ca", validity)
	if err != nil {
		return p, err
	}
	reg, err := regCA.Issue(certs.Request{CommonName: "apiproxy-realnode-registry", Server: true, IPs: []net.IP{nodeIP}, Validity: validity})
	if err != nil {
		return p, fmt.Errorf("registry certificate: %w", err)
	}
	files["registry-ca.crt"], files["registry.crt"], files["registry.key"] = regCA.CertPEM, reg.CertPEM, reg.KeyPEM
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return p, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(saKey)
	if err != nil {
		return p, err
	}
	pub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return p, err
	}
	files["sa.key"] = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	files["sa.pub"] = pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub})
	for name, data := range files {
		if err := os.WriteFile(p.path(name), data, 0o600); err != nil {
			return p, err
		}
	}
	for _, user := range []string{"admin", "kubelet", "kube-controller-manager", "kube-scheduler", "kube-proxy"} {
		kc := clientcmdapi.NewConfig()
		kc.Clusters["realnode"] = &clientcmdapi.Cluster{Server: c.Server, CertificateAuthorityData: files["ca.crt"]}
		kc.AuthInfos[user] = &clientcmdapi.AuthInfo{ClientCertificateData: files[user+".crt"], ClientKeyData: files[user+".key"]}
		kc.Contexts["realnode"] = &clientcmdapi.Context{Cluster: "realnode", AuthInfo: user, Namespace: "default"}
		kc.CurrentContext = "realnode"
		if err := clientcmd.WriteToFile(*kc, p.kubeconfig(user)); err != nil {
			return p, err
		}
	}
	return p, nil
}
