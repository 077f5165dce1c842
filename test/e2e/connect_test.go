// Package e2e runs the seed's scenario end to end with the real binaries: two real API servers
// (cl01, cl02), Liqo-shaped objects, cl02's `agent proxy` on its remapped loopback address, and
// `kubectl apiproxy get-ip` / `connect` with the harness-built kubectl.
package e2e

import (
	"bytes"
	"context"
	"errors"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/apiproxy/apiproxy/test/aggregated"
	"github.com/apiproxy/apiproxy/test/harness"
	"github.com/apiproxy/apiproxy/test/scenario"
)

// agentBin and pluginBin are the real binaries under test, built once for the package.
func agentBin(t testing.TB) string  { return harness.Binary(t, "./cmd/agent") }
func pluginBin(t testing.TB) string { return harness.Binary(t, "./cmd/kubectl-apiproxy") }

func TestMain(m *testing.M) { os.Exit(harness.RunTests(m)) }

// result of one plugin run.
type result struct {
	stdout, stderr string
	err            error
}

func (s *env) plugin(t *testing.T, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, pluginBin(t), append([]string{"--kubeconfig", s.Kubeconfig, "--context", "cl02"}, args...)...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	cmd.Env = append(os.Environ(), "KUBECONFIG=")
	err := cmd.Run()
	return result{o.String(), e.String(), err}
}

type env struct {
	*scenario.Scenario
	kubectl string
}

