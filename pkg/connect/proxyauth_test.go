package connect

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/apiproxy/apiproxy/pkg/tunnel"
	"github.com/apiproxy/apiproxy/test/testnet"
)

const proxyTestToken = "s3cr3t-t0ken.for/the+proxy"

func echoUpstream(t *testing.T) string {
	return testnet.Serve(t, "tcp", "127.0.0.1:0", func(c net.Conn) { _, _ = io.Copy(c, c) })
}

// execConfig is an exec credential plugin (a shell script) that prints token, as
// client-go runs it for kubectl.
func execConfig(t *testing.T, token string) *clientcmdapi.ExecConfig {
	script := filepath.Join(t.TempDir(), "cred.sh")
	body := "#!/bin/sh\nprintf '%s' '{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"ExecCredential\",\"status\":{\"token\":\"" + token + "\"}}'\n"
	if err := os.WriteFile(script, []byte(body), 0o700); err != nil {
		t.Fatal(err)
	}
	return &clientcmdapi.ExecConfig{Command: script, APIVersion: "client.authentication.k8s.io/v1", InteractiveMode: clientcmdapi.NeverExecInteractiveMode}
}

func roundTripThrough(t *testing.T, d *AuthDialer) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", "api.example:443")
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(c, "ping"); err != nil {
		return err
	}
	b := make([]byte, 4)
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "ping" {
		t.Fatalf("echo through the tunnel: %q %v", b, err)
	}
	return nil
}

