package webhook

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/go-logr/logr"
	crlog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/apiproxy/apiproxy/pkg/certs"
)

func TestMain(m *testing.M) {
	// controller-runtime's server logs through its own logger; without one it complains after 30 s.
	crlog.SetLogger(logr.Discard())
	os.Exit(m.Run())
}

// pki is a CA plus the files a webhook server reads.
type pki struct {
	ca  *certs.KeyPair
	dir string
}

func newPKI(t testing.TB, name string) *pki {
	t.Helper()
	ca, err := certs.NewCA(name, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &pki{ca: ca, dir: t.TempDir()}
}

// serving issues a serving certificate for 127.0.0.1 and localhost.
func (p *pki) serving(t testing.TB) *certs.KeyPair {
	t.Helper()
	kp, err := p.ca.Issue(certs.Request{CommonName: "webhook", DNSNames: []string{"localhost"},
		IPs: []net.IP{net.ParseIP("127.0.0.1")}, Server: true, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	return kp
}

func writeFile(t testing.TB, path string, data []byte) {
	t.Helper()
	// Write then rename, as kubelet's atomic writer does for mounted Secrets.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func (p *pki) pool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(p.ca.Certificate())
	return pool
}

// freePort returns a loopback port that was free a moment ago: controller-runtime's server turns
// port 0 into its default 9443, so the test has to choose.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startServer runs the real TLS server (controller-runtime + certwatcher) on 127.0.0.1 with dir's
// files and h, until the test ends. It returns the base URL.
func startServer(t testing.TB, dir, clientCA string, h http.Handler) string {
	t.Helper()
	port := freePort(t)
	srv := NewServer(ServerOptions{Host: "127.0.0.1", Port: port, CertDir: dir, CertName: "tls.crt", KeyName: "tls.key", ClientCAName: clientCA}, h)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("server stopped with %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("server did not stop within 10s")
		}
	})
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return "https://" + addr
		}
		select {
		case err := <-done:
			t.Fatalf("server exited: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("server not listening on %s: %v", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func httpsClient(roots *x509.CertPool, client *certs.KeyPair) *http.Client {
	cfg := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	if client != nil {
		pair, err := tls.X509KeyPair(client.CertPEM, client.KeyPEM)
		if err != nil {
			panic(err)
		}
		// Always present it, even when the server's acceptable CAs do not list its issuer, so the
		// server's verification (not the client's choice) is what gets tested.
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &pair, nil }
	}
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
}

func postReview(c *http.Client, url string, body []byte) (*http.Response, []byte, error) {
	resp, err := c.Post(url+Path, "application/json", bytes.NewReader(body))
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, b, err
}

// TestSeedExampleOverHTTPS is the seed's curl example against the real server.
func TestSeedExampleOverHTTPS(t *testing.T) {
	p := newPKI(t, "ca")
	kp := p.serving(t)
	writeFile(t, filepath.Join(p.dir, "tls.crt"), kp.CertPEM)
	writeFile(t, filepath.Join(p.dir, "tls.key"), kp.KeyPEM)
	url := startServer(t, p.dir, "", newTestHandler(t, Config{FQDN: "foo.bar."}))

	body, err := os.ReadFile("testdata/admission.json")
	if err != nil {
		t.Fatal(err)
	}
	resp, out, err := postReview(httpsClient(p.pool(), nil), url, body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, out)
	}
	jsonEqual(t, decodeResponse(t, out).Response.Patch, seedPatch)

	// Malformed body over the wire: a clear 400, and the server keeps serving.
	resp, out, err = postReview(httpsClient(p.pool(), nil), url, []byte("{not json"))
	if err != nil || resp.StatusCode != 400 || !bytes.Contains(out, []byte("not a JSON AdmissionReview")) {
		t.Fatalf("malformed body: %v %v %s", err, resp, out)
	}

	// TLS 1.1 is refused.
	c, err := tls.Dial("tcp", url[len("https://"):], &tls.Config{RootCAs: p.pool(), MaxVersion: tls.VersionTLS11})
	if err == nil {
		c.Close()
		t.Fatal("a TLS 1.1 handshake succeeded")
	}
}

