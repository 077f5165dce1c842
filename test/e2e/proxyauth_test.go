package e2e

import (
	"bytes"
	"context"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/apiproxy/apiproxy/test/harness"
	"github.com/apiproxy/apiproxy/test/harness/nodestandin"
	"github.com/apiproxy/apiproxy/test/testnet"
)

// proxyAuthEnv: cl02 (a real API server with a node stand-in serving pod "web"), behind a CONNECT
// proxy that demands a ServiceAccount token, and kubeconfigs for cl02 whose users authenticate
// with that token, with an exec plugin printing it, or with a client certificate only.
type proxyAuthEnv struct {
	proxy                         *testnet.AuthProxy
	token                         string
	tokenKC, execKC, certKC, kctl string
}

func setUpProxyAuth(t *testing.T) *proxyAuthEnv {
	t.Helper()
	dir := t.TempDir()
	node, err := nodestandin.New(t, "cl02-node", filepath.Join(dir, "node"))
	if err != nil {
		t.Fatal(err)
	}
	cl := harness.Start(t, harness.Options{Name: "cl02", ExtraArgs: node.APIServerArgs()})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := node.Register(ctx, cl.Config); err != nil {
		t.Fatal(err)
	}
	if _, err := node.AddPod(ctx, cl.Config, nodestandin.Pod{Namespace: "default", Name: "web", Ports: map[int32]string{8080: nodestandin.EchoServer(t, echoPrefix)}, Exec: nodestandin.UpperExec}); err != nil {
		t.Fatal(err)
	}
	cs := cl.Clientset(t)
	if _, err := cs.CoreV1().ServiceAccounts("default").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "tunnel-user"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "tunnel-user-admin"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "cluster-admin"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "tunnel-user", Namespace: "default"}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	tr, err := cs.CoreV1().ServiceAccounts("default").CreateToken(ctx, "tunnel-user", &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptrInt64(3600)}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(cl.Server)
	if err != nil {
		t.Fatal(err)
	}
	e := &proxyAuthEnv{proxy: testnet.StartAuthProxy(t, tr.Status.Token, u.Host), token: tr.Status.Token, kctl: harness.Kubectl(t)}

	write := func(name string, user *clientcmdapi.AuthInfo) string {
		kc := clientcmdapi.NewConfig()
		kc.Clusters["cl02"] = &clientcmdapi.Cluster{Server: cl.Server, CertificateAuthorityData: cl.Config.CAData}
		kc.AuthInfos["cl02"] = user
		kc.Contexts["cl02"] = &clientcmdapi.Context{Cluster: "cl02", AuthInfo: "cl02", Namespace: "default"}
		kc.CurrentContext = "cl02"
		path := filepath.Join(dir, name)
		if err := clientcmd.WriteToFile(*kc, path); err != nil {
			t.Fatal(err)
		}
		return path
	}
	script := filepath.Join(dir, "cred-plugin.sh")
	body := "#!/bin/sh\nprintf '%s' '{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"ExecCredential\",\"status\":{\"token\":\"" + e.token + "\"}}'\n"
	if err := os.WriteFile(script, []byte(body), 0o700); err != nil {
		t.Fatal(err)
	}
	e.tokenKC = write("token.yaml", &clientcmdapi.AuthInfo{Token: e.token})
	e.execKC = write("exec.yaml", &clientcmdapi.AuthInfo{Exec: &clientcmdapi.ExecConfig{Command: script, APIVersion: "client.authentication.k8s.io/v1", InteractiveMode: clientcmdapi.NeverExecInteractiveMode}})
	e.certKC = write("cert.yaml", &clientcmdapi.AuthInfo{ClientCertificateData: cl.Config.CertData, ClientKeyData: cl.Config.KeyData})
	return e
}

func ptrInt64(v int64) *int64 { return &v }

// connectRun runs the plugin's connect with kubeconfig and args through the proxy, bounded in time.
func (e *proxyAuthEnv) connectRun(t *testing.T, kubeconfig string, args ...string) result {
	t.Helper()
	return e.pluginRun(t, kubeconfig, append([]string{"connect", "--proxy-url", "http://" + e.proxy.Addr}, args...)...)
}