// A proxy that answers 407 gets the kubeconfig user's token, from each kind of source client-go
// knows, as Proxy-Authorization: Bearer; later dials send it at once.
func TestAuthDialerSendsTheUsersToken(t *testing.T) {
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(proxyTestToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, cfg := range map[string]*rest.Config{
		"token":     {Host: "https://api.example:443", BearerToken: proxyTestToken},
		"tokenFile": {Host: "https://api.example:443", BearerTokenFile: tokenFile},
		"exec":      {Host: "https://api.example:443", ExecProvider: execConfig(t, proxyTestToken)},
		"override":  {Host: "https://api.example:443", BearerToken: "not-this-one"},
	} {
		t.Run(name, func(t *testing.T) {
			p := testnet.StartAuthProxy(t, proxyTestToken, echoUpstream(t))
			creds := &ProxyCredentials{Config: cfg, Context: "cl02"}
			if name == "override" {
				creds.Override = proxyTestToken
			}
			d := &AuthDialer{Dialer: tunnel.Dialer{Proxy: "http://" + p.Addr, Timeout: 30 * time.Second}, Creds: creds}
			if err := roundTripThrough(t, d); err != nil {
				t.Fatal(err)
			}
			want := []string{"none", "bearer"}
			if name == "override" {
				want = []string{"bearer"} // --proxy-token is sent from the first CONNECT on
			}
			if seen := p.Seen(); !slices.Equal(seen, want) {
				t.Fatalf("first dial: proxy saw %v, want %v", seen, want)
			}
			if err := roundTripThrough(t, d); err != nil {
				t.Fatal(err)
			}
			if seen := p.Seen(); !slices.Equal(seen, []string{"bearer"}) {
				t.Fatalf("second dial: proxy saw %v, want the token at once", seen)
			}
		})
	}
}

// A proxy without authentication never gets a token.
func TestAuthDialerSendsNothingUnasked(t *testing.T) {
	upstream := echoUpstream(t)
	heads := make(chan string, 10)
	proxy := testnet.Serve(t, "tcp", "127.0.0.1:0", func(c net.Conn) {
		buf := make([]byte, 4096)
		n, _ := c.Read(buf)
		heads <- string(buf[:n])
		up, err := net.Dial("tcp", upstream)
		if err != nil {
			return
		}
		defer up.Close()
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\n\r\n")
		go func() { _, _ = io.Copy(up, c) }()
		_, _ = io.Copy(c, up)
	})
	d := &AuthDialer{Dialer: tunnel.Dialer{Proxy: proxy, Timeout: 30 * time.Second}, Creds: &ProxyCredentials{Config: &rest.Config{Host: "https://x", BearerToken: proxyTestToken}}}
	if err := roundTripThrough(t, d); err != nil {
		t.Fatal(err)
	}
	close(heads)
	var seen []string
	for h := range heads {
		seen = append(seen, h)
	}
	if len(seen) != 1 || strings.Contains(strings.ToLower(seen[0]), "proxy-authorization") {
		t.Fatalf("CONNECT heads %q: want one, without credentials", seen)
	}
}

// Errors are clear and never carry the token.
func TestAuthDialerErrors(t *testing.T) {
	p := testnet.StartAuthProxy(t, proxyTestToken, echoUpstream(t))
	proxy := "http://" + p.Addr
	dial := func(creds *ProxyCredentials) error {
		d := &AuthDialer{Dialer: tunnel.Dialer{Proxy: proxy, Timeout: 30 * time.Second}, Creds: creds}
		return roundTripThrough(t, d)
	}

	t.Run("client certificate only", func(t *testing.T) {
		err := dial(&ProxyCredentials{Config: &rest.Config{Host: "https://x", TLSClientConfig: rest.TLSClientConfig{CertData: []byte("cert"), KeyData: []byte("key")}}, Context: "cl02"})
		var nt *NoTokenError
		if !errors.As(err, &nt) {
			t.Fatalf("got %v, want a NoTokenError", err)
		}
		msg := DescribeDialError(err, proxy).Error()
		for _, want := range []string{"--proxy-token", "client certificate", `context "cl02"`, "407", "kubectl create token"} {
			if !strings.Contains(msg, want) {
				t.Errorf("%q lacks %q", msg, want)
			}
		}
	})

	t.Run("an exec plugin that fails", func(t *testing.T) {
		err := dial(&ProxyCredentials{Config: &rest.Config{Host: "https://x", ExecProvider: &clientcmdapi.ExecConfig{Command: "/nonexistent/cred-plugin", APIVersion: "client.authentication.k8s.io/v1", InteractiveMode: clientcmdapi.NeverExecInteractiveMode}}, Context: "cl02"})
		var nt *NoTokenError
		if !errors.As(err, &nt) || nt.Err == nil || !strings.Contains(err.Error(), "--proxy-token") {
			t.Fatalf("got %v", err)
		}
	})

	t.Run("a token the proxy rejects", func(t *testing.T) {
		const wrong = "wrong-token-value"
		err := dial(&ProxyCredentials{Config: &rest.Config{Host: "https://x", BearerToken: wrong}, Context: "cl02"})
		var ce *tunnel.ConnectError
		if !errors.As(err, &ce) || ce.StatusCode != 407 {
			t.Fatalf("got %v, want the proxy's 407", err)
		}
		msg := DescribeDialError(err, proxy).Error()
		if !strings.Contains(msg, "rejected the token") || strings.Contains(msg, wrong) {
			t.Fatalf("message %q: want the rejection, without the token", msg)
		}
	})

	t.Run("403 and 503 are explained", func(t *testing.T) {
		for code, want := range map[int]string{403: "tunnels.apiproxy.io", 503: "could not check your token"} {
			msg := DescribeDialError(&tunnel.ConnectError{Proxy: p.Addr, StatusCode: code, Status: "x"}, proxy).Error()
			if !strings.Contains(msg, want) {
				t.Errorf("%d: %q lacks %q", code, msg, want)
			}
		}
	})

	t.Run("proxy-url with the token as Basic password", func(t *testing.T) {
		u, err := ProxyURLWithToken(proxy, proxyTestToken)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(u, "http://apiproxy:") || !strings.HasSuffix(u, "@"+p.Addr) {
			t.Fatalf("proxy-url %q", u)
		}
	})
}
