package agent

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/apiproxy/apiproxy/pkg/proxy"
	"github.com/apiproxy/apiproxy/test/harness"
)

// rawConnect sends one CONNECT with extra header lines and returns the answer's status and headers.
func rawConnect(t *testing.T, proxyAddr, authority string, headers ...string) *http.Response {
	t.Helper()
	c, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	head := "CONNECT " + authority + " HTTP/1.1\r\nHost: " + authority + "\r\n"
	for _, h := range headers {
		head += h + "\r\n"
	}
	io.WriteString(c, head+"\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatalf("CONNECT %s: %v", authority, err)
	}
	return resp
}

// --auth tokenreview against a real kube-apiserver with real ServiceAccount tokens (TokenRequest):
// 407 without or with a bad token, 403 without RBAC, 200 once a ClusterRole grants create on
// tunnels.apiproxy.io, real kubectl through proxy-url with the token as password, an audit record
// naming the ServiceAccount, and no token text in any output.
func TestProxyAuthTokenReview(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a kube-apiserver")
	}
	c := harness.Start(t, harness.Options{Name: "auth"})
	cs := c.Clientset(t)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	const ns, sa = "peers", "cl01"
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenRequest: %v", err)
	}
	token := tr.Status.Token
	user := "system:serviceaccount:" + ns + ":" + sa

	u, _ := url.Parse(c.Server)
	listen, metrics := freeAddr(t, "127.0.0.1"), freeAddr(t, "127.0.0.1")
	audit := filepath.Join(t.TempDir(), "audit.jsonl")
	p := startProxyProcess(t, nil, listen, "--listen", listen, "--upstream", u.Host, "--metrics-addr", metrics,
		"--auth", "tokenreview", "--kubeconfig", c.Kubeconfig, "--audit-log", audit, "-v", "6")

	bearer := "Proxy-Authorization: Bearer " + token
	basic := "Proxy-Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte(sa+":"+token))

	resp := rawConnect(t, listen, u.Host)
	if resp.StatusCode != 407 || len(resp.Header.Values("Proxy-Authenticate")) == 0 {
		t.Fatalf("no credentials: %d %v, want 407 with Proxy-Authenticate", resp.StatusCode, resp.Header)
	}
	if resp := rawConnect(t, listen, u.Host, "Proxy-Authorization: Bearer garbage-not-a-token"); resp.StatusCode != 407 {
		t.Fatalf("garbage token: %d, want 407", resp.StatusCode)
	}
	if resp := rawConnect(t, listen, u.Host, bearer); resp.StatusCode != 403 {
		t.Fatalf("valid token without RBAC: %d, want 403", resp.StatusCode)
	}

	// Grant it with ordinary RBAC.
	if _, err := cs.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "apiproxy-tunnel"},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{"apiproxy.io"}, Resources: []string{"tunnels"}, Verbs: []string{"create"}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "apiproxy-tunnel-cl01"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "apiproxy-tunnel"},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: sa, Namespace: ns}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The denial is cached for a few seconds and RBAC reaches the authorizer through an informer:
	// poll, bounded.
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp := rawConnect(t, listen, u.Host, bearer)
		if resp.StatusCode == 200 {
			break
		}
		if resp.StatusCode != 403 || time.Now().After(deadline) {
			t.Fatalf("after the binding: %d, want 200", resp.StatusCode)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if resp := rawConnect(t, listen, u.Host, basic); resp.StatusCode != 200 {
		t.Fatalf("Basic with the token as password: %d, want 200", resp.StatusCode)
	}

	// Real kubectl through proxy-url carrying the token (what client-go sends as Basic).
	kc, err := clientcmd.LoadFromFile(c.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	proxyURL := &url.URL{Scheme: "http", User: url.UserPassword(sa, token), Host: listen}
	for _, cl := range kc.Clusters {
		cl.ProxyURL = proxyURL.String()
	}
	kpath := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, kpath); err != nil {
		t.Fatal(err)
	}
	out, errOut, err := harness.RunKubectl(ctx, t, kpath, "get", "ns", ns, "-o", "name")
	if err != nil || strings.TrimSpace(out) != "namespace/"+ns {
		t.Fatalf("kubectl through the authenticating proxy: %v %q\n%s", err, out, errOut)
	}

	// Metrics by outcome, no user names in them.
	body := getBody(t, "http://"+metrics+"/metrics")
	for _, want := range []string{`apiproxy_proxy_auth_total{outcome="unauthenticated"} 2`, `apiproxy_proxy_auth_total{outcome="forbidden"}`, `apiproxy_proxy_auth_total{outcome="allowed"}`,
		`apiproxy_proxy_token_reviews_refused_total 0`, `apiproxy_proxy_token_reviews_in_flight{token="unseen"} 0`} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s:\n%s", want, grepLines(body, "apiproxy_proxy_"))
		}
	}
	if strings.Contains(body, sa) {
		t.Error("metrics name the user")
	}

	// Stop it (SIGTERM drains and flushes), then read what it wrote.
	p.cmd.Process.Signal(os.Interrupt)
	select {
	case err := <-p.done:
		p.done <- err
	case <-time.After(40 * time.Second):
		t.Fatal("agent proxy did not stop")
	}
	raw, err := os.ReadFile(audit)
	if err != nil {
		t.Fatal(err)
	}
	var records []proxy.AuditRecord
	for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		var r proxy.AuditRecord
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		records = append(records, r)
	}
	var sawOK, sawDenied, sawUnauth bool
	for _, r := range records {
		switch {
		case r.Auth == proxy.AuthAllowed && r.User == user && r.End == proxy.ResultOK && r.BytesUp > 0 && r.BytesDown > 0 && r.Dialed == u.Host:
			sawOK = true
		case r.Auth == proxy.AuthForbidden && r.User == user && r.Status == 403:
			sawDenied = true
		case r.Auth == proxy.AuthUnauthenticated && r.User == "" && r.Status == 407:
			sawUnauth = true
		}
	}
	if !sawOK || !sawDenied || !sawUnauth {
		t.Fatalf("audit records lack a kubectl tunnel of %s (%v), its 403 (%v) or a 407 (%v):\n%s", user, sawOK, sawDenied, sawUnauth, raw)
	}
	for name, text := range map[string]string{"stderr": p.stderr.String(), "audit log": string(raw), "metrics": body} {
		for _, secret := range []string{token, token[len(token)-20:], "garbage-not-a-token", base64.StdEncoding.EncodeToString([]byte(sa + ":" + token))} {
			if strings.Contains(text, secret) {
				t.Errorf("%s contains a token", name)
			}
		}
	}

	// Fail closed: reviews that can't be made give 503, never a tunnel.
	dead := *kc
	dead.Clusters = map[string]*clientcmdapi.Cluster{}
	for name, cl := range kc.Clusters {
		copied := *cl
		copied.Server = "https://" + freeAddr(t, "127.0.0.1")
		copied.ProxyURL = ""
		dead.Clusters[name] = &copied
	}
	deadPath := filepath.Join(t.TempDir(), "dead-kubeconfig")
	if err := clientcmd.WriteToFile(dead, deadPath); err != nil {
		t.Fatal(err)
	}
	listen2 := freeAddr(t, "127.0.0.1")
	startProxyProcess(t, nil, listen2, "--listen", listen2, "--upstream", u.Host, "--metrics-addr", "",
		"--auth", "tokenreview", "--kubeconfig", deadPath)
	if resp := rawConnect(t, listen2, u.Host, bearer); resp.StatusCode != 503 {
		t.Fatalf("reviews unavailable: %d, want 503", resp.StatusCode)
	}
}

func getBody(t *testing.T, u string) string {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}
