package tokenreview

import (
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"net/textproto"
	"strings"
	"testing"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/apiproxy/apiproxy/pkg/proxy"
)

func basic(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

func TestToken(t *testing.T) {
	for _, c := range []struct {
		values []string
		token  string
		err    string
	}{
		{[]string{"Bearer abc.def"}, "abc.def", ""},
		{[]string{"bearer   abc.def  "}, "abc.def", ""},
		{[]string{basic("peer", "abc.def")}, "abc.def", ""},
		{[]string{basic("", "abc.def")}, "abc.def", ""},
		{nil, "", "no Proxy-Authorization header"},
		{[]string{"Bearer a", "Bearer b"}, "", "more than one"},
		{[]string{"Bearer"}, "", "no usable token"},
		{[]string{"Bearer a b"}, "", "no usable token"},
		{[]string{"Basic !!!secret!!!"}, "", "not valid base64"},
		{[]string{"Basic " + base64.StdEncoding.EncodeToString([]byte("only-user-secret"))}, "", "no password"},
		{[]string{basic("peer", "")}, "", "no usable token"},
		{[]string{"Digest secret=1"}, "", "neither Bearer nor Basic"},
	} {
		got, err := Token(c.values)
		if got != c.token || (err == nil) != (c.err == "") || (err != nil && !strings.Contains(err.Error(), c.err)) {
			t.Errorf("Token(%q) = %q, %v; want %q, %q", c.values, got, err, c.token, c.err)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("Token(%q): the error %q repeats the credentials", c.values, err)
		}
	}
}

// Without credentials the answer is 407 before any review; with an API server that can't be reached
// it is an error that is not an AuthError (503: fail closed), and it never contains the token.
func TestAuthenticateFailsClosed(t *testing.T) {
	cs, err := kubernetes.NewForConfig(&rest.Config{Host: "https://127.0.0.1:1", TLSClientConfig: rest.TLSClientConfig{Insecure: true}})
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(cs, Options{})
	if err != nil {
		t.Fatal(err)
	}
	req := &proxy.ConnectRequest{Authority: "kubernetes.default.svc:443", Header: textproto.MIMEHeader{}}
	_, err = a.Authenticate(context.Background(), req)
	var ae *proxy.AuthError
	if !errors.As(err, &ae) || ae.Status != http.StatusProxyAuthRequired {
		t.Fatalf("no credentials: %v, want a 407 AuthError", err)
	}
	req.Header.Set("Proxy-Authorization", "Bearer the-secret-token")
	_, err = a.Authenticate(context.Background(), req)
	if err == nil || errors.As(err, &ae) {
		t.Fatalf("unreachable API server: %v, want a plain error (503)", err)
	}
	if strings.Contains(err.Error(), "the-secret-token") {
		t.Fatalf("error %q contains the token", err)
	}
}
