package realnode_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilnet "k8s.io/apimachinery/pkg/util/net"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"

	"github.com/apiproxy/apiproxy/pkg/install"
	"github.com/apiproxy/apiproxy/test/harness"
	"github.com/apiproxy/apiproxy/test/harness/realnode"
	"github.com/apiproxy/apiproxy/test/testnet"
)

// The proxy Deployment's life as users live it: a rolling restart under load, then uninstall.
func TestProxyRolloutAndUninstallOnRealNode(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the real-node cluster needs root: run the tests as root, as CI does")
	}
	c := realnode.Start(t, realnode.Options{})
	c.DumpLogsOnFailure(t)
	ref := pushAgent(t, c)
	e := &env{c: c, image: ref, nodeIP: c.LocalIP(2)}
	ctx := context.Background()
	cs := c.Clientset(t)

	t.Run("install --wait names a pod that cannot pull its image, long before the deadline", func(t *testing.T) {
		// The agent's repository and tag, with a digest the registry does not have: the node's
		// registry answers "manifest unknown", as a registry does for a mistyped digest.
		repoTag, _, _ := strings.Cut(ref, "@")
		missing := repoTag + "@sha256:" + strings.Repeat("0", 64)
		start := time.Now()
		out, stderr, err := e.plugin(t, "install", "--roles", "proxy", "--image", missing, "--wait", "--timeout", "4m")
		took := time.Since(start)
		if err == nil {
			t.Fatalf("install --wait with an image that cannot be pulled succeeded:\n%s\n%s", out, stderr)
		}
		t.Logf("install --wait failed after %s:\n%s", took.Round(100*time.Millisecond), stderr)
		for _, want := range []string{"apiproxy-proxy", "container proxy", "hint:"} {
			if !strings.Contains(stderr, want) {
				t.Errorf("the failure does not name %q", want)
			}
		}
		if !strings.Contains(stderr, "ImagePullBackOff") && !strings.Contains(stderr, "ErrImagePull") {
			t.Errorf("the failure does not give the kubelet's reason (ImagePullBackOff or ErrImagePull)")
		}
		for _, bad := range []string{"rate limiter", "context deadline exceeded"} {
			if strings.Contains(stderr, bad) {
				t.Errorf("the failure says %q instead of what is wrong", bad)
			}
		}
		if took > 3*time.Minute {
			t.Errorf("install --wait took %s: it waited for the deadline instead of saying what is wrong", took)
		}
		// The failure is the registry's answer ("not found"), not a connection or TLS error.
		if !strings.Contains(stderr, "not found") {
			t.Errorf("the failure does not pass on the registry's answer (not found)")
		}
		if log := c.Log("registry"); !strings.Contains(log, "/v2/"+harness.AgentRepository+"/manifests/sha256:"+strings.Repeat("0", 64)) {
			t.Errorf("the registry's log has no request for the missing digest: the pull did not reach it")
		}
	})

	if out, stderr, err := e.plugin(t, e.installArgs()...); err != nil {
		t.Fatalf("install: %v\nstdout:\n%s\nstderr:\n%s", err, out, stderr)
	}
	svc, err := cs.CoreV1().Services(ns).Get(ctx, "apiproxy-proxy", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	proxyURL := "http://" + net.JoinHostPort(svc.Spec.ClusterIP, "8118")

	t.Run("rollout restart of the proxy: no request fails, a watch ends cleanly", func(t *testing.T) {
		// A watch through the proxy Service, riding one tunnel of one of the old pods.
		w := startWatch(t, c, proxiedKubeconfig(t, c, proxyURL))
		if _, err := cs.CoreV1().Pods("default").Create(ctx, c.AppPod("before-rollout", "serve", ":8080"), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitLine(t, w.lines, "pod/before-rollout", 30*time.Second)

		// Short requests, each on a new connection (so each one is routed anew by kube-proxy),
		// sequentially for the whole rollout; bounded in count and time.
		loop := startRequestLoop(t, c.Config, proxyURL)
		time.Sleep(time.Second)
		restarted := time.Now()
		if out, stderr, err := c.RunKubectl(ctx, t, "-n", ns, "rollout", "restart", "deployment/apiproxy-proxy"); err != nil {
			t.Fatalf("rollout restart: %v %s %s", err, out, stderr)
		}
		if out, stderr, err := c.RunKubectl(ctx, t, "-n", ns, "rollout", "status", "deployment/apiproxy-proxy", "--timeout", "3m"); err != nil {
			t.Fatalf("rollout status: %v %s %s", err, out, stderr)
		}
		// Until every old pod is gone: their drains are part of the rollout.
		waitNoTerminatingProxyPods(t, c, 90*time.Second)
		time.Sleep(time.Second)
		ok, failed := loop.stop()
		t.Logf("%d requests through the proxy Service during the rollout, %d failed", ok+len(failed), len(failed))
		if ok < 20 {
			t.Errorf("only %d requests succeeded during the rollout: the loop did not exercise it", ok)
		}
		for i, f := range failed {
			if i == 5 {
				t.Errorf("... and %d more", len(failed)-5)
				break
			}
			t.Errorf("request failed during the rollout: %s", f)
		}

		// The watch's tunnel went through an old pod: it ended when that pod drained, cleanly
		// (kubectl saw the end of a stream, not a reset or a torn event), within the grace period.
		select {
		case <-w.done:
		case <-time.After(time.Until(restarted.Add(proxyGrace + 20*time.Second))):
			t.Fatalf("the watch through an old proxy pod is still open %s after the restart (grace %s)", time.Since(restarted).Round(time.Second), proxyGrace)
		}
		if w.err != nil {
			t.Errorf("the watch ended with %v; stderr:\n%s", w.err, w.stderr.String())
		}
		for _, bad := range []string{"reset", "unexpected EOF", "broken pipe", "error"} {
			if strings.Contains(strings.ToLower(w.stderr.String()), strings.ToLower(bad)) {
				t.Errorf("the watch ended with %q on stderr:\n%s", bad, w.stderr.String())
			}
		}
	})

	t.Run("uninstall leaves nothing on the cluster or the node", func(t *testing.T) {
		if out, stderr, err := e.plugin(t, "uninstall", "--timeout", "2m"); err != nil {
			t.Fatalf("uninstall: %v\nstdout:\n%s\nstderr:\n%s", err, out, stderr)
		}
		deadline := time.Now().Add(2 * time.Minute)
		for {
			left := leftovers(t, e)
			if len(left) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("2 minutes after uninstall, left behind:\n%s", strings.Join(left, "\n"))
			}
			time.Sleep(500 * time.Millisecond)
		}
	})
}

