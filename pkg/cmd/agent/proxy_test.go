package agent

import (
	"bufio"
	"bytes"
	"context"
	"io"
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

	"k8s.io/client-go/tools/clientcmd"

	"github.com/apiproxy/apiproxy/test/harness"
	"github.com/apiproxy/apiproxy/test/testnet"
)

func TestProxyFlagErrors(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	t.Setenv("KUBERNETES_SERVICE_PORT", "")
	cases := map[string][]string{
		"no upstream: pass --upstream HOST:PORT":            {},
		`invalid --upstream "api"`:                          {"--upstream", "api"},
		`invalid --allow-target "10.0.0.0/8"`:               {"--upstream", "127.0.0.1:1", "--allow-target", "10.0.0.0/8"},
		`scheme "https" is not supported`:                   {"--upstream", "127.0.0.1:1", "--upstream-proxy", "https://127.0.0.1:8118"},
		"nothing to listen on":                              {"--upstream", "127.0.0.1:1", "--listen", ""},
		`invalid listen address "127.0.0.1"`:                {"--upstream", "127.0.0.1:1", "--listen-tcp", "127.0.0.1"},
		"invalid --max-tunnels -1":                          {"--upstream", "127.0.0.1:1", "--max-tunnels", "-1"},
		"invalid --header-timeout 0s":                       {"--upstream", "127.0.0.1:1", "--header-timeout", "0"},
		"invalid --dial-timeout -1s":                        {"--upstream", "127.0.0.1:1", "--dial-timeout", "-1s"},
		"invalid --shutdown-delay -1s":                      {"--upstream", "127.0.0.1:1", "--shutdown-delay", "-1s"},
		"invalid --max-header-bytes 10":                     {"--upstream", "127.0.0.1:1", "--max-header-bytes", "10"},
		"invalid --max-pending-heads 0":                     {"--upstream", "127.0.0.1:1", "--max-pending-heads", "0"},
		`invalid --allow-source "10.0.0.0/33"`:              {"--upstream", "127.0.0.1:1", "--allow-source", "10.0.0.0/33"},
		`invalid --allow-source "::ffff:0:0/64"`:            {"--upstream", "127.0.0.1:1", "--allow-source", "::ffff:0:0/64"},
		`invalid --allow-target "[::ffff:10.0.0.0]/90:443"`: {"--upstream", "127.0.0.1:1", "--allow-target", "[::ffff:10.0.0.0]/90:443"},
		`invalid --auth "oidc": want none or tokenreview`:   {"--upstream", "127.0.0.1:1", "--auth", "oidc"},
		"--kubeconfig is only used by --auth tokenreview":   {"--upstream", "127.0.0.1:1", "--kubeconfig", "/nonexistent"},
		"--auth tokenreview needs a CONNECT listener":       {"--upstream", "127.0.0.1:1", "--auth", "tokenreview", "--listen", "", "--listen-tcp", "127.0.0.1:1"},
		"outside a cluster, pass --kubeconfig":              {"--upstream", "127.0.0.1:1", "--auth", "tokenreview", "--listen", "127.0.0.1:0"},
		"--audit-log":                                       {"--upstream", "127.0.0.1:1", "--listen", "127.0.0.1:0", "--audit-log", "/nonexistent-dir/audit.jsonl"},
		"invalid --max-unseen-reviews 0":                    {"--upstream", "127.0.0.1:1", "--auth", "tokenreview", "--max-unseen-reviews", "0"},
		"invalid --unseen-review-qps 0":                     {"--upstream", "127.0.0.1:1", "--auth", "tokenreview", "--unseen-review-qps", "0"},
	}
	for want, args := range cases {
		var out, errOut bytes.Buffer
		root := NewRootCommand(&out, &errOut)
		root.SetArgs(append([]string{"proxy", "--metrics-addr", ""}, args...))
		err := root.Execute()
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%v: got %v, want an error containing %q", args, err, want)
		}
	}
}

