package install

import (
	"crypto/x509"
	"fmt"
	"slices"
	"time"

	"github.com/apiproxy/apiproxy/pkg/certs"
)

// Certificate lifetimes and the rotation threshold: install renews what expires within RotateBefore,
// so re-running install (e.g. monthly, or on every upgrade) never lets the webhook's TLS lapse.
const (
	CAValidity      = 10 * 365 * 24 * time.Hour
	ServingValidity = 365 * 24 * time.Hour
	RotateBefore    = 30 * 24 * time.Hour
)

// WebhookDNSNames are the serving certificate's names: the Service's, which the API server uses,
// and localhost, for `kubectl port-forward` debugging and for running the agent next to a test API server.
func WebhookDNSNames(namespace string) []string {
	return []string{
		webhookServiceName,
		webhookServiceName + "." + namespace,
		webhookServiceName + "." + namespace + ".svc",
		webhookServiceName + "." + namespace + ".svc.cluster.local",
		"localhost",
	}
}

// EnsureWebhookCerts reuses the PKI found in the Secrets' data when it is sound and valid for more
// than RotateBefore, and issues what is missing, expiring or wrong. The returned note says what
// happened, for the user.
func EnsureWebhookCerts(caData, tlsData map[string][]byte, namespace string, now time.Time) (*WebhookCerts, string, error) {
	names := WebhookDNSNames(namespace)
	ca, caNote := reusableCA(caData, now)
	newCA := ca == nil
	if newCA {
		var err error
		if ca, err = certs.NewCA("apiproxy-webhook-ca", CAValidity); err != nil {
			return nil, "", fmt.Errorf("creating the webhook CA: %w", err)
		}
	}
	if !newCA {
		if servingNote := reusableServing(tlsData, ca, names, now); servingNote == "" {
			return &WebhookCerts{CACert: ca.CertPEM, CAKey: ca.KeyPEM, ServingCert: tlsData["tls.crt"], ServingKey: tlsData["tls.key"]}, "reusing the webhook CA and serving certificate", nil
		} else {
			caNote = servingNote
		}
	}
	serving, err := ca.Issue(certs.Request{CommonName: names[2], DNSNames: names, Server: true, Validity: ServingValidity})
	if err != nil {
		return nil, "", fmt.Errorf("issuing the webhook serving certificate: %w", err)
	}
	return &WebhookCerts{CACert: ca.CertPEM, CAKey: ca.KeyPEM, ServingCert: serving.CertPEM, ServingKey: serving.KeyPEM}, caNote, nil
}

func reusableCA(data map[string][]byte, now time.Time) (*certs.KeyPair, string) {
	if len(data["ca.crt"]) == 0 {
		return nil, "generating the webhook CA and serving certificate"
	}
	ca, err := certs.Parse(data["ca.crt"], data["ca.key"])
	if err != nil {
		return nil, fmt.Sprintf("the stored webhook CA is unreadable (%v): generating a new one", err)
	}
	if left := ca.Certificate().NotAfter.Sub(now); left < RotateBefore {
		return nil, fmt.Sprintf("the webhook CA expires in %s (less than %s): rotating it and the serving certificate", left.Round(time.Hour), RotateBefore)
	}
	return ca, ""
}

// reusableServing returns "" when the stored serving certificate can stay, else why not.
func reusableServing(data map[string][]byte, ca *certs.KeyPair, names []string, now time.Time) string {
	kp, err := certs.Parse(data["tls.crt"], data["tls.key"])
	if err != nil {
		return "no usable webhook serving certificate stored: issuing one"
	}
	cert := kp.Certificate()
	if err := cert.CheckSignatureFrom(ca.Certificate()); err != nil {
		return "the stored serving certificate was not signed by the stored CA: issuing a new one"
	}
	if left := cert.NotAfter.Sub(now); left < RotateBefore {
		return fmt.Sprintf("the webhook serving certificate expires in %s (less than %s): rotating it", left.Round(time.Hour), RotateBefore)
	}
	for _, n := range names {
		if !slices.Contains(cert.DNSNames, n) {
			return fmt.Sprintf("the webhook serving certificate lacks the name %s: issuing a new one", n)
		}
	}
	if !slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageServerAuth) {
		return "the webhook serving certificate is not for servers: issuing a new one"
	}
	return ""
}