// proxyGrace is the proxy's --shutdown-grace as install renders it.
const proxyGrace = 30 * time.Second

// leftovers lists what of the install is still there: objects, and on the node the interface,
// the address and the rules.
func leftovers(t *testing.T, e *env) []string {
	t.Helper()
	var left []string
	// Every kind an install creates, found by the label every object of ours carries.
	dc, err := dynamic.NewForConfig(e.c.Config)
	if err != nil {
		t.Fatal(err)
	}
	selector := install.LabelPartOf + "=" + install.PartOf
	for _, gvr := range []schema.GroupVersionResource{
		{Version: "v1", Resource: "serviceaccounts"}, {Version: "v1", Resource: "services"}, {Version: "v1", Resource: "secrets"},
		{Version: "v1", Resource: "pods"}, {Group: "apps", Version: "v1", Resource: "deployments"}, {Group: "apps", Version: "v1", Resource: "daemonsets"},
		{Group: "policy", Version: "v1", Resource: "poddisruptionbudgets"}, {Group: "networking.k8s.io", Version: "v1", Resource: "networkpolicies"},
		{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "roles"}, {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "rolebindings"},
		{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterroles"}, {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterrolebindings"},
		{Group: "admissionregistration.k8s.io", Version: "v1", Resource: "mutatingwebhookconfigurations"},
	} {
		l, err := dc.Resource(gvr).List(context.Background(), metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range l.Items {
			left = append(left, fmt.Sprintf("%s %s/%s", gvr.Resource, o.GetNamespace(), o.GetName()))
		}
	}
	if _, err := e.c.Clientset(t).CoreV1().Namespaces().Get(context.Background(), ns, metav1.GetOptions{}); err == nil {
		left = append(left, "namespace "+ns)
	}
	if l, err := netlink.LinkByName(install.DefaultNodeInterface); err == nil {
		left = append(left, "link "+l.Attrs().Name)
	}
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if hasAddr(t, l, e.nodeIP) {
			left = append(left, fmt.Sprintf("address %s on %s", e.nodeIP, l.Attrs().Name))
		}
	}
	for _, r := range nodeRules(t, e.nodeIP) {
		left = append(left, "rule "+r)
	}
	return left
}

