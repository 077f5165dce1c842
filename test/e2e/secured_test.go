package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/apiproxy/apiproxy/pkg/hops"
	"github.com/apiproxy/apiproxy/pkg/install"
	"github.com/apiproxy/apiproxy/pkg/proxy"
	"github.com/apiproxy/apiproxy/test/harness"
	"github.com/apiproxy/apiproxy/test/harness/nodestandin"
	"github.com/apiproxy/apiproxy/test/scenario"
	"github.com/apiproxy/apiproxy/test/testnet"
)

// securedEnv is the seed's scenario with cl02's proxy replaced by the real `agent proxy --auth
// tokenreview --allow-source ... --audit-log`, whose reviews run as the proxy's ServiceAccount with
// the RBAC `install --auth tokenreview` renders (system:auth-delegator), and kubeconfigs whose cl02
// user is a ServiceAccount token (tokenKC) or the admin client certificate (certKC, the scenario's).
type securedEnv struct {
	*scenario.Scenario
	kubectl          string
	token            string // the peer ServiceAccount's token
	tokenKC, certKC  string
	reviewKC, audit  string
	dir              string
	stderrs          []string // every plugin and kubectl stderr, checked for the token at the end
	proxy            *scenario.Process
	proxyLogs        []string
	peerUser         string
	proxyReviewerSA  string
	proxyReviewerCRB string
}

const (
	peerNamespace = "peers"
	peerSA        = "cl01"
)

func setUpSecured(t *testing.T) *securedEnv {
	t.Helper()
	dir := t.TempDir()
	node, err := nodestandin.New(t, "cl02-node", filepath.Join(dir, "node"))
	if err != nil {
		t.Fatal(err)
	}
	sc, err := scenario.Up(t, harness.AssetsDir(t), scenario.Options{AgentBinary: agentBin(t), Dir: dir,
		ExtraArgs: map[string]map[string][]string{"cl02": node.APIServerArgs()}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := node.Register(ctx, sc.CL02.Config); err != nil {
		t.Fatal(err)
	}
	if _, err := node.AddPod(ctx, sc.CL02.Config, nodestandin.Pod{Namespace: "default", Name: "web", Ports: map[int32]string{8080: nodestandin.EchoServer(t, echoPrefix)}, Exec: nodestandin.UpperExec}); err != nil {
		t.Fatal(err)
	}
	e := &securedEnv{Scenario: sc, kubectl: harness.Kubectl(t), dir: dir, audit: filepath.Join(dir, "audit.jsonl"),
		peerUser: "system:serviceaccount:" + peerNamespace + ":" + peerSA}
	cs := sc.CL02.Clientset(t)

	// The proxy's review identity exactly as install renders it for --auth tokenreview: its
	// namespace, ServiceAccount and the ClusterRoleBinding to system:auth-delegator.
	r := e.plugin(t, sc.CL02.Kubeconfig, "install", "--auth", "tokenreview", "--network-policy=false", "--dry-run=client", "-o", "json")
	if r.err != nil {
		t.Fatalf("install --dry-run: %v\n%s", r.err, r.stderr)
	}
	var list struct{ Items []map[string]any }
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil {
		t.Fatal(err)
	}
	dyn := sc.CL02.Dynamic(t)
	tunnelRole := false
	for _, item := range list.Items {
		u := &unstructured.Unstructured{Object: item}
		var gvr schema.GroupVersionResource
		switch {
		case u.GetKind() == "Namespace":
			gvr = corev1.SchemeGroupVersion.WithResource("namespaces")
		case u.GetKind() == "ServiceAccount" && u.GetName() == "apiproxy-proxy":
			gvr, e.proxyReviewerSA = corev1.SchemeGroupVersion.WithResource("serviceaccounts"), u.GetName()
		case u.GetKind() == "ClusterRoleBinding" && u.GetName() == install.AuthBindingName(install.DefaultNamespace):
			gvr, e.proxyReviewerCRB = rbacv1.SchemeGroupVersion.WithResource("clusterrolebindings"), u.GetName()
		case u.GetKind() == "ClusterRole" && u.GetName() == install.TunnelRoleName:
			// Created here, but only granted once the 403 has been seen.
			gvr, tunnelRole = rbacv1.SchemeGroupVersion.WithResource("clusterroles"), true
		default:
			continue
		}
		if _, err := dyn.Resource(gvr).Namespace(u.GetNamespace()).Create(ctx, u, metav1.CreateOptions{}); err != nil {
			t.Fatalf("creating %s %s from install's rendering: %v", u.GetKind(), u.GetName(), err)
		}
	}
	if e.proxyReviewerSA == "" || e.proxyReviewerCRB == "" || !tunnelRole {
		t.Fatalf("install --auth tokenreview rendered no ServiceAccount apiproxy-proxy, no binding %s or no ClusterRole %s", install.AuthBindingName(install.DefaultNamespace), install.TunnelRoleName)
	}
	reviewToken := saToken(ctx, t, cs, install.DefaultNamespace, e.proxyReviewerSA)
	e.reviewKC = writeKubeconfig(t, filepath.Join(dir, "proxy-reviews.yaml"), sc.CL02.Server, sc.CL02.Config.CAData, &clientcmdapi.AuthInfo{Token: reviewToken})

	// The peer: a ServiceAccount of cl02 that may do its work inside (read pods and Liqo's IP
	// objects, exec, port-forward) but has no right to tunnel yet.
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: peerNamespace}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().ServiceAccounts(peerNamespace).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: peerSA}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "peer-work"}, Rules: []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"pods", "namespaces", "configmaps"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{""}, Resources: []string{"pods/exec", "pods/portforward"}, Verbs: []string{"get", "create"}},
		{APIGroups: []string{"ipam.liqo.io"}, Resources: []string{"ips"}, Verbs: []string{"get", "list"}},
	}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "peer-work"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "peer-work"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: peerSA, Namespace: peerNamespace}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.token = saToken(ctx, t, cs, peerNamespace, peerSA)

	// The scenario's kubeconfig (cl01 and cl02, admin client certificates) with cl02's user
	// replaced by the peer's token.
	e.certKC = sc.Kubeconfig
	raw, err := clientcmd.LoadFromFile(sc.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	raw.AuthInfos[raw.Contexts["cl02"].AuthInfo] = &clientcmdapi.AuthInfo{Token: e.token}
	e.tokenKC = filepath.Join(dir, "token.yaml")
	if err := clientcmd.WriteToFile(*raw, e.tokenKC); err != nil {
		t.Fatal(err)
	}
	return e
}