// TestCertificateRotation overwrites the serving pair with one from another CA and expects new
// handshakes to present it without a restart.
func TestCertificateRotation(t *testing.T) {
	p := newPKI(t, "first-ca")
	kp := p.serving(t)
	crt, key := filepath.Join(p.dir, "tls.crt"), filepath.Join(p.dir, "tls.key")
	writeFile(t, crt, kp.CertPEM)
	writeFile(t, key, kp.KeyPEM)
	url := startServer(t, p.dir, "", newTestHandler(t, Config{FQDN: "foo.bar."}))
	addr := url[len("https://"):]

	presented := func() *x509.Certificate {
		c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true}) // we inspect the chain ourselves
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0]
	}
	if got := presented(); got.Issuer.CommonName != "first-ca" {
		t.Fatalf("initial certificate issued by %q", got.Issuer.CommonName)
	}

	other := newPKI(t, "second-ca")
	kp2 := other.serving(t)
	writeFile(t, key, kp2.KeyPEM)
	writeFile(t, crt, kp2.CertPEM)
	deadline := time.Now().Add(30 * time.Second) // fsnotify is immediate; certwatcher also polls every 10 s
	for presented().Issuer.CommonName != "second-ca" {
		if time.Now().After(deadline) {
			t.Fatal("the rotated certificate was not served within 30s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	// And the new chain verifies end to end.
	resp, _, err := postReview(httpsClient(other.pool(), nil), url, podReview("v1", "CREATE", `{"spec":{"containers":[{}]}}`))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("after rotation: %v %v", err, resp)
	}
}

// TestClientCertificates: with --client-ca-name, a client without a certificate (or with one from
// another CA) is refused at the handshake; one issued by the client CA is served.
func TestClientCertificates(t *testing.T) {
	p := newPKI(t, "serving-ca")
	kp := p.serving(t)
	writeFile(t, filepath.Join(p.dir, "tls.crt"), kp.CertPEM)
	writeFile(t, filepath.Join(p.dir, "tls.key"), kp.KeyPEM)
	clientCA := newPKI(t, "client-ca")
	writeFile(t, filepath.Join(p.dir, "client-ca.crt"), clientCA.ca.CertPEM)
	url := startServer(t, p.dir, "client-ca.crt", newTestHandler(t, Config{FQDN: "foo.bar."}))
	body := podReview("v1", "CREATE", `{"spec":{"containers":[{}]}}`)

	if _, _, err := postReview(httpsClient(p.pool(), nil), url, body); err == nil {
		t.Fatal("a client without a certificate was served")
	} else if !isTLSRefusal(err) {
		t.Fatalf("unexpected error without a client certificate: %v", err)
	}

	stranger, err := newPKI(t, "stranger-ca").ca.Issue(certs.Request{CommonName: "apiserver", Client: true, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := postReview(httpsClient(p.pool(), stranger), url, body); err == nil {
		t.Fatal("a client certificate from an unknown CA was accepted")
	}

	good, err := clientCA.ca.Issue(certs.Request{CommonName: "apiserver", Client: true, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	resp, out, err := postReview(httpsClient(p.pool(), good), url, body)
	if err != nil || resp.StatusCode != 200 || decodeResponse(t, out).Response.Patch == nil {
		t.Fatalf("good client certificate: %v %v %s", err, resp, out)
	}
}

func isTLSRefusal(err error) bool {
	var alert tls.AlertError
	var netErr *net.OpError
	return errors.As(err, &alert) || errors.As(err, &netErr) || errors.Is(err, io.EOF) ||
		bytes.Contains([]byte(err.Error()), []byte("certificate required"))
}