func setUp(t *testing.T) *env {
	t.Helper()
	assets := harness.AssetsDir(t)
	s, err := scenario.Up(t, assets, scenario.Options{AgentBinary: agentBin(t), Aggregation: true, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	return &env{Scenario: s, kubectl: harness.Kubectl(t)}
}

func TestConnectEndToEnd(t *testing.T) {
	s := setUp(t)
	ctx := context.Background()

	t.Run("get-ip prints the remapped address", func(t *testing.T) {
		r := s.plugin(t, "get-ip", "--remote", "cl01")
		if r.err != nil || strings.TrimSpace(r.stdout) != scenario.FinalIP {
			t.Fatalf("get-ip = %q (stderr %q, err %v), want %s", r.stdout, r.stderr, r.err, scenario.FinalIP)
		}
	})

	t.Run("connect -- kubectl get ns reaches cl02", func(t *testing.T) {
		r := s.plugin(t, "connect", "--remote", "cl01", "--", s.kubectl, "get", "ns", "-o", "name")
		if r.err != nil {
			t.Fatalf("connect: %v\nstdout: %s\nstderr: %s", r.err, r.stdout, r.stderr)
		}
		if !strings.Contains(r.stdout, "namespace/"+scenario.OnlyInProvider) {
			t.Fatalf("kubectl through connect did not list %s (cl02 only):\n%s", scenario.OnlyInProvider, r.stdout)
		}
		assertProxied(t, s)
	})

	t.Run("connect passes on the command's exit status", func(t *testing.T) {
		r := s.plugin(t, "connect", "--remote", "cl01", "--", s.kubectl, "get", "ns", "does-not-exist")
		var exit *exec.ExitError
		if !errors.As(r.err, &exit) || exit.ExitCode() != 1 || !strings.Contains(r.stderr, "not found") {
			t.Fatalf("want kubectl's exit status 1 and its NotFound message, got err=%v stderr=%q", r.err, r.stderr)
		}
	})

	t.Run("print-kubeconfig gives client-go a proxy-url kubeconfig", func(t *testing.T) {
		r := s.plugin(t, "connect", "--remote", "cl01", "--print-kubeconfig")
		if r.err != nil {
			t.Fatalf("%v: %s", r.err, r.stderr)
		}
		cfg, err := clientcmd.RESTConfigFromKubeConfig([]byte(r.stdout))
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := clientcmd.Load([]byte(r.stdout))
		if got := raw.Clusters[raw.Contexts[raw.CurrentContext].Cluster].ProxyURL; got != "http://"+s.ProxyAddr {
			t.Fatalf("proxy-url = %q, want http://%s", got, s.ProxyAddr)
		}
		cs := kubernetes.NewForConfigOrDie(cfg)
		if _, err := cs.CoreV1().Namespaces().Get(ctx, scenario.OnlyInProvider, metav1.GetOptions{}); err != nil {
			t.Fatalf("client-go through proxy-url: %v", err)
		}
	})

	t.Run("a watch through the local listener receives an event", func(t *testing.T) {
		kubeconfig := startConnect(t, s.Kubeconfig, "--remote", "cl01")
		cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(cfg.Host, "https://127.0.0.1:") || cfg.TLSClientConfig.ServerName == "" {
			t.Fatalf("listener kubeconfig: server %s, tls-server-name %q", cfg.Host, cfg.TLSClientConfig.ServerName)
		}
		watchSeesCreate(t, s, kubeconfig, "watched")
	})

	t.Run("aggregated API through connect shows the tunnelled user", func(t *testing.T) {
		aggregated.Start(t, s.CL02)
		r := s.plugin(t, "connect", "--remote", "cl01", "--", s.kubectl, "get", aggregated.Resource+"."+aggregated.Group, "-o", "name")
		if r.err != nil {
			t.Fatalf("%v\n%s", r.err, r.stderr)
		}
		if want := "whoami.demo.apiproxy.io/admin-cl02"; strings.TrimSpace(r.stdout) != want {
			t.Fatalf("aggregated whoamis = %q, want %q", r.stdout, want)
		}
	})

	t.Run("merge adds a context with proxy-url", func(t *testing.T) {
		copyPath := filepath.Join(t.TempDir(), "kubeconfig")
		b, _ := os.ReadFile(s.Kubeconfig)
		if err := os.WriteFile(copyPath, b, 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(pluginBin(t), "--kubeconfig", copyPath, "--context", "cl02", "connect", "--remote", "cl01", "--merge")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		out, stderr, err := harness.RunKubectl(ctx, t, copyPath, "--context", "cl02-via-apiproxy", "get", "ns", scenario.OnlyInProvider, "-o", "name")
		if err != nil || strings.TrimSpace(out) != "namespace/"+scenario.OnlyInProvider {
			t.Fatalf("kubectl --context cl02-via-apiproxy: %q %q %v", out, stderr, err)
		}
		cfg, _ := clientcmd.LoadFromFile(copyPath)
		if cfg.Clusters["cl02-via-apiproxy"].ProxyURL != "http://"+s.ProxyAddr || cfg.CurrentContext != "cl02" {
			t.Fatalf("merged kubeconfig: proxy-url %q, current context %q", cfg.Clusters["cl02-via-apiproxy"].ProxyURL, cfg.CurrentContext)
		}
	})

	t.Run("a wrong tls-server-name is named with a hint", func(t *testing.T) {
		r := s.plugin(t, "connect", "--remote", "cl01", "--tls-server-name", "wrong.example", "--", s.kubectl, "get", "ns")
		if r.err == nil || !strings.Contains(r.stderr, "--tls-server-name") || !strings.Contains(r.stderr, "wrong.example") {
			t.Fatalf("want a TLS name error with a --tls-server-name hint, got err=%v stderr=%q", r.err, r.stderr)
		}
	})

	// Last: it stops the proxy.
	t.Run("proxy stopped: connect fails fast naming the address", func(t *testing.T) {
		s.StopProxy()
		r := s.plugin(t, "connect", "--remote", "cl01", "--dial-timeout", "3s", "--", s.kubectl, "get", "ns")
		if r.err == nil || !strings.Contains(r.stderr, s.ProxyAddr) || !strings.Contains(r.stderr, "cannot reach proxy") {
			t.Fatalf("want an error naming %s, got err=%v stderr=%q", s.ProxyAddr, r.err, r.stderr)
		}
		if strings.Contains(r.stdout, "NAME") {
			t.Fatalf("the command ran although the proxy is down: %q", r.stdout)
		}
	})
}

// assertProxied checks that the proxy logged tunnels: the traffic really went through it.
func assertProxied(t *testing.T, s *env) {
	t.Helper()
	// One log line per tunnel names the authority requested: the API server's address.
	u, err := url.Parse(s.CL02.Server)
	if err != nil {
		t.Fatal(err)
	}
	authority := u.Host
	if b, ok := scenario.WaitForLog(s.ProxyLog, "authority=\""+authority+"\"", 10*time.Second); !ok {
		t.Fatalf("agent proxy logged no tunnel to %s; its log:\n%s", authority, b)
	}
}

// watchSeesCreate watches ConfigMaps with kubeconfig (a tunnel to cl02), creates one named name in
// cl02 directly, and requires the watch to deliver its ADDED event.
func watchSeesCreate(t *testing.T, s *env, kubeconfig, name string) {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	w, err := kubernetes.NewForConfigOrDie(cfg).CoreV1().ConfigMaps("default").Watch(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if _, err := s.CL02.Clientset(t).CoreV1().ConfigMaps("default").Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for ev := range w.ResultChan() {
		if obj, ok := ev.Object.(*corev1.ConfigMap); ok && ev.Type == watch.Added && obj.Name == name {
			return
		}
	}
	t.Fatalf("watch through %s ended without the ADDED event of %s", kubeconfig, name)
}