// pluginRun runs the plugin with kubeconfig and args, bounded in time.
func (e *proxyAuthEnv) pluginRun(t *testing.T, kubeconfig string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, pluginBin(t), append([]string{"--kubeconfig", kubeconfig}, args...)...)
	var o, er bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &er
	cmd.Env = append(os.Environ(), "KUBECONFIG=")
	err := cmd.Run()
	return result{o.String(), er.String(), err}
}

func (e *proxyAuthEnv) noToken(t *testing.T, r result) {
	t.Helper()
	if strings.Contains(r.stderr, e.token) {
		t.Fatalf("the token appears on stderr:\n%s", r.stderr)
	}
}

// connect with a proxy that authenticates tunnels: the kubeconfig user's token (token, exec plugin)
// after the 407, --proxy-token for a certificate-only user, and a printed kubeconfig whose
// proxy-url carries the token, used by real kubectl for get, exec and port-forward.
func TestConnectThroughAuthenticatingProxy(t *testing.T) {
	e := setUpProxyAuth(t)

	t.Run("token user: connect -- kubectl get pods", func(t *testing.T) {
		r := e.connectRun(t, e.tokenKC, "--", e.kctl, "get", "pods", "-o", "name")
		e.noToken(t, r)
		if r.err != nil || !strings.Contains(r.stdout, "pod/web") {
			t.Fatalf("connect: %v\nstdout: %s\nstderr: %s", r.err, r.stdout, r.stderr)
		}
		seen := e.proxy.Seen()
		if len(seen) < 2 || seen[0] != "none" || slices.Contains(seen[1:], "none") || slices.Contains(seen, "bad") {
			t.Fatalf("proxy saw %v: want one CONNECT without credentials (answered 407), then the token", seen)
		}
	})

	t.Run("exec-plugin user: connect -- kubectl exec", func(t *testing.T) {
		r := e.connectRun(t, e.execKC, "--", e.kctl, "exec", "web", "--", "echo", "through", "the", "proxy")
		e.noToken(t, r)
		if r.err != nil || strings.TrimSpace(r.stdout) != "through the proxy" {
			t.Fatalf("connect: %v\nstdout: %s\nstderr: %s", r.err, r.stdout, r.stderr)
		}
		if seen := e.proxy.Seen(); !slices.Contains(seen, "bearer") {
			t.Fatalf("proxy saw %v", seen)
		}
	})

	t.Run("certificate-only user: a clear message, then --proxy-token", func(t *testing.T) {
		r := e.connectRun(t, e.certKC, "--", e.kctl, "get", "pods", "-o", "name")
		if r.err == nil || !strings.Contains(r.stderr, "--proxy-token") || !strings.Contains(r.stderr, "client certificate") {
			t.Fatalf("want a failure that suggests --proxy-token, got %v\n%s", r.err, r.stderr)
		}
		e.proxy.Seen()
		r = e.connectRun(t, e.certKC, "--proxy-token", e.token, "--", e.kctl, "get", "pods", "-o", "name")
		e.noToken(t, r)
		if r.err != nil || !strings.Contains(r.stdout, "pod/web") {
			t.Fatalf("connect --proxy-token: %v\nstdout: %s\nstderr: %s", r.err, r.stdout, r.stderr)
		}
		if seen := e.proxy.Seen(); slices.Contains(seen, "none") || !slices.Contains(seen, "bearer") {
			t.Fatalf("proxy saw %v: --proxy-token is sent from the first CONNECT", seen)
		}
	})

	// Credentials written into --proxy-url are sent (they used to be dropped), as Bearer for the
	// user "token" and as Basic for another user, from the first CONNECT on, and never printed.
	t.Run("certificate-only user: credentials in --proxy-url", func(t *testing.T) {
		for user, want := range map[string]string{"token": "bearer", "alice": "basic"} {
			e.proxy.Seen()
			withCreds := "http://" + user + ":" + e.token + "@" + e.proxy.Addr
			r := e.pluginRun(t, e.certKC, "connect", "--proxy-url", withCreds, "--", e.kctl, "get", "pods", "-o", "name")
			e.noToken(t, r)
			if r.err != nil || !strings.Contains(r.stdout, "pod/web") {
				t.Fatalf("connect --proxy-url http://%s:TOKEN@…: %v\nstdout: %s\nstderr: %s", user, r.err, r.stdout, r.stderr)
			}
			if seen := e.proxy.Seen(); len(seen) == 0 || slices.ContainsFunc(seen, func(s string) bool { return s != want }) {
				t.Fatalf("user %s: proxy saw %v, want only %s", user, seen, want)
			}
			r = e.pluginRun(t, e.certKC, "check", "--proxy-url", withCreds)
			e.noToken(t, r)
			if r.err != nil || strings.Contains(r.stdout, e.token) {
				t.Fatalf("check --proxy-url http://%s:TOKEN@…: %v\n%s%s", user, r.err, strings.ReplaceAll(r.stdout, e.token, "TOKEN"), r.stderr)
			}
		}
		r := e.pluginRun(t, e.certKC, "connect", "--proxy-url", "http://token:"+e.token+"@"+e.proxy.Addr, "--proxy-token", e.token, "--print-kubeconfig")
		e.noToken(t, r)
		if r.err == nil || !strings.Contains(r.stderr, "keep one") {
			t.Fatalf("credentials in --proxy-url and --proxy-token: want a refusal, got %v\n%s", r.err, r.stderr)
		}
	})

	t.Run("print-kubeconfig: proxy-url with the token, used by kubectl get, exec and port-forward", func(t *testing.T) {
		r := e.connectRun(t, e.tokenKC, "--print-kubeconfig")
		e.noToken(t, r)
		if r.err != nil {
			t.Fatalf("%v\n%s", r.err, r.stderr)
		}
		raw, err := clientcmd.Load([]byte(r.stdout))
		if err != nil {
			t.Fatal(err)
		}
		proxyURL := raw.Clusters[raw.Contexts[raw.CurrentContext].Cluster].ProxyURL
		pu, err := url.Parse(proxyURL)
		if err != nil || pu.User.Username() != "apiproxy" || pu.Host != e.proxy.Addr {
			t.Fatalf("proxy-url %q: want http://apiproxy:TOKEN@%s", strings.ReplaceAll(proxyURL, e.token, "TOKEN"), e.proxy.Addr)
		}
		if pass, _ := pu.User.Password(); pass != e.token {
			t.Fatal("proxy-url does not carry the user's token as its password")
		}
		kc := filepath.Join(t.TempDir(), "printed.yaml")
		if err := os.WriteFile(kc, []byte(r.stdout), 0o600); err != nil {
			t.Fatal(err)
		}
		e.proxy.Seen()

		// client-go through proxy-url.
		cfg, err := clientcmd.BuildConfigFromFlags("", kc)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if _, err := kubernetes.NewForConfigOrDie(cfg).CoreV1().Pods("default").Get(ctx, "web", metav1.GetOptions{}); err != nil {
			t.Fatalf("client-go through proxy-url: %v", err)
		}
		// kubectl exec (streaming upgrade through the proxy).
		out, stderr, err := nodestandin.Exec(ctx, e.kctl, []string{"KUBECONFIG="}, "quiet words", "--kubeconfig", kc, "exec", "-i", "web", "--", "upper")
		if err != nil || out != "QUIET WORDS" {
			t.Fatalf("kubectl exec through proxy-url: %q %v\n%s", out, err, stderr)
		}
		// kubectl port-forward.
		local := nodestandin.PortForward(t, e.kctl, []string{"KUBECONFIG="}, "--kubeconfig", kc, "port-forward", "pod/web", ":8080")
		nodestandin.RoundTrip(t, local, echoPrefix, "hello through an authenticated proxy")
		seen := e.proxy.Seen()
		if len(seen) == 0 || slices.ContainsFunc(seen, func(s string) bool { return s != "basic" }) {
			t.Fatalf("proxy saw %v: want every CONNECT with the token as Basic password", seen)
		}
	})
}