// client-go logs request bodies from -v 8: with --auth tokenreview those are tokens.
func TestProxyAuthRefusesVerbosityThatLogsTokens(t *testing.T) {
	run := func(args ...string) error {
		root := NewRootCommand(io.Discard, io.Discard)
		root.SetArgs(append([]string{"proxy", "--metrics-addr", "", "--upstream", "127.0.0.1:1"}, args...))
		return root.Execute()
	}
	t.Cleanup(func() { _ = run("-v", "0", "--vmodule", "", "--max-tunnels", "-1") }) // klog's verbosity is global
	err := run("-v", "8", "--auth", "tokenreview")
	if err == nil || !strings.Contains(err.Error(), "refuses -v 8") {
		t.Fatalf("got %v", err)
	}
	// Issue 24 item 3: a per-file level reaches client-go's request.go without raising -v.
	for _, spec := range []string{"request=8", "proxy=2,req*=9"} {
		err = run("-v", "2", "--vmodule", spec, "--auth", "tokenreview")
		if err == nil || !strings.Contains(err.Error(), "refuses --vmodule levels of 8") {
			t.Fatalf("--vmodule %s: got %v, want a refusal", spec, err)
		}
	}
	// Below 8 is fine (the command then fails later, for want of an in-cluster config).
	err = run("--vmodule", "request=7", "--auth", "tokenreview")
	if err == nil || strings.Contains(err.Error(), "vmodule") {
		t.Fatalf("--vmodule request=7: got %v, want no refusal for it", err)
	}
}

func TestProxyUpstreamDefaultsToInClusterService(t *testing.T) {
	env := map[string]string{"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"}
	o := &proxyOptions{getenv: func(k string) string { return env[k] }}
	if err := o.Complete(); err != nil || o.Upstream != "[fd00::1]:6443" {
		t.Fatalf("got %q %v", o.Upstream, err)
	}
	env = map[string]string{"KUBERNETES_SERVICE_HOST": "10.96.0.1"}
	o = &proxyOptions{getenv: func(k string) string { return env[k] }}
	if err := o.Complete(); err != nil || o.Upstream != "10.96.0.1:443" {
		t.Fatalf("got %q %v", o.Upstream, err)
	}
	// An explicit --upstream wins over the environment.
	o = &proxyOptions{Upstream: "127.0.0.1:6443", getenv: func(k string) string { return "10.96.0.1" }}
	if err := o.Complete(); err != nil || o.Upstream != "127.0.0.1:6443" {
		t.Fatalf("got %q %v", o.Upstream, err)
	}
}