func waitNoTerminatingProxyPods(t *testing.T, c *realnode.Cluster, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		pods, err := c.Clientset(t).CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=proxy"})
		if err != nil {
			t.Fatal(err)
		}
		terminating := 0
		for _, p := range pods.Items {
			if p.DeletionTimestamp != nil {
				terminating++
			}
		}
		if terminating == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d proxy pods still terminating after %s", terminating, timeout)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

type watchProc struct {
	lines  <-chan string
	done   chan struct{}
	err    error
	stderr *testnet.SyncBuffer
}

// startWatch runs `kubectl get pods --watch` through kubeconfig; done closes when kubectl exits.
func startWatch(t *testing.T, c *realnode.Cluster, kubeconfig string) *watchProc {
	t.Helper()
	cmd := exec.Command(c.Kubectl, "--kubeconfig", kubeconfig, "get", "pods", "-n", "default", "--watch", "-o", "name")
	cmd.Env = append(os.Environ(), "KUBECONFIG=")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	w := &watchProc{done: make(chan struct{}), stderr: &testnet.SyncBuffer{}}
	cmd.Stderr = w.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 100)
	w.lines = lines
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default: // nobody reads any more
			}
		}
		w.err = cmd.Wait()
		close(w.done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-w.done
	})
	return w
}

type requestLoop struct {
	quit   chan struct{}
	wg     sync.WaitGroup
	ok     atomic.Int64
	mu     sync.Mutex
	failed []string
}

// startRequestLoop sends short GETs to the API server through proxyURL, one after the other, each
// on a new connection, until stop (at most 5 minutes and 20,000 requests).
func startRequestLoop(t *testing.T, admin *rest.Config, proxyURL string) *requestLoop {
	t.Helper()
	u, err := url.Parse(proxyURL)
	if err != nil {
		t.Fatal(err)
	}
	cfg := rest.CopyConfig(admin)
	cfg.Proxy = http.ProxyURL(u)
	l := &requestLoop{quit: make(chan struct{})}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		end := time.Now().Add(5 * time.Minute)
		for i := 0; i < 20000 && time.Now().Before(end); i++ {
			select {
			case <-l.quit:
				return
			default:
			}
			started := time.Now()
			if err := oneRequest(cfg); err != nil {
				l.mu.Lock()
				l.failed = append(l.failed, fmt.Sprintf("at %s: %v", started.Format("15:04:05.000"), err))
				l.mu.Unlock()
			} else {
				l.ok.Add(1)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	t.Cleanup(func() { l.stop() })
	return l
}

func (l *requestLoop) stop() (ok int, failed []string) {
	select {
	case <-l.quit:
	default:
		close(l.quit)
	}
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return int(l.ok.Load()), l.failed
}

// oneRequest GETs the default namespace through its own transport (a proxy-url transport is never
// shared by client-go), so it opens a new tunnel, and closes it afterwards.
func oneRequest(cfg *rest.Config) error {
	rt, err := rest.TransportFor(cfg)
	if err != nil {
		return err
	}
	defer utilnet.CloseIdleConnectionsFor(rt)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(cfg.Host, "/")+"/api/v1/namespaces/default", nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Transport: rt}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var body bytes.Buffer
	_, _ = body.ReadFrom(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %.200s", resp.Status, body.String())
	}
	return nil
}
