package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/apiproxy/apiproxy/pkg/hops"
	"github.com/apiproxy/apiproxy/pkg/tunnel"
	"github.com/apiproxy/apiproxy/test/harness"
	"github.com/apiproxy/apiproxy/test/harness/nodestandin"
	"github.com/apiproxy/apiproxy/test/scenario"
	"github.com/apiproxy/apiproxy/test/testnet"
)

const (
	relayNamespace = "apiproxy-system"
	strictNS       = "relay-strict" // a proxy without --allow-target
	echoPrefix     = "pong:"
)

var proxyLabels = map[string]string{"app.kubernetes.io/part-of": "apiproxy", "app.kubernetes.io/component": "proxy"}

type viaEnv struct {
	*env
	relayLog string
}

// setUpVia: the scenario with a node stand-in in each cluster; cl01's proxy pod is a real `agent
// proxy` (upstream cl01's API server, --allow-target for cl02's remapped CIDR on the proxy port);
// cl02 has a pod "web" whose port 8080 echoes and whose exec upper-cases stdin.
func setUpVia(t *testing.T) *viaEnv {
	t.Helper()
	assets := harness.AssetsDir(t)
	dir := t.TempDir()
	n1, err := nodestandin.New(t, "cl01-node", filepath.Join(dir, "n1"))
	if err != nil {
		t.Fatal(err)
	}
	n2, err := nodestandin.New(t, "cl02-node", filepath.Join(dir, "n2"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := scenario.Up(t, assets, scenario.Options{AgentBinary: agentBin(t), Dir: dir,
		ExtraArgs: map[string]map[string][]string{"cl01": n1.APIServerArgs(), "cl02": n2.APIServerArgs()}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := n1.Register(ctx, s.CL01.Config); err != nil {
		t.Fatal(err)
	}
	if err := n2.Register(ctx, s.CL02.Config); err != nil {
		t.Fatal(err)
	}
	cl01 := s.CL01.Clientset(t)
	v := &viaEnv{env: &env{Scenario: s, kubectl: harness.Kubectl(t)}}
	for _, ns := range []string{relayNamespace, strictNS} {
		if _, err := cl01.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		var allow []string
		if ns == relayNamespace {
			allow = relayAllowTargets(t, v.env)
		}
		addr, log := startAgentProxy(t, s.CL01.Server, dir, ns, allow...)
		if ns == relayNamespace {
			v.relayLog = log
		}
		if _, err := n1.AddPod(ctx, s.CL01.Config, nodestandin.Pod{Namespace: ns, Name: "apiproxy-proxy-0", Labels: proxyLabels, Ports: map[int32]string{8118: addr}}); err != nil {
			t.Fatal(err)
		}
	}
	echo := nodestandin.EchoServer(t, echoPrefix)
	if _, err := n2.AddPod(ctx, s.CL02.Config, nodestandin.Pod{Namespace: "default", Name: "web", Ports: map[int32]string{8080: echo}, Exec: nodestandin.UpperExec}); err != nil {
		t.Fatal(err)
	}
	return v
}

// relayAllowTargets are the --allow-target arguments that `install --relay` renders for cl01's proxy
// (from cl01's Liqo Configuration for cl02), read from a server-side dry run, so the relay under
// test is configured exactly as install would configure it.
func relayAllowTargets(t *testing.T, e *env) []string {
	t.Helper()
	cmd := exec.Command(pluginBin(t), "--kubeconfig", e.Kubeconfig, "--context", "cl01", "-n", relayNamespace,
		"install", "--relay", "--dry-run=server", "-o", "json")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("install --relay --dry-run=server: %v\n%s", err, stderr.String())
	}
	var list struct {
		Items []appsv1.Deployment `json:"items"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &list); err != nil {
		t.Fatalf("install -o json: %v\n%s", err, stdout.String())
	}
	var allow []string
	for _, d := range list.Items {
		if d.Kind != "Deployment" || d.Name != "apiproxy-proxy" {
			continue
		}
		args := d.Spec.Template.Spec.Containers[0].Args
		for i, a := range args {
			if a == "--allow-target" && i+1 < len(args) {
				allow = append(allow, a, args[i+1])
			}
		}
	}
	if want := []string{"--allow-target", scenario.ConsumerRemappedCIDR + ":8118"}; !slices.Equal(allow, want) {
		t.Fatalf("install --relay rendered %v for cl01's proxy, want %v", allow, want)
	}
	return allow
}

// startAgentProxy runs a real `agent proxy` on a free loopback port with upstream server's address.
func startAgentProxy(t *testing.T, server, dir, name string, extra ...string) (addr, logPath string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr = l.Addr().String()
	l.Close()
	p, err := scenario.RunAgentProxy(t, agentBin(t), addr, server, filepath.Join(dir, "relay-"+name+".log"), extra...)
	if err != nil {
		t.Fatal(err)
	}
	return addr, p.Log
}

// startConnect runs `connect ARGS...` in listener mode and returns the kubeconfig it printed.
func startConnect(t *testing.T, kubeconfig string, args ...string) string {
	t.Helper()
	path, _ := startConnectLog(t, kubeconfig, args...)
	return path
}

// startConnectLog is startConnect, also returning connect's stderr as it is written.
func startConnectLog(t *testing.T, kubeconfig string, args ...string) (string, *testnet.SyncBuffer) {
	t.Helper()
	cmd := exec.Command(pluginBin(t), append([]string{"--kubeconfig", kubeconfig, "--context", "cl02", "connect"}, args...)...)
	cmd.Env = append(os.Environ(), "KUBECONFIG=")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &testnet.SyncBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "export KUBECONFIG="); ok {
				lines <- v
			}
		}
		done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		t.Logf("connect stderr: %s", stderr.String())
		_ = cmd.Process.Signal(syscall.SIGINT)
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("connect %v exited with %v after SIGINT, want a clean exit", args, err)
			}
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
			t.Errorf("connect %v did not exit on SIGINT", args)
		}
	})
	select {
	case path := <-lines:
		return path, stderr
	case err := <-done:
		done <- err // for the cleanup, which must not wait for an exit it will never see again
		t.Fatalf("connect %v exited early: %v\n%s", args, err, stderr.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("connect %v printed no kubeconfig; stderr:\n%s", args, stderr.String())
	}
	return "", stderr
}

func TestConnectVia(t *testing.T) {
	s := setUpVia(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	t.Run("connect --via cl01 -- kubectl get ns reaches cl02 through cl01's proxy pod", func(t *testing.T) {
		r := s.plugin(t, "connect", "--remote", "cl01", "--via", "cl01", "--", s.kubectl, "get", "ns", "-o", "name")
		if r.err != nil || !strings.Contains(r.stdout, "namespace/"+scenario.OnlyInProvider) {
			t.Fatalf("connect --via: %v\nstdout: %s\nstderr: %s", r.err, r.stdout, r.stderr)
		}
		if !strings.Contains(r.stderr, "port-forward session to pod "+relayNamespace+"/apiproxy-proxy-0") {
			t.Errorf("no port-forward session reported: %s", r.stderr)
		}
		// Both proxies carried it: cl01's relayed to cl02's proxy, which tunnelled to cl02's API server.
		if relay, ok := scenario.WaitForLog(s.relayLog, `authority="`+s.ProxyAddr+`"`, 10*time.Second); !ok {
			t.Fatalf("cl01's proxy logged no tunnel to %s:\n%s", s.ProxyAddr, relay)
		}
		assertProxied(t, s.env)
	})

	t.Run("a watch through the relay receives an event", func(t *testing.T) {
		kubeconfig := startConnect(t, s.Kubeconfig, "--remote", "cl01", "--via", "cl01")
		watchSeesCreate(t, s.env, kubeconfig, "watched-via")
	})

	// Issue 12's stall: each connection is closed by the API server first (Connection: close), and
	// the client still writes after its EOF (TLS records and close_notify), as a client does when it
	// closes after the server. All 200 must open on the one port-forward session: a replaced session
	// is logged. (Before the fix, about one dial in ten needed a new session.)
	t.Run("200 sequential dials through one relay session", func(t *testing.T) {
		kubeconfig, stderr := startConnectLog(t, s.Kubeconfig, "--remote", "cl01", "--via", "cl01")
		cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			t.Fatal(err)
		}
		tlsConfig, err := rest.TLSConfigFor(cfg)
		if err != nil {
			t.Fatal(err)
		}
		listener := strings.TrimPrefix(cfg.Host, "https://")
		for i := range 200 {
			if err := closedByServer(listener, tlsConfig); err != nil {
				t.Fatalf("dial %d: %v\nconnect stderr:\n%s", i, err, stderr.String())
			}
		}
		log := stderr.String()
		if n := strings.Count(log, "port-forward session to pod"); n != 1 || strings.Contains(log, "no stream opened") {
			t.Fatalf("200 dials used %d port-forward sessions (want 1):\n%s", n, log)
		}
	})

	t.Run("a CONNECT to any other address through the relay reaches only cl01's API server", func(t *testing.T) {
		local := nodestandin.PortForward(t, s.kubectl, nil, "--kubeconfig", s.CL01.Kubeconfig, "-n", relayNamespace, "port-forward", "pod/apiproxy-proxy-0", ":8118")
		u, err := url.Parse(s.CL02.Server)
		if err != nil {
			t.Fatal(err)
		}
		cl02 := u.Host
		for _, target := range []string{cl02, "127.81.1.1:443", "kubernetes.default.svc:443"} {
			if got := serverCA(t, local, target, s); got != "cl01" {
				t.Errorf("CONNECT %s through cl01's proxy reached %s, want cl01's API server", target, got)
			}
		}
	})

	// Upgrades (exec with stdin/stdout/stderr, port-forward) through every tunnel kind.
	kinds := map[string]func(t *testing.T) string{
		"direct proxy-url": func(t *testing.T) string {
			r := s.plugin(t, "connect", "--remote", "cl01", "--print-kubeconfig")
			if r.err != nil {
				t.Fatalf("%v: %s", r.err, r.stderr)
			}
			p := filepath.Join(t.TempDir(), "kubeconfig")
			if err := os.WriteFile(p, []byte(r.stdout), 0o600); err != nil {
				t.Fatal(err)
			}
			return p
		},
		"local listener": func(t *testing.T) string { return startConnect(t, s.Kubeconfig, "--remote", "cl01") },
		"relay":          func(t *testing.T) string { return startConnect(t, s.Kubeconfig, "--remote", "cl01", "--via", "cl01") },
	}
	for _, kind := range []string{"direct proxy-url", "local listener", "relay"} {
		t.Run("exec and port-forward to cl02's pod through "+kind, func(t *testing.T) {
			kc := kinds[kind](t)
			before, relayBefore := proxyLogSize(t, s.ProxyLog), proxyLogSize(t, s.relayLog)
			out, stderr, err := nodestandin.Exec(ctx, s.kubectl, []string{"KUBECONFIG="}, "data from the laptop", "--kubeconfig", kc, "exec", "-i", "web", "--", "upper")
			if err != nil || out != "DATA FROM THE LAPTOP" || !strings.Contains(stderr, "done") {
				t.Fatalf("exec: out %q stderr %q err %v", out, stderr, err)
			}
			_, _, err = nodestandin.Exec(ctx, s.kubectl, []string{"KUBECONFIG="}, "", "--kubeconfig", kc, "exec", "web", "--", "exit", "4")
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 4 {
				t.Fatalf("exec exit status: %v", err)
			}
			local := nodestandin.PortForward(t, s.kubectl, []string{"KUBECONFIG="}, "--kubeconfig", kc, "port-forward", "pod/web", ":8080")
			nodestandin.RoundTrip(t, local, echoPrefix, "hello")
			nodestandin.RoundTrip(t, local, echoPrefix, strings.Repeat("y", 128<<10))
			if !scenario.WaitForLogGrowth(s.ProxyLog, before, 10*time.Second) {
				t.Fatalf("cl02's proxy logged nothing: the upgrades did not go through it")
			}
			if kind == "relay" && !scenario.WaitForLogGrowth(s.relayLog, relayBefore, 10*time.Second) {
				t.Fatalf("cl01's proxy logged nothing: the relay did not carry the upgrades")
			}
		})
	}

	t.Run("error: no ready proxy pod names the namespace and selector", func(t *testing.T) {
		r := s.plugin(t, "connect", "--remote", "cl01", "--via", "cl01", "--via-namespace", "default", "--", s.kubectl, "get", "ns")
		if r.err == nil || !strings.Contains(r.stderr, `no ready pod of the apiproxy proxy in namespace "default" of context "cl01"`) || !strings.Contains(r.stderr, "app.kubernetes.io/component=proxy") {
			t.Fatalf("err %v stderr %q", r.err, r.stderr)
		}
	})

	t.Run("error: port-forward forbidden names pods/portforward, and the documented Role fixes it", func(t *testing.T) {
		kc := limitedKubeconfig(t, s)
		run := func() result {
			c, cancel := context.WithTimeout(ctx, 60*time.Second)
			defer cancel()
			cmd := exec.CommandContext(c, pluginBin(t), "--kubeconfig", kc, "--context", "cl02", "connect", "--remote", "cl01", "--via", "cl01-limited", "--", s.kubectl, "get", "ns", "-o", "name")
			cmd.Env = append(os.Environ(), "KUBECONFIG=")
			var o, e bytes.Buffer
			cmd.Stdout, cmd.Stderr = &o, &e
			err := cmd.Run()
			return result{o.String(), e.String(), err}
		}
		r := run()
		if r.err == nil || !strings.Contains(r.stderr, "forbidden") || !strings.Contains(r.stderr, `"pods/portforward" in namespace "apiproxy-system"`) {
			t.Fatalf("err %v stderr %q", r.err, r.stderr)
		}
		grantPortForward(t, s)
		if r := run(); r.err != nil || !strings.Contains(r.stdout, "namespace/"+scenario.OnlyInProvider) {
			t.Fatalf("with pods/portforward granted: %v\n%s\n%s", r.err, r.stdout, r.stderr)
		}
	})

	t.Run("error: the relay hop refused (cl01's proxy does not allow the target)", func(t *testing.T) {
		r := s.plugin(t, "connect", "--remote", "cl01", "--via", "cl01", "--via-namespace", strictNS, "--", s.kubectl, "get", "ns")
		if r.err == nil || !strings.Contains(r.stderr, "did not relay to "+s.ProxyAddr) || !strings.Contains(r.stderr, "--allow-target") {
			t.Fatalf("err %v stderr %q", r.err, r.stderr)
		}
	})

	t.Run("error: cl02's proxy unreachable from cl01", func(t *testing.T) {
		r := s.plugin(t, "connect", "--proxy-url", "http://127.81.0.9:8118", "--via", "cl01", "--dial-timeout", "5s", "--", s.kubectl, "get", "ns")
		if r.err == nil || !strings.Contains(r.stderr, "could not reach the remote proxy 127.81.0.9:8118") || !strings.Contains(r.stderr, "502") {
			t.Fatalf("err %v stderr %q", r.err, r.stderr)
		}
	})

	t.Run("check --via: the relay hop, then TLS, readyz and access through it", func(t *testing.T) {
		r := s.plugin(t, "check", "--remote", "cl01", "--via", "cl01", "--via-namespace", relayNamespace)
		if r.err != nil {
			t.Fatalf("check --via: %v\n%s%s", r.err, r.stdout, r.stderr)
		}
		for _, want := range []string{"OK  relay", "SKIP  tcp", "OK  tls", "OK  readyz", "OK  access"} {
			if !strings.Contains(strings.Join(strings.Fields(r.stdout), "  "), want) {
				t.Errorf("check --via lacks %q:\n%s", want, r.stdout)
			}
		}
		r = s.plugin(t, "check", "--remote", "cl01", "--via", "cl01", "--via-namespace", strictNS)
		if r.err == nil || !strings.Contains(r.stdout, "FAIL") || !strings.Contains(r.stdout, "did not relay to "+s.ProxyAddr) {
			t.Errorf("check --via through a proxy without --allow-target: %v\n%s", r.err, r.stdout)
		}
	})

	// Last: it replaces cl02's proxy with one that authenticates tunnels. The relay in cl01 carries
	// the CONNECT with its Proxy-Authorization to cl02's proxy, which reviews it.
	t.Run("--via through an authenticating proxy: --proxy-token reaches cl02's proxy through the relay", func(t *testing.T) {
		ctx := context.Background()
		cs := s.CL02.Clientset(t)
		if _, err := cs.CoreV1().ServiceAccounts("default").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "laptop"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		apply := exec.Command(s.kubectl, "--kubeconfig", s.CL02.Kubeconfig, "apply", "-f", "-")
		apply.Stdin = strings.NewReader(hops.TunnelRoleJSON)
		if out, err := apply.CombinedOutput(); err != nil {
			t.Fatalf("kubectl apply the tunnel role: %v\n%s", err, out)
		}
		if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "laptop-tunnels"},
			RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "apiproxy-tunnel"},
			Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: "laptop", Namespace: "default"}}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		token := saToken(ctx, t, cs, "default", "laptop")
		s.StopProxy()
		if _, err := scenario.RunAgentProxy(t, agentBin(t), s.ProxyAddr, s.CL02.Config.Host, filepath.Join(t.TempDir(), "auth-proxy.log"),
			"--auth", "tokenreview", "--kubeconfig", s.CL02.Kubeconfig); err != nil {
			t.Fatal(err)
		}
		// The scenario's cl02 user has a client certificate only.
		r := s.plugin(t, "connect", "--remote", "cl01", "--via", "cl01", "--", s.kubectl, "get", "ns", "-o", "name")
		if r.err == nil || !strings.Contains(r.stderr, "--proxy-token") {
			t.Fatalf("connect --via as a certificate user: %v, want the --proxy-token message\n%s", r.err, r.stderr)
		}
		r = s.plugin(t, "connect", "--remote", "cl01", "--via", "cl01", "--proxy-token", token, "--", s.kubectl, "get", "ns", scenario.OnlyInProvider, "-o", "name")
		if r.err != nil || strings.TrimSpace(r.stdout) != "namespace/"+scenario.OnlyInProvider || strings.Contains(r.stderr, token) {
			t.Fatalf("connect --via --proxy-token: %v\nstdout: %s\nstderr: %s", r.err, r.stdout, r.stderr)
		}
		r = s.plugin(t, "check", "--remote", "cl01", "--via", "cl01", "--proxy-token", token)
		if r.err != nil || strings.Contains(r.stdout+r.stderr, token) {
			t.Fatalf("check --via --proxy-token: %v\n%s%s", r.err, r.stdout, r.stderr)
		}
	})

	t.Run("error: --via with --print-kubeconfig is refused", func(t *testing.T) {
		r := s.plugin(t, "connect", "--remote", "cl01", "--via", "cl01", "--print-kubeconfig")
		if r.err == nil || !strings.Contains(r.stderr, "cannot express the port-forward hop") || r.stdout != "" {
			t.Fatalf("err %v stdout %q stderr %q", r.err, r.stdout, r.stderr)
		}
	})
}

// serverCA opens a CONNECT to target through the proxy at proxyAddr and says whose CA signed the
// API server that answered: "cl01", "cl02" or "none".
func serverCA(t *testing.T, proxyAddr, target string, s *viaEnv) string {
	t.Helper()
	for _, cl := range []*harness.Cluster{s.CL01, s.CL02} {
		c, err := tunnel.DialConnect(context.Background(), proxyAddr, target)
		if err != nil {
			t.Fatalf("CONNECT %s through %s: %v", target, proxyAddr, err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(cl.Config.CAData)
		tc := tls.Client(c, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
		_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
		err = tc.Handshake()
		c.Close()
		if err == nil {
			return cl.Name
		}
	}
	return "none"
}

func proxyLogSize(t *testing.T, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

// limitedKubeconfig is the scenario's kubeconfig plus a context "cl01-limited": a ServiceAccount of
// cl01 that may list pods in apiproxy-system but not port-forward to them.
func limitedKubeconfig(t *testing.T, s *viaEnv) string {
	t.Helper()
	ctx := context.Background()
	cs := s.CL01.Clientset(t)
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: relayNamespace, Name: "operator"}}
	if _, err := cs.CoreV1().ServiceAccounts(relayNamespace).Create(ctx, sa, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Namespace: relayNamespace, Name: "list-pods"},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list"}}}}
	bindRole(t, s, role)
	tr, err := cs.CoreV1().ServiceAccounts(relayNamespace).CreateToken(ctx, "operator", &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.LoadFromFile(s.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg.AuthInfos["cl01-limited"] = &clientcmdapi.AuthInfo{Token: tr.Status.Token}
	cfg.Contexts["cl01-limited"] = &clientcmdapi.Context{Cluster: cfg.Contexts["cl01"].Cluster, AuthInfo: "cl01-limited"}
	p := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, p); err != nil {
		t.Fatal(err)
	}
	return p
}

// grantPortForward creates the Role the README documents for relay users.
func grantPortForward(t *testing.T, s *viaEnv) {
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Namespace: relayNamespace, Name: "apiproxy-relay-user"},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list"}},
			{APIGroups: []string{""}, Resources: []string{"pods/portforward"}, Verbs: []string{"create"}},
		}}
	bindRole(t, s, role)
}

func bindRole(t *testing.T, s *viaEnv, role *rbacv1.Role) {
	t.Helper()
	ctx := context.Background()
	cs := s.CL01.Clientset(t)
	if _, err := cs.RbacV1().Roles(relayNamespace).Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rb := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Namespace: relayNamespace, Name: role.Name},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: role.Name},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: relayNamespace, Name: "operator"}}}
	if _, err := cs.RbacV1().RoleBindings(relayNamespace).Create(ctx, rb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// RBAC changes reach the authorizer's cache quickly but not synchronously.
	time.Sleep(time.Second)
}

// closedByServer asks the API server behind addr for /version on a new TLS connection with
// "Connection: close", reads the answer up to the server's close and the connection's EOF, then
// writes twice more and closes (close_notify): bytes sent after the far end has gone.
func closedByServer(addr string, cfg *tls.Config) error {
	raw, err := net.DialTimeout("tcp", addr, 30*time.Second)
	if err != nil {
		return err
	}
	c := tls.Client(raw, cfg)
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(c, "GET /version HTTP/1.1\r\nHost: kubernetes\r\nConnection: close\r\n\r\n"); err != nil {
		return err
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return err
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte("gitVersion")) {
		return fmt.Errorf("/version: %s %q %v", resp.Status, body, err)
	}
	// Up to the server's close_notify, then the connection's EOF (the tunnel has ended).
	if _, err := io.Copy(io.Discard, br); err != nil {
		return fmt.Errorf("waiting for the server to close: %w", err)
	}
	if _, err := io.Copy(io.Discard, raw); err != nil {
		return fmt.Errorf("waiting for the tunnel's EOF: %w", err)
	}
	_, _ = io.WriteString(c, "late 1")
	_, _ = io.WriteString(c, "late 2")
	return nil
}