func freeAddr(t *testing.T, ip string) string {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

type proxyProcess struct {
	cmd    *exec.Cmd
	stderr *testnet.SyncBuffer
	done   chan error
}

// startProxyProcess runs `agent proxy args...` and waits until it accepts on waitAddr.
func startProxyProcess(t *testing.T, env []string, waitAddr string, args ...string) *proxyProcess {
	t.Helper()
	return startProxyProcessEnv(t, env, "", waitAddr, args...)
}

// startProxyProcessFrom is startProxyProcess probing the listener from source address src.
func startProxyProcessFrom(t *testing.T, src, waitAddr string, args ...string) *proxyProcess {
	t.Helper()
	return startProxyProcessEnv(t, nil, src, waitAddr, args...)
}

func startProxyProcessEnv(t *testing.T, env []string, src, waitAddr string, args ...string) *proxyProcess {
	t.Helper()
	p := &proxyProcess{stderr: &testnet.SyncBuffer{}, done: make(chan error, 1)}
	p.cmd = exec.Command(harness.Binary(t, "./cmd/agent"), append([]string{"proxy"}, args...)...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill() // by PID; a no-op once it exited
		<-p.done
		p.done <- nil
		if t.Failed() {
			t.Logf("agent proxy %v stderr:\n%s", args, p.stderr.String())
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		d := net.Dialer{Timeout: time.Second}
		if src != "" {
			d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
		}
		c, err := d.Dial("tcp", waitAddr)
		if err == nil {
			c.Close()
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent proxy not listening on %s: %v\n%s", waitAddr, err, p.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestProxyProcessDrainsOnSIGTERM(t *testing.T) {
	// Upstream: echoes, and answers "|bye" after the client's EOF.
	upstream := testnet.Serve(t, "tcp", "127.0.0.1:0", func(c net.Conn) {
		io.Copy(c, c)
		io.WriteString(c, "|bye")
		c.(*net.TCPConn).CloseWrite()
	})
	listen, metrics := freeAddr(t, "127.0.0.1"), freeAddr(t, "127.0.0.1")
	p := startProxyProcess(t, nil, listen, "--listen", listen, "--upstream", upstream,
		"--metrics-addr", metrics, "--shutdown-grace", "20s")
	if code := httpStatus(t, "http://"+metrics+"/readyz"); code != 200 {
		t.Fatalf("/readyz %d", code)
	}

	c, err := net.Dial("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	io.WriteString(c, "CONNECT kubernetes.default.svc:443 HTTP/1.1\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	io.WriteString(c, "before-")

	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// It stops accepting...
	deadline := time.Now().Add(10 * time.Second)
	for {
		c2, err := net.DialTimeout("tcp", listen, time.Second)
		if err != nil {
			break
		}
		c2.Close()
		if time.Now().After(deadline) {
			t.Fatal("still accepting after SIGTERM")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// ...while the in-flight tunnel keeps working both ways, then ends cleanly.
	time.Sleep(200 * time.Millisecond)
	io.WriteString(c, "after-sigterm")
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(br)
	if err != nil || string(got) != "before-after-sigterm|bye" {
		t.Fatalf("in-flight tunnel broken by the drain: %q %v", got, err)
	}
	select {
	case err := <-p.done:
		p.done <- err
		if err != nil {
			t.Fatalf("exit: %v\n%s", err, p.stderr.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatal("agent proxy did not exit once its last tunnel ended")
	}
	logs := p.stderr.String()
	for _, want := range []string{`authority="kubernetes.default.svc:443"`, `result="ok"`, "drained"} {
		if !strings.Contains(logs, want) {
			t.Errorf("stderr lacks %s:\n%s", want, logs)
		}
	}
}

// --allow-source on the real binary: 127.0.0.2 gets through, 127.0.0.1 is closed unread and counted.
func TestProxyProcessAllowSource(t *testing.T) {
	upstream := testnet.Serve(t, "tcp", "127.0.0.1:0", func(c net.Conn) { io.Copy(c, c) })
	listen, metrics := freeAddr(t, "127.0.0.1"), freeAddr(t, "127.0.0.1")
	// Wait for the listener from an allowed address (a refused probe would be counted).
	startProxyProcessFrom(t, "127.0.0.2", listen, "--listen", listen, "--upstream", upstream,
		"--metrics-addr", metrics, "--allow-source", "127.0.0.2/32", "--allow-source", "::1/128")
	dial := func(src string) (int, error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
		c, err := d.Dial("tcp", listen)
		if err != nil {
			return 0, err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c, "CONNECT x:443 HTTP/1.1\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodConnect})
		if err != nil {
			return 0, err
		}
		return resp.StatusCode, nil
	}
	if code, err := dial("127.0.0.2"); code != 200 {
		t.Fatalf("from 127.0.0.2: %d %v", code, err)
	}
	if code, err := dial("127.0.0.1"); code != 0 || err == nil {
		t.Fatalf("from 127.0.0.1: %d %v, want the connection closed unanswered", code, err)
	}
	body := getBody(t, "http://"+metrics+"/metrics")
	if !strings.Contains(body, `apiproxy_proxy_sources_refused_total{listener="connect"} 1`) {
		t.Fatalf("refusal not counted:\n%s", grepLines(body, "apiproxy_proxy_sources"))
	}
}

func httpStatus(t *testing.T, u string) int {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// Chained, as on a consumer node: kubectl → transparent listener of the consumer's agent proxy →
// CONNECT through the provider's agent proxy → the provider's kube-apiserver.
func TestProxyProcessChainedToRealAPIServer(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a kube-apiserver")
	}
	c := harness.Start(t, harness.Options{Name: "chain"})
	u, err := url.Parse(c.Server)
	if err != nil {
		t.Fatal(err)
	}
	apiHost, apiPort, _ := net.SplitHostPort(u.Host)

	providerAddr := freeAddr(t, "127.0.0.1")
	// The provider takes its upstream from the in-cluster variables (here: the loopback API server).
	startProxyProcess(t, []string{"KUBERNETES_SERVICE_HOST=" + apiHost, "KUBERNETES_SERVICE_PORT=" + apiPort},
		providerAddr, "--listen", providerAddr, "--metrics-addr", "")
	nodeAddr := freeAddr(t, "127.0.0.2")
	consumerMetrics := freeAddr(t, "127.0.0.1")
	startProxyProcess(t, []string{"KUBERNETES_SERVICE_HOST=", "KUBERNETES_SERVICE_PORT="}, nodeAddr,
		"--listen", "", "--listen-tcp", nodeAddr, "--upstream", "kubernetes.default.svc:443",
		"--upstream-proxy", "http://"+providerAddr, "--metrics-addr", consumerMetrics)

	kc, err := clientcmd.LoadFromFile(c.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	for _, cl := range kc.Clusters {
		cl.Server = "https://" + nodeAddr
		cl.TLSServerName = "localhost"
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, errOut, err := harness.RunKubectl(ctx, t, path, "get", "ns", "kube-system", "-o", "name")
	if err != nil {
		t.Fatalf("kubectl through the chain: %v\n%s", err, errOut)
	}
	if strings.TrimSpace(out) != "namespace/kube-system" {
		t.Fatalf("kubectl printed %q", out)
	}
	resp, err := http.Get("http://" + consumerMetrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `apiproxy_proxy_tunnels_total{listener="tcp",result="ok"}`) {
		t.Fatalf("consumer metrics show no finished transparent tunnel:\n%s", grepLines(string(body), "apiproxy_proxy"))
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func TestProxyReadinessCanRequireADialableUpstream(t *testing.T) {
	upstream := freeAddr(t, "127.0.0.1") // nothing listens there
	for _, dial := range []bool{false, true} {
		o := &proxyOptions{
			Listen: freeAddr(t, "127.0.0.1"), Upstream: upstream, MetricsAddr: freeAddr(t, "127.0.0.1"),
			MaxHeaderBytes: 8192, HeaderTimeout: time.Second, DialTimeout: time.Second, ShutdownGrace: time.Second,
			KeepAlive: time.Second, ReadyDial: dial, MaxPendingHeads: 16, getenv: func(string) string { return "" },
		}
		if err := o.Validate(); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 1)
		go func() { errc <- o.Run(ctx, io.Discard) }()
		var code int
		deadline := time.Now().Add(10 * time.Second)
		for {
			resp, err := http.Get("http://" + o.MetricsAddr + "/readyz")
			if err == nil {
				code = resp.StatusCode
				resp.Body.Close()
				break
			}
			if time.Now().After(deadline) {
				t.Fatal(err)
			}
			time.Sleep(20 * time.Millisecond)
		}
		cancel()
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
		want := 200
		if dial {
			want = 503
		}
		if code != want {
			t.Errorf("--readiness-dial-upstream=%v with a dead upstream: /readyz %d, want %d", dial, code, want)
		}
	}
}

func TestProxyShutdownDelayKeepsAcceptingWhileNotReady(t *testing.T) {
	upstream := testnet.Serve(t, "tcp", "127.0.0.1:0", func(c net.Conn) { io.Copy(c, c) })
	listen, metrics := freeAddr(t, "127.0.0.1"), freeAddr(t, "127.0.0.1")
	p := startProxyProcess(t, nil, listen, "--listen", listen, "--upstream", upstream,
		"--metrics-addr", metrics, "--shutdown-delay", "6s", "--shutdown-grace", "5s")
	if code := httpStatus(t, "http://"+metrics+"/readyz"); code != 200 {
		t.Fatalf("/readyz %d before SIGTERM", code)
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// Within the delay: not ready, so endpoints drop it...
	deadline := time.Now().Add(3 * time.Second)
	for httpStatus(t, "http://"+metrics+"/readyz") != http.StatusServiceUnavailable {
		if time.Now().After(deadline) {
			t.Fatal("/readyz still 200 after SIGTERM with --shutdown-delay")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// ...but a connection still routed here gets its tunnel.
	c, err := net.DialTimeout("tcp", listen, 2*time.Second)
	if err != nil {
		t.Fatalf("refused during --shutdown-delay: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "CONNECT kubernetes.default.svc:443 HTTP/1.1\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT during --shutdown-delay: %v %v", resp, err)
	}
	io.WriteString(c, "ping")
	if b := make([]byte, 4); func() bool { _, err := io.ReadFull(br, b); return err != nil || string(b) != "ping" }() {
		t.Fatal("the tunnel opened during the delay does not relay")
	}
	c.(*net.TCPConn).CloseWrite()
	// After the delay the listener closes and the process exits once the tunnel ended.
	select {
	case err := <-p.done:
		p.done <- err
		if err != nil {
			t.Fatalf("exit: %v\n%s", err, p.stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no exit after --shutdown-delay and the drain")
	}
	if c2, err := net.DialTimeout("tcp", listen, time.Second); err == nil {
		c2.Close()
		t.Error("still accepting after the delay and the drain")
	}
}
