package tunnel

import (
	"context"
	"encoding/base64"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The user info of a proxy URL is sent as Proxy-Authorization (it used to be dropped): Bearer for
// no user or the user "token", Basic otherwise; a header the caller sets wins.
func TestDialerSendsProxyURLCredentials(t *testing.T) {
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte("alice:s3cr@t"))
	for _, tc := range []struct {
		name, userinfo string
		header         http.Header
		want           string
	}{
		{"bearer with user token", "token:eyJ.tok.en@", nil, "Bearer eyJ.tok.en"},
		{"bearer with no user", ":eyJ.tok.en@", nil, "Bearer eyJ.tok.en"},
		{"basic", "alice:s3cr%40t@", nil, basic},
		{"none", "", nil, ""},
		{"caller's header wins", "token:url@", http.Header{"Proxy-Authorization": {"Bearer from-header"}}, "Bearer from-header"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reqs := make(chan *http.Request, 1)
			addr := fakeProxy(t, "HTTP/1.1 200 OK\r\n\r\n", reqs)
			d := &Dialer{Proxy: "http://" + tc.userinfo + addr, Header: tc.header}
			c, err := d.DialContext(context.Background(), "tcp", "10.1.2.3:443")
			if err != nil {
				t.Fatal(err)
			}
			c.Close()
			if got := (<-reqs).Header.Get("Proxy-Authorization"); got != tc.want {
				t.Errorf("Proxy-Authorization = %q, want %q", got, tc.want)
			}
		})
	}
}

// A credentials file is read per dial and follows a rotation; a bare token is Bearer.
func TestDialerCredentialsFileFollowsRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "credentials")
	if err := os.WriteFile(path, []byte("first-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f := &CredentialsFile{Path: path}
	reqs := make(chan *http.Request, 2)
	addr := fakeProxy(t, "HTTP/1.1 200 OK\r\n\r\n", reqs)
	d := &Dialer{Proxy: addr, Authorization: f.Authorization}
	dial := func() string {
		c, err := d.DialContext(context.Background(), "tcp", "10.1.2.3:443")
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		return (<-reqs).Header.Get("Proxy-Authorization")
	}
	if got := dial(); got != "Bearer first-token" {
		t.Fatalf("first dial: %q", got)
	}
	if err := os.WriteFile(path, []byte("bob:second"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A rewrite within the file system's time granularity may keep the mtime; the size differs.
	_ = os.Chtimes(path, time.Now().Add(time.Second), time.Now().Add(time.Second))
	if got, want := dial(), "Basic "+base64.StdEncoding.EncodeToString([]byte("bob:second")); got != want {
		t.Fatalf("after rotation: %q, want %q", got, want)
	}
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_ = os.Chtimes(path, time.Now().Add(2*time.Second), time.Now().Add(2*time.Second))
	if _, err := d.DialContext(context.Background(), "tcp", "10.1.2.3:443"); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Fatalf("empty credentials file: err = %v", err)
	}
}

// No message about a proxy URL repeats its credentials.
func TestProxyURLErrorsNeverShowCredentials(t *testing.T) {
	for _, bad := range []string{
		"https://token:SECRET-TOKEN@proxy:8118",
		"http://token:SECRET-TOKEN@proxy:8118/path",
		"http://token:SECRET-TOKEN@proxy:notaport",
		"http://token:SECRET-TOKEN@[::1",
	} {
		_, err := ProxyHostPort(bad)
		if err == nil {
			t.Errorf("%s: no error", Redact(bad))
			continue
		}
		if strings.Contains(err.Error(), "SECRET-TOKEN") {
			t.Errorf("error shows the token: %v", err)
		}
		d := &Dialer{Proxy: bad}
		if _, err := d.DialContext(context.Background(), "udp", "x:1"); err == nil || strings.Contains(err.Error(), "SECRET-TOKEN") {
			t.Errorf("dial error shows the token or is nil: %v", err)
		}
	}
	for in, want := range map[string]string{
		"http://token:a@b@proxy:8118": "http://proxy:8118",
		"http://proxy:8118":           "http://proxy:8118",
		"proxy:8118":                  "proxy:8118",
		"http://u:p@proxy:8118/x@y":   "http://proxy:8118/x@y",
	} {
		if got := Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
	if _, err := CredentialsAuthorization("token:"); err == nil {
		t.Error("user token with no password: no error")
	}
	if _, err := ProxyAuthorization("http://token:a%0Ab@proxy:1"); err == nil {
		t.Error("a line break in the credentials: no error")
	}
}
