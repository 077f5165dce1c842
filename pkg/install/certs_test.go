package install

import (
	"bytes"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/apiproxy/apiproxy/pkg/certs"
)

func stored(c *WebhookCerts) (map[string][]byte, map[string][]byte) {
	return map[string][]byte{"ca.crt": c.CACert, "ca.key": c.CAKey},
		map[string][]byte{"ca.crt": c.CACert, "tls.crt": c.ServingCert, "tls.key": c.ServingKey}
}

func TestWebhookCertsReuseAndRotation(t *testing.T) {
	now := time.Now()
	first, note, err := EnsureWebhookCerts(nil, nil, "apiproxy-system", now)
	if err != nil || !strings.Contains(note, "generating") {
		t.Fatalf("first: %v %q", err, note)
	}
	kp, err := certs.Parse(first.ServingCert, first.ServingKey)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"apiproxy-webhook.apiproxy-system.svc", "localhost"} {
		if !slices.Contains(kp.Certificate().DNSNames, n) {
			t.Errorf("serving certificate lacks %s: %v", n, kp.Certificate().DNSNames)
		}
	}

	caData, tlsData := stored(first)
	again, note, err := EnsureWebhookCerts(caData, tlsData, "apiproxy-system", now.Add(24*time.Hour))
	if err != nil || !bytes.Equal(again.ServingCert, first.ServingCert) || !bytes.Equal(again.CACert, first.CACert) || !strings.Contains(note, "reusing") {
		t.Errorf("a valid PKI must be reused: %v %q", err, note)
	}

	// 340 days later the serving certificate has 25 days left: rotate it, keep the CA (and caBundle).
	later, note, err := EnsureWebhookCerts(caData, tlsData, "apiproxy-system", now.Add(340*24*time.Hour))
	if err != nil || bytes.Equal(later.ServingCert, first.ServingCert) || !bytes.Equal(later.CACert, first.CACert) || !strings.Contains(note, "rotating") {
		t.Errorf("serving certificate near expiry: %v %q", err, note)
	}

	// Near the CA's end, both are renewed.
	end, note, err := EnsureWebhookCerts(caData, tlsData, "apiproxy-system", now.Add(CAValidity-10*24*time.Hour))
	if err != nil || bytes.Equal(end.CACert, first.CACert) || !strings.Contains(note, "CA expires") {
		t.Errorf("CA near expiry: %v %q", err, note)
	}

	// Another namespace means other Service names: reissue under the same CA.
	moved, note, err := EnsureWebhookCerts(caData, tlsData, "other", now)
	if err != nil || bytes.Equal(moved.ServingCert, first.ServingCert) || !bytes.Equal(moved.CACert, first.CACert) || !strings.Contains(note, "lacks the name") {
		t.Errorf("namespace change: %v %q", err, note)
	}

	// Garbage in the Secret: start over, with a message.
	_, note, err = EnsureWebhookCerts(map[string][]byte{"ca.crt": []byte("junk")}, nil, "apiproxy-system", now)
	if err != nil || !strings.Contains(note, "unreadable") {
		t.Errorf("garbage CA: %v %q", err, note)
	}
	// A serving certificate from another CA is not trusted by the stored CA: reissue.
	other, _, _ := EnsureWebhookCerts(nil, nil, "apiproxy-system", now)
	_, foreign := stored(other)
	_, note, err = EnsureWebhookCerts(caData, foreign, "apiproxy-system", now)
	if err != nil || !strings.Contains(note, "not signed by the stored CA") {
		t.Errorf("foreign serving cert: %v %q", err, note)
	}
}
