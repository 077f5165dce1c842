package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/apiproxy/apiproxy/pkg/certs"
	"github.com/apiproxy/apiproxy/pkg/webhook"
)

func TestWebhookFlagErrors(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"tls.crt", "tls.key"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--cert-dir", dir}, "--apiserver-fqdn is required"},
		{[]string{"--apiserver-fqdn", "Not_A_Name", "--cert-dir", dir}, `--apiserver-fqdn "Not_A_Name" is not a DNS name`},
		{[]string{"--apiserver-fqdn", "a..b", "--cert-dir", dir}, "is not a DNS name"},
		{[]string{"--apiserver-fqdn", "foo.bar.", "--apiserver-port", "70000", "--cert-dir", dir}, "--apiserver-port 70000 is out of range"},
		{[]string{"--apiserver-fqdn", "foo.bar.", "--host-alias-ip", "nope", "--cert-dir", dir}, `--host-alias-ip "nope" is not an IP address`},
		{[]string{"--apiserver-fqdn", "10.0.0.1", "--host-alias-ip", "10.0.0.2", "--cert-dir", dir}, "--host-alias-ip needs --apiserver-fqdn to be a name"},
		{[]string{"--apiserver-fqdn", "foo.bar.", "--port", "0", "--cert-dir", dir}, "--port 0 is out of range"},
		{[]string{"--apiserver-fqdn", "foo.bar."}, "--cert-dir is required"},
		{[]string{"--apiserver-fqdn", "foo.bar.", "--cert-dir", dir, "--client-ca-name", "ca.crt"}, "ca.crt: no such file"},
		{[]string{"--apiserver-fqdn", "foo.bar.", "--cert-dir", dir, "--cert-name", "x.crt"}, "x.crt: no such file"},
		{[]string{"--apiserver-fqdn", "foo.bar.", "--cert-dir", dir, "extra"}, "unknown command"},
	}
	for _, tc := range cases {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var out, errOut bytes.Buffer
			root := NewRootCommand(&out, &errOut)
			root.SetArgs(append([]string{"webhook"}, tc.args...))
			err := root.Execute()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
	// Accepted forms: trailing dot, no trailing dot, an IP.
	for _, fqdn := range []string{"foo.bar.", "foo.bar", "10.0.0.1", "fd00::1"} {
		o := &webhookOptions{fqdn: fqdn, port: 9443, certDir: dir, certName: "tls.crt", keyName: "tls.key"}
		if err := o.validate(); err != nil {
			t.Errorf("--apiserver-fqdn %s refused: %v", fqdn, err)
		}
	}
}

// TestWebhookCommandServes runs `agent webhook` in-process: it serves the seed's review over TLS,
// counts it on /metrics, reports ready, and stops cleanly when its context ends (as on SIGTERM).
func TestWebhookCommandServes(t *testing.T) {
	ca, err := certs.NewCA("ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	kp, err := ca.Issue(certs.Request{CommonName: "webhook", IPs: []net.IP{net.ParseIP("127.0.0.1")}, Server: true, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for name, data := range map[string][]byte{"serving.crt": kp.CertPEM, "serving.key": kp.KeyPEM} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	port := func() int {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().(*net.TCPAddr).Port
	}
	hookPort, metricsPort := port(), port()
	metrics := "http://127.0.0.1:" + strconv.Itoa(metricsPort)

	var out, errOut bytes.Buffer
	root := NewRootCommand(&out, &errOut)
	root.SetArgs([]string{"webhook", "--apiserver-fqdn", "foo.bar.", "--cert-dir", dir, "--cert-name", "serving.crt", "--key-name", "serving.key",
		"--host", "127.0.0.1", "--port", strconv.Itoa(hookPort), "--metrics-addr", "127.0.0.1:" + strconv.Itoa(metricsPort)})
	ctx, cancel := context.WithCancel(context.Background())
	var runErr error
	done := make(chan struct{}) // closed when the command returned runErr
	go func() { runErr = root.ExecuteContext(ctx); close(done) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			t.Error("agent webhook did not stop")
		}
	})

	httpc := &http.Client{Timeout: 3 * time.Second}
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := httpc.Get(metrics + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("never ready: %v %v", err, resp)
		}
		select {
		case <-done:
			t.Fatalf("agent webhook exited: %v\n%s", runErr, errOut.String())
		case <-time.After(100 * time.Millisecond):
		}
	}

	pool := x509.NewCertPool()
	pool.AddCert(ca.Certificate())
	tlsc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	body, err := os.ReadFile("../../webhook/testdata/admission.json")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := tlsc.Post("https://127.0.0.1:"+strconv.Itoa(hookPort)+webhook.Path, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	var rv struct {
		Response struct {
			Patch []byte `json:"patch"`
		} `json:"response"`
	}
	err = json.NewDecoder(resp.Body).Decode(&rv)
	resp.Body.Close()
	if err != nil || !bytes.Contains(rv.Response.Patch, []byte(`"/spec/initContainers/0/env"`)) {
		t.Fatalf("patch %s, %v", rv.Response.Patch, err)
	}

	resp, err = httpc.Get(metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	m, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Contains(m, []byte(`apiproxy_webhook_reviews_total{result="patched"} 1`)) {
		t.Errorf("/metrics lacks the review count:\n%s", m)
	}

	cancel()
	select {
	case <-done:
		if runErr != nil {
			t.Fatalf("stopping: %v", runErr)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("agent webhook did not stop within 15s of its context ending")
	}
}