func saToken(ctx context.Context, t *testing.T, cs kubernetes.Interface, ns, name string) string {
	t.Helper()
	tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptrInt64(3600)}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenRequest for %s/%s: %v", ns, name, err)
	}
	return tr.Status.Token
}

func writeKubeconfig(t *testing.T, path, server string, ca []byte, user *clientcmdapi.AuthInfo) string {
	t.Helper()
	kc := clientcmdapi.NewConfig()
	kc.Clusters["c"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: ca}
	kc.AuthInfos["u"] = user
	kc.Contexts["c"] = &clientcmdapi.Context{Cluster: "c", AuthInfo: "u"}
	kc.CurrentContext = "c"
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// restartProxy replaces cl02's proxy by `agent proxy --auth tokenreview --kubeconfig <reviews>
// --audit-log <file>` plus extra, on the same remapped address.
func (e *securedEnv) restartProxy(t *testing.T, extra ...string) {
	t.Helper()
	if e.proxy != nil {
		e.proxy.Stop()
	} else {
		e.StopProxy()
	}
	log := filepath.Join(e.dir, "agent-proxy-"+strings.ReplaceAll(strings.Join(extra, "_"), "/", "_")+".log")
	args := append([]string{"--auth", "tokenreview", "--kubeconfig", e.reviewKC, "--audit-log", e.audit}, extra...)
	p, err := scenario.RunAgentProxy(t, agentBin(t), e.ProxyAddr, e.CL02.Config.Host, log, args...)
	if err != nil {
		t.Fatal(err)
	}
	e.proxy, e.proxyLogs = p, append(e.proxyLogs, log)
}

// plugin runs kubectl-apiproxy with kubeconfig (context cl02 unless the args say otherwise).
func (e *securedEnv) plugin(t *testing.T, kubeconfig string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, pluginBin(t), append([]string{"--kubeconfig", kubeconfig}, args...)...)
	var o, er bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &er
	cmd.Env = append(os.Environ(), "KUBECONFIG=")
	err := cmd.Run()
	e.stderrs = append(e.stderrs, er.String())
	return result{o.String(), er.String(), err}
}

func (e *securedEnv) connect(t *testing.T, kubeconfig string, args ...string) result {
	t.Helper()
	return e.plugin(t, kubeconfig, append([]string{"--context", "cl02", "connect", "--remote", "cl01"}, args...)...)
}

func (e *securedEnv) check(t *testing.T, kubeconfig string, args ...string) result {
	t.Helper()
	return e.plugin(t, kubeconfig, append([]string{"--context", "cl02", "check", "--remote", "cl01", "--dial-timeout", "5s"}, args...)...)
}

// hopLine is the line of hop in check's table.
func hopLine(out, hop string) string {
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) >= 2 && f[1] == hop {
			return sc.Text()
		}
	}
	return ""
}

func (e *securedEnv) auditRecords(t *testing.T) []proxy.AuditRecord {
	t.Helper()
	b, err := os.ReadFile(e.audit)
	if err != nil {
		t.Fatal(err)
	}
	var out []proxy.AuditRecord
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if line == "" {
			continue
		}
		var r proxy.AuditRecord
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		out = append(out, r)
	}
	return out
}

// rawConnectFrom sends one CONNECT from source (a loopback address) to the proxy and returns the
// status, or 0 when the proxy closed the connection without answering.
func (e *securedEnv) rawConnectFrom(t *testing.T, source, authority string, header ...string) int {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(source)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", e.ProxyAddr)
	if errors.Is(err, syscall.ECONNRESET) {
		return 0 // the reset beat the end of the handshake
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	head := "CONNECT " + authority + " HTTP/1.1\r\nHost: " + authority + "\r\n" + strings.Join(header, "")
	if _, err := c.Write([]byte(head + "\r\n")); err != nil {
		return 0
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodConnect})
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// The three mechanisms of issue 15 together, end to end, with real parts: cl02's real agent proxy
// with --auth tokenreview (reviews as the ServiceAccount install renders), --allow-source and
// --audit-log; `kubectl apiproxy connect --remote cl01` and `check` as a token user and as a
// certificate user; a printed kubeconfig used by kubectl and client-go; the audit trail; no token
// text anywhere.
func TestSecuredProxyEndToEnd(t *testing.T) {
	e := setUpSecured(t)
	ctx := context.Background()
	u, _ := url.Parse(e.CL02.Server)
	authority := u.Host
	t.Run("defaults leave today's users unaffected", func(t *testing.T) {
		// The scenario's proxy runs with no security flag: a CONNECT without credentials from
		// any loopback source gets its tunnel, and no audit file is written.
		if got := e.rawConnectFrom(t, "127.0.0.1", authority); got != http.StatusOK {
			t.Fatalf("a plain CONNECT to the default proxy: %d, want 200", got)
		}
		if _, err := os.Stat(e.audit); !os.IsNotExist(err) {
			t.Fatalf("audit file without --audit-log: %v", err)
		}
		// install's defaults on cl02 (Liqo's CRDs served, no peering Configuration here): no
		// NetworkPolicy, no review RBAC, a proxy without --auth or --allow-source.
		r := e.plugin(t, e.CL02.Kubeconfig, "install", "--dry-run=client", "-o", "json")
		if r.err != nil {
			t.Fatalf("install --dry-run: %v\n%s", r.err, r.stderr)
		}
		var list struct{ Items []map[string]any }
		if err := json.Unmarshal([]byte(r.stdout), &list); err != nil {
			t.Fatal(err)
		}
		sawProxy := false
		for _, item := range list.Items {
			u := &unstructured.Unstructured{Object: item}
			switch {
			case u.GetKind() == "NetworkPolicy", u.GetKind() == "ClusterRoleBinding" && u.GetName() == install.AuthBindingName(install.DefaultNamespace):
				t.Errorf("install's defaults render %s %s", u.GetKind(), u.GetName())
			case u.GetKind() == "Deployment" && u.GetName() == "apiproxy-proxy":
				sawProxy = true
				containers, _, _ := unstructured.NestedSlice(item, "spec", "template", "spec", "containers")
				args := strings.Join(stringSlice(containers[0].(map[string]any)["args"]), " ")
				if strings.Contains(args, "--auth") || strings.Contains(args, "--allow-source") || strings.Contains(args, "--audit-log") {
					t.Errorf("install's default proxy args: %s", args)
				}
			}
		}
		if !sawProxy {
			t.Fatalf("install rendered no proxy Deployment:\n%s", r.stdout)
		}
	})

	// This machine reaches 127.81.0.3 from 127.0.0.1: the allow-list admits exactly that source.
	e.restartProxy(t, "--allow-source", "127.0.0.1/32")

	t.Run("token user without the tunnels RBAC: 403 with the RBAC to grant", func(t *testing.T) {
		r := e.connect(t, e.tokenKC, "--", e.kubectl, "get", "pods", "-o", "name")
		if r.err == nil || !strings.Contains(r.stderr, "403") || !strings.Contains(r.stderr, hops.TunnelRoleJSON) || !strings.Contains(r.stderr, "--clusterrole=apiproxy-tunnel") {
			t.Fatalf("connect: %v, want a failure naming 403 and the role to grant\nstdout: %s\nstderr: %s", r.err, r.stdout, r.stderr)
		}
		t.Logf("connect without the tunnels RBAC:\n%s", r.stderr)
		r = e.check(t, e.tokenKC)
		if line := hopLine(r.stdout, "connect"); r.err == nil || !strings.HasPrefix(line, "FAIL") || !strings.Contains(line, "403") ||
			!strings.Contains(line, "tunnels.apiproxy.io") || !strings.Contains(line, `context "cl02"'s user's token`) {
			t.Fatalf("check: %v, connect hop %q\n%s%s", r.err, line, r.stdout, r.stderr)
		}
	})

	// What the README and the 403's fix tell the cluster admin to run, with real kubectl: one
	// clusterrolebinding to the role install --auth tokenreview rendered (setUpSecured created it
	// from install's rendering). kubectl create clusterrole cannot write that role (the resource is
	// served by no API), which is why install renders it.
	if _, stderr, err := harness.RunKubectl(ctx, t, e.CL02.Kubeconfig, "create", "clusterrole", "apiproxy-tunnel-by-hand", "--verb=create", "--resource=tunnels.apiproxy.io"); err == nil ||
		!strings.Contains(stderr, `doesn't have a resource type "tunnels"`) {
		t.Fatalf("kubectl create clusterrole --resource=tunnels.apiproxy.io: %v %s: install need not render the role any more", err, stderr)
	}
	if _, stderr, err := harness.RunKubectl(ctx, t, e.CL02.Kubeconfig, "create", "clusterrolebinding", "apiproxy-tunnel-cl01",
		"--clusterrole=apiproxy-tunnel", "--serviceaccount="+peerNamespace+":"+peerSA); err != nil {
		t.Fatalf("kubectl create clusterrolebinding: %v\n%s", err, stderr)
	}

	t.Run("check passes hop by hop with the token user", func(t *testing.T) {
		// The proxy remembers a denial for 5 s.
		var r result
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(time.Second) {
			if r = e.check(t, e.tokenKC); r.err == nil {
				break
			}
		}
		if r.err != nil {
			t.Fatalf("check after the binding: %v\n%s%s", r.err, r.stdout, r.stderr)
		}
		t.Logf("check as %s:\n%s", e.peerUser, r.stdout)
		if line := hopLine(r.stdout, "connect"); !strings.Contains(line, "407 without a token, then 200 with") {
			t.Errorf("connect hop %q: want the 407 and the token named", line)
		}
		if line := hopLine(r.stdout, "access"); !strings.HasPrefix(line, "OK") || !strings.Contains(line, e.peerUser) {
			t.Errorf("access hop %q: want OK as %s", line, e.peerUser)
		}
	})

	t.Run("token user: connect -- kubectl get, exec", func(t *testing.T) {
		r := e.connect(t, e.tokenKC, "--", e.kubectl, "get", "pods", "-o", "name")
		if r.err != nil || strings.TrimSpace(r.stdout) != "pod/web" {
			t.Fatalf("connect -- kubectl get pods: %v\nstdout: %s\nstderr: %s", r.err, r.stdout, r.stderr)
		}
		t.Logf("connect stderr:\n%s", r.stderr)
		r = e.connect(t, e.tokenKC, "--", e.kubectl, "exec", "web", "--", "echo", "through", "tokenreview")
		if r.err != nil || strings.TrimSpace(r.stdout) != "through tokenreview" {
			t.Fatalf("connect -- kubectl exec: %v\nstdout: %s\nstderr: %s", r.err, r.stdout, r.stderr)
		}
	})

	t.Run("node forwarder: --upstream-proxy credentials from install's Secret", func(t *testing.T) {
		testNodeForwarderCredentials(t, e, authority)
	})

	t.Run("token user: connect's listener, kubectl port-forward through it", func(t *testing.T) {
		// Its stderr joins the others checked for token text, once connect has stopped (cleanups
		// run last-registered first).
		var stderr *testnet.SyncBuffer
		t.Cleanup(func() {
			if stderr != nil {
				e.stderrs = append(e.stderrs, stderr.String())
			}
		})
		var kc string
		kc, stderr = startConnectLog(t, e.tokenKC, "--remote", "cl01")
		local := nodestandin.PortForward(t, e.kubectl, []string{"KUBECONFIG="}, "--kubeconfig", kc, "-n", "default", "port-forward", "pod/web", ":8080")
		nodestandin.RoundTrip(t, local, echoPrefix, "port-forward through connect and tokenreview")
	})

	t.Run("certificate user: --proxy-token is the way", func(t *testing.T) {
		r := e.connect(t, e.certKC, "--", e.kubectl, "get", "pods", "-o", "name")
		if r.err == nil || !strings.Contains(r.stderr, "--proxy-token") || !strings.Contains(r.stderr, "client certificate") {
			t.Fatalf("connect as a certificate user: %v, want the --proxy-token message\n%s", r.err, r.stderr)
		}
		t.Logf("certificate user's connect:\n%s", r.stderr)
		r = e.check(t, e.certKC)
		if line := hopLine(r.stdout, "connect"); r.err == nil || !strings.HasPrefix(line, "FAIL") || !strings.Contains(line, "--proxy-token") {
			t.Fatalf("check as a certificate user: %v, connect hop %q\n%s", r.err, line, r.stdout)
		}
		r = e.connect(t, e.certKC, "--proxy-token", e.token, "--", e.kubectl, "get", "ns", scenario.OnlyInProvider, "-o", "name")
		if r.err != nil || strings.TrimSpace(r.stdout) != "namespace/"+scenario.OnlyInProvider {
			t.Fatalf("connect --proxy-token: %v\nstdout: %s\nstderr: %s", r.err, r.stdout, r.stderr)
		}
		r = e.check(t, e.certKC, "--proxy-token", e.token)
		if line := hopLine(r.stdout, "connect"); r.err != nil || !strings.Contains(line, "--proxy-token") {
			t.Fatalf("check --proxy-token: %v, connect hop %q\n%s%s", r.err, line, r.stdout, r.stderr)
		}
	})

	t.Run("print-kubeconfig: the token in proxy-url, used by kubectl and client-go", func(t *testing.T) {
		r := e.connect(t, e.tokenKC, "--print-kubeconfig")
		if r.err != nil {
			t.Fatalf("%v\n%s", r.err, r.stderr)
		}
		raw, err := clientcmd.Load([]byte(r.stdout))
		if err != nil {
			t.Fatal(err)
		}
		pu, err := url.Parse(raw.Clusters[raw.Contexts[raw.CurrentContext].Cluster].ProxyURL)
		if err != nil || pu.Host != e.ProxyAddr {
			t.Fatalf("proxy-url host %v (%v), want %s", pu, err, e.ProxyAddr)
		}
		if pass, _ := pu.User.Password(); pass != e.token {
			t.Fatal("proxy-url does not carry the user's token as its password")
		}
		kc := filepath.Join(t.TempDir(), "printed.yaml")
		if err := os.WriteFile(kc, []byte(r.stdout), 0o600); err != nil {
			t.Fatal(err)
		}
		cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		out, stderr, err := harness.RunKubectl(cctx, t, kc, "get", "pods", "-n", "default", "-o", "name")
		e.stderrs = append(e.stderrs, stderr)
		if err != nil || strings.TrimSpace(out) != "pod/web" {
			t.Fatalf("kubectl with the printed kubeconfig: %q %v\n%s", out, err, stderr)
		}
		out, stderr, err = nodestandin.Exec(cctx, e.kubectl, []string{"KUBECONFIG="}, "quiet words", "--kubeconfig", kc, "-n", "default", "exec", "-i", "web", "--", "upper")
		e.stderrs = append(e.stderrs, stderr)
		if err != nil || out != "QUIET WORDS" {
			t.Fatalf("kubectl exec through proxy-url: %q %v\n%s", out, err, stderr)
		}
		local := nodestandin.PortForward(t, e.kubectl, []string{"KUBECONFIG="}, "--kubeconfig", kc, "-n", "default", "port-forward", "pod/web", ":8080")
		nodestandin.RoundTrip(t, local, echoPrefix, "hello through tokenreview")
		cfg, err := clientcmd.BuildConfigFromFlags("", kc)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kubernetes.NewForConfigOrDie(cfg).CoreV1().Pods("default").Get(cctx, "web", metav1.GetOptions{}); err != nil {
			t.Fatalf("client-go through proxy-url: %v", err)
		}
	})

	t.Run("the audit trail names the ServiceAccount", func(t *testing.T) {
		var allowed, forbidden bool
		for _, r := range e.auditRecords(t) {
			switch {
			case r.Auth == proxy.AuthAllowed && r.User == e.peerUser && r.Authority == authority && r.Status == http.StatusOK && r.BytesUp > 0 && r.BytesDown > 0:
				allowed = true
			case r.Auth == proxy.AuthForbidden && r.User == e.peerUser && r.Status == http.StatusForbidden:
				forbidden = true
			}
		}
		if !allowed || !forbidden {
			b, _ := os.ReadFile(e.audit)
			t.Fatalf("audit: want a tunnel allowed to %s and a CONNECT forbidden, both naming %s:\n%s", authority, e.peerUser, b)
		}
	})

	t.Run("allow-source with auth: a source outside the list is refused before auth", func(t *testing.T) {
		e.restartProxy(t, "--allow-source", "127.0.0.2/32")
		before := len(e.auditRecords(t))
		r := e.connect(t, e.tokenKC, "--", e.kubectl, "get", "pods", "-o", "name")
		if r.err == nil || !strings.Contains(r.stderr, "closed the connection") || !strings.Contains(r.stderr, "--allow-source") {
			t.Fatalf("connect from 127.0.0.1: %v, want the closed connection explained\n%s", r.err, r.stderr)
		}
		t.Logf("connect from a refused source:\n%s", r.stderr)
		r = e.check(t, e.tokenKC)
		// The reset comes at once: before or after the TCP handshake completes for the client.
		tcp, conn := hopLine(r.stdout, "tcp"), hopLine(r.stdout, "connect")
		if r.err == nil || !(strings.HasPrefix(conn, "FAIL") && strings.Contains(conn, "--allow-source") ||
			strings.HasPrefix(tcp, "FAIL") && strings.Contains(tcp, "--allow-source")) {
			t.Fatalf("check from 127.0.0.1: %v, want the tcp or connect hop to name --allow-source\n%s", r.err, r.stdout)
		}
		// When the TCP handshake completed, check knows the address the proxy refused, and says it.
		if strings.HasPrefix(conn, "FAIL") && !strings.Contains(conn, "this machine connected from 127.0.0.1:") {
			t.Errorf("check's connect hop does not name this machine's address:\n%s", conn)
		}
		if got := e.rawConnectFrom(t, "127.0.0.1", authority, "Proxy-Authorization: Bearer "+e.token+"\r\n"); got != 0 {
			t.Fatalf("a valid token from 127.0.0.1 got %d, want the connection closed unanswered", got)
		}
		// Nothing from the refused source reached the reviews or the audit trail.
		if n := len(e.auditRecords(t)); n != before {
			t.Fatalf("%d audit records for refused connections: the source check must come before auth", n-before)
		}
		// The allowed source still meets the auth.
		if got := e.rawConnectFrom(t, "127.0.0.2", authority); got != http.StatusProxyAuthRequired {
			t.Fatalf("no token from 127.0.0.2: %d, want 407", got)
		}
		if got := e.rawConnectFrom(t, "127.0.0.2", authority, "Proxy-Authorization: Bearer "+e.token+"\r\n"); got != http.StatusOK {
			t.Fatalf("the token from 127.0.0.2: %d, want 200", got)
		}
		b, _ := os.ReadFile(e.proxyLogs[len(e.proxyLogs)-1])
		if !strings.Contains(string(b), "refused a connection from outside --allow-source") {
			t.Fatalf("the proxy did not log the refused source:\n%s", b)
		}
	})

	t.Run("no token text in any log, audit record or stderr", func(t *testing.T) {
		e.proxy.Stop()
		files := append([]string{e.audit}, e.proxyLogs...)
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(b, []byte(e.token)) {
				t.Errorf("%s contains the token", filepath.Base(f))
			}
		}
		for i, s := range e.stderrs {
			if strings.Contains(s, e.token) {
				t.Errorf("stderr #%d contains the token:\n%s", i, s)
			}
		}
	})
}

func stringSlice(v any) []string {
	var out []string
	items, _ := v.([]any)
	for _, i := range items {
		if s, ok := i.(string); ok {
			out = append(out, s)
		}
	}
	return out
}
