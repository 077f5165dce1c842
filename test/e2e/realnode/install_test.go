// Package realnode_test runs the agents as real pods on a real node (test/harness/realnode): the
// release's multi-platform image index, pushed to the node's registry and pulled by the node's
// containerd by digest, installed by the plugin, called by the real API server, serving pods that
// reach their API server through the node IP.
package realnode_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/apiproxy/apiproxy/pkg/install"
	"github.com/apiproxy/apiproxy/test/harness"
	"github.com/apiproxy/apiproxy/test/harness/realnode"
)

func TestMain(m *testing.M) { os.Exit(harness.RunTests(m)) }

const ns = install.DefaultNamespace

type env struct {
	c      *realnode.Cluster
	image  string
	nodeIP string
}

// plugin runs kubectl-apiproxy against the cluster.
func (e *env) plugin(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, harness.Binary(t, "./cmd/kubectl-apiproxy"), append([]string{"--kubeconfig", e.c.Kubeconfig}, args...)...)
	var o, es bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &es
	cmd.Env = append(os.Environ(), "KUBECONFIG=")
	err = cmd.Run()
	return o.String(), es.String(), err
}

func (e *env) installArgs() []string {
	return []string{"install", "--roles", "proxy,node,webhook", "--apiserver-fqdn", "kubernetes.default.svc",
		"--host-alias-ip", e.nodeIP, "--node-ip", e.nodeIP, "--setup-iptables", "--image", e.image, "--wait", "--timeout", "3m"}
}

// One cluster and one install for every check (a real node takes a while to start): the subtests
// run in order and later ones build on earlier ones.
func TestAgentsOnRealNode(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the real-node cluster needs root: run the tests as root, as CI does")
	}
	realnode.Lock(t) // the checks after the teardown must not see another package's cluster
	var nodeIP string
	t.Run("cluster", func(t *testing.T) { nodeIP = agentsOnRealNode(t) })
	if nodeIP == "" {
		return
	}
	// The cluster's teardown leaves nothing of the agents on this machine either.
	if l, err := netlink.LinkByName(install.DefaultNodeInterface); err == nil {
		t.Errorf("left behind: link %s", l.Attrs().Name)
	}
	if rules := nodeRules(t, nodeIP); len(rules) > 0 {
		t.Errorf("left behind: rules\n%s", strings.Join(rules, "\n"))
	}
}

func agentsOnRealNode(t *testing.T) (nodeIP string) {
	c := realnode.Start(t, realnode.Options{})
	c.DumpLogsOnFailure(t)
	ref := pushAgent(t, c)
	e := &env{c: c, image: ref, nodeIP: c.LocalIP(2)}
	nodeIP = e.nodeIP
	ctx := context.Background()
	cs := c.Clientset(t)

	t.Run("install --wait", func(t *testing.T) {
		start := time.Now()
		out, stderr, err := e.plugin(t, e.installArgs()...)
		if err != nil {
			t.Fatalf("install: %v\nstdout:\n%s\nstderr:\n%s", err, out, stderr)
		}
		t.Logf("install --wait took %s", time.Since(start).Round(100*time.Millisecond))
		pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		// 2 proxies, 2 webhooks, 1 node agent.
		if len(pods.Items) != 5 {
			t.Errorf("%d pods in %s, want 5", len(pods.Items), ns)
		}
		for _, p := range pods.Items {
			if !podReady(&p) {
				t.Errorf("pod %s not Ready after install --wait: %+v", p.Name, p.Status.ContainerStatuses)
			}
			for _, cs := range p.Spec.Containers {
				if cs.Image != ref {
					t.Errorf("pod %s container %s runs %s, want %s", p.Name, cs.Name, cs.Image, ref)
				}
				if cs.ImagePullPolicy != corev1.PullIfNotPresent {
					t.Errorf("pod %s container %s has imagePullPolicy %s, want IfNotPresent", p.Name, cs.Name, cs.ImagePullPolicy)
				}
			}
		}
		assertPulledFromRegistry(t, c, ref, pods.Items)
	})
	if t.Failed() {
		return nodeIP
	}

	t.Run("status says ready", func(t *testing.T) {
		out, stderr, err := e.plugin(t, "status", "-o", "json")
		if err != nil {
			t.Fatalf("status: %v: %s", err, stderr)
		}
		var r install.Report
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("status -o json: %v\n%s", err, out)
		}
		if !r.Ready {
			t.Fatalf("status not ready:\n%s", out)
		}
		for _, role := range r.Roles {
			if !role.Installed || !role.Ready {
				t.Errorf("role %s installed=%v ready=%v", role.Role, role.Installed, role.Ready)
			}
		}
	})

	t.Run("second install changes nothing", func(t *testing.T) {
		before := installedState(t, c)
		if out, stderr, err := e.plugin(t, e.installArgs()...); err != nil {
			t.Fatalf("second install: %v\n%s\n%s", err, out, stderr)
		}
		after := installedState(t, c)
		for k, v := range before {
			if after[k] != v {
				t.Errorf("%s changed: %s -> %s", k, v, after[k])
			}
		}
		if len(after) != len(before) {
			t.Errorf("objects: %d before, %d after", len(before), len(after))
		}
	})

	t.Run("node agent keeps the address and the rules", func(t *testing.T) {
		link, err := netlink.LinkByName(install.DefaultNodeInterface)
		if err != nil {
			t.Fatalf("node interface %s: %v", install.DefaultNodeInterface, err)
		}
		if !hasAddr(t, link, e.nodeIP) {
			t.Fatalf("%s has no %s", install.DefaultNodeInterface, e.nodeIP)
		}
		rules := nodeRules(t, e.nodeIP)
		if len(rules) != 5 {
			t.Errorf("%d iptables/ip6tables rules mention %s, want 5:\n%s", len(rules), e.nodeIP, strings.Join(rules, "\n"))
		}
		// The image's iptables drives the same backend as the node's (kube-proxy's rules sit there).
		out, stderr, err := c.RunKubectl(ctx, t, "-n", ns, "logs", "daemonset/apiproxy-node", "-c", "node")
		if err != nil || !strings.Contains(out+stderr, "nf_tables") {
			t.Errorf("node agent log does not report the nf_tables backend: err=%v\n%s%s", err, out, stderr)
		}
		// Deleted from outside, the address comes back: the agent reacts to the kernel's event.
		addr, _ := netlink.ParseAddr(e.nodeIP + "/32")
		if err := netlink.AddrDel(link, addr); err != nil {
			t.Fatalf("deleting %s: %v", addr, err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for !hasAddr(t, link, e.nodeIP) {
			if time.Now().After(deadline) {
				t.Fatalf("%s did not come back on %s within 10s", e.nodeIP, install.DefaultNodeInterface)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})

	t.Run("webhook injects and the pod reaches its API server through the node IP", func(t *testing.T) {
		// The default ServiceAccount may list pods in default, so the pod has something to list.
		rb := &rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: "default-view"},
			RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "view"},
			Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "default", Namespace: "default"}},
		}
		if _, err := cs.RbacV1().RoleBindings("default").Create(ctx, rb, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		pod, err := cs.CoreV1().Pods("default").Create(ctx, c.AppPod("client", "serve", ":8080"), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		env := map[string]string{}
		for _, v := range pod.Spec.Containers[0].Env {
			env[v.Name] = v.Value
		}
		if env["KUBERNETES_SERVICE_HOST"] != "kubernetes.default.svc" {
			t.Errorf("KUBERNETES_SERVICE_HOST = %q, want kubernetes.default.svc (env %v)", env["KUBERNETES_SERVICE_HOST"], env)
		}
		aliased := false
		for _, ha := range pod.Spec.HostAliases {
			if ha.IP == e.nodeIP && slices.Contains(ha.Hostnames, "kubernetes.default.svc") {
				aliased = true
			}
		}
		if !aliased {
			t.Errorf("hostAliases %+v lack kubernetes.default.svc -> %s", pod.Spec.HostAliases, e.nodeIP)
		}
		c.WaitPodReady(t, "default", "client", 90*time.Second)
		tunnelsBefore := metric(t, e.nodeIP, "apiproxy_proxy_tunnels_total")

		out, stderr, err := c.RunKubectl(ctx, t, "exec", "client", "--", "/app", "kube-get", "/api/v1/namespaces/default/pods")
		if err != nil || !strings.HasPrefix(out, "200 ") || !strings.Contains(out, `"kind":"PodList"`) || !strings.Contains(out, `"name":"client"`) {
			t.Fatalf("in-cluster list of pods: err=%v stderr=%q out=%.300q", err, stderr, out)
		}
		if !strings.Contains(stderr, "https://kubernetes.default.svc:443") {
			t.Errorf("in-cluster config did not use the injected name: %q", stderr)
		}
		if after := metric(t, e.nodeIP, "apiproxy_proxy_tunnels_total"); after <= tunnelsBefore {
			t.Errorf("node forwarder's apiproxy_proxy_tunnels_total %v -> %v: the request did not go through it", tunnelsBefore, after)
		}
	})

	t.Run("kubectl get, exec, watch and port-forward through the proxy Service", func(t *testing.T) {
		svc, err := cs.CoreV1().Services(ns).Get(ctx, "apiproxy-proxy", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		kc := proxiedKubeconfig(t, c, "http://"+net.JoinHostPort(svc.Spec.ClusterIP, "8118"))
		out, stderr, err := harness.RunKubectl(ctx, t, kc, "get", "pod", "client", "-o", "name")
		if err != nil || out != "pod/client\n" {
			t.Fatalf("kubectl get through the proxy: out=%q stderr=%q err=%v", out, stderr, err)
		}
		out, stderr, err = harness.RunKubectl(ctx, t, kc, "exec", "client", "--", "/app", "echo", "through", "the", "proxy")
		if err != nil || out != "through the proxy\n" {
			t.Fatalf("kubectl exec through the proxy: out=%q stderr=%q err=%v", out, stderr, err)
		}

		// A watch through the proxy sees a pod created afterwards.
		lines := startKubectl(t, c, kc, "get", "pods", "--watch", "-o", "name")
		if _, err := cs.CoreV1().Pods("default").Create(ctx, c.AppPod("watched", "serve", ":8080"), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitLine(t, lines, "pod/watched", 30*time.Second)

		// Port-forward through the proxy to the real pod (the kubelet's streaming).
		pf := startKubectl(t, c, kc, "port-forward", "--address", "127.0.0.1", "pod/client", ":8080")
		addr := strings.TrimPrefix(waitLine(t, pf, "Forwarding from 127.0.0.1:", 30*time.Second), "Forwarding from ")
		addr = strings.Fields(addr)[0]
		if body := httpGet(t, "http://"+addr+"/"); !strings.Contains(body, "hello from client") {
			t.Errorf("port-forward through the proxy: %q", body)
		}
	})

	t.Run("restarted node agent keeps the address and pods served", func(t *testing.T) {
		// Watch the kernel's address events for the whole restart: the address must never go away.
		updates := make(chan netlink.AddrUpdate, 100)
		done := make(chan struct{})
		if err := netlink.AddrSubscribe(updates, done); err != nil {
			t.Fatal(err)
		}
		removed := make(chan string, 1)
		go func() {
			for u := range updates {
				if !u.NewAddr && u.LinkAddress.IP.String() == e.nodeIP {
					select {
					case removed <- u.LinkAddress.String():
					default:
					}
				}
			}
		}()
		out, stderr, err := c.RunKubectl(ctx, t, "-n", ns, "rollout", "restart", "daemonset/apiproxy-node")
		if err != nil {
			close(done)
			t.Fatalf("rollout restart: %v %s %s", err, out, stderr)
		}
		out, stderr, err = c.RunKubectl(ctx, t, "-n", ns, "rollout", "status", "daemonset/apiproxy-node", "--timeout", "2m")
		close(done)
		if err != nil {
			t.Fatalf("rollout status: %v %s %s", err, out, stderr)
		}
		select {
		case a := <-removed:
			t.Errorf("the node IP %s was removed during the DaemonSet restart", a)
		default:
		}
		out, stderr, err = c.RunKubectl(ctx, t, "exec", "client", "--", "/app", "kube-get", "/api/v1/namespaces/default/pods")
		if err != nil || !strings.HasPrefix(out, "200 ") {
			t.Fatalf("in-cluster request after the restart: err=%v stderr=%q out=%.200q", err, stderr, out)
		}
	})

	t.Run("webhook down: pods are still created", func(t *testing.T) {
		if out, stderr, err := c.RunKubectl(ctx, t, "-n", ns, "scale", "deployment/apiproxy-webhook", "--replicas", "0"); err != nil {
			t.Fatalf("scale: %v %s %s", err, out, stderr)
		}
		deadline := time.Now().Add(60 * time.Second)
		for {
			pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=webhook"})
			if err != nil {
				t.Fatal(err)
			}
			if len(pods.Items) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("webhook pods still there after 60s")
			}
			time.Sleep(200 * time.Millisecond)
		}
		start := time.Now()
		pod, err := cs.CoreV1().Pods("default").Create(ctx, c.AppPod("no-webhook", "serve", ":8080"), metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("pod creation with the webhook down: %v", err)
		}
		// failurePolicy Ignore with timeoutSeconds 2: created, not injected. The bound is the webhook
		// timeout plus a wide margin for a loaded machine: it catches a policy that waits or retries
		// (or a Fail policy, which errors above), not slowness.
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("pod creation took %s with the webhook down", d)
		}
		for _, v := range pod.Spec.Containers[0].Env {
			if v.Name == "KUBERNETES_SERVICE_HOST" {
				t.Errorf("pod injected although the webhook is down: %v", v)
			}
		}
	})
	return nodeIP
}

// pushAgent pushes the release's agent image index (both platforms) to the node's registry, checks
// that the node does not have it yet, and returns the reference pinned by digest that install gets:
// "10.244.0.1:5000/apiproxy/agent:<version>@sha256:<index digest>".
func pushAgent(t *testing.T, c *realnode.Cluster) string {
	t.Helper()
	start := time.Now()
	idx := harness.AgentIndex(t)
	built := time.Since(start)
	ref, err := c.PushIndex(harness.AgentRepoTag(), idx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("agent image index built in %s, pushed in %s: %s", built.Round(100*time.Millisecond), (time.Since(start) - built).Round(100*time.Millisecond), ref)
	// Only the pause and app images are imported: the agent must come from the registry.
	if images := c.Ctr(t, "-n", "k8s.io", "images", "ls", "-q"); strings.Contains(images, harness.AgentRepository) {
		t.Fatalf("the node has an agent image before the install, so nothing would be pulled:\n%s", images)
	}
	return ref
}

// assertPulledFromRegistry checks that the pods' containers run the index digest of ref, and that
// the node's containerd pulled it from the registry: the kubelet's Pulled event, the image now in
// containerd, and the registry's log of the manifest request by digest.
func assertPulledFromRegistry(t *testing.T, c *realnode.Cluster, ref string, pods []corev1.Pod) {
	t.Helper()
	_, digest, _ := strings.Cut(ref, "@")
	repo := c.Registry + "/" + harness.AgentRepository
	for _, p := range pods {
		for _, st := range p.Status.ContainerStatuses {
			if st.ImageID != repo+"@"+digest {
				t.Errorf("pod %s container %s runs image %q, want %s@%s", p.Name, st.Name, st.ImageID, repo, digest)
			}
		}
	}
	ctx := context.Background()
	events, err := c.Clientset(t).CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "reason=Pulled"})
	if err != nil {
		t.Fatal(err)
	}
	pulled := 0
	for _, ev := range events.Items {
		if strings.Contains(ev.Message, fmt.Sprintf("Successfully pulled image %q", ref)) {
			pulled++
		}
	}
	if pulled == 0 {
		var msgs []string
		for _, ev := range events.Items {
			msgs = append(msgs, ev.InvolvedObject.Name+": "+ev.Message)
		}
		t.Errorf("no Pulled event says %q was pulled; Pulled events:\n%s", ref, strings.Join(msgs, "\n"))
	}
	if images := c.Ctr(t, "-n", "k8s.io", "images", "ls"); !strings.Contains(images, repo) || !strings.Contains(images, digest) {
		t.Errorf("containerd does not list %s with %s after the install:\n%s", repo, digest, images)
	}
	if log := c.Log("registry"); !strings.Contains(log, "/v2/"+harness.AgentRepository+"/manifests/"+digest) {
		t.Errorf("the registry's log has no request for the manifest %s: the image did not come from it", digest)
	}
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
			return true
		}
	}
	return false
}

// installedState is, per object the install manages, what a changing install would change.
func installedState(t *testing.T, c *realnode.Cluster) map[string]string {
	t.Helper()
	dc, err := dynamic.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	gvrs := []schema.GroupVersionResource{
		{Version: "v1", Resource: "serviceaccounts"}, {Version: "v1", Resource: "services"}, {Version: "v1", Resource: "secrets"},
		{Group: "apps", Version: "v1", Resource: "deployments"}, {Group: "apps", Version: "v1", Resource: "daemonsets"},
		{Group: "policy", Version: "v1", Resource: "poddisruptionbudgets"},
	}
	add := func(items []unstructured.Unstructured, kind string) {
		for _, o := range items {
			if o.GetName() == "default" || strings.HasPrefix(o.GetName(), "kube-root-ca") {
				continue
			}
			if _, hasStatus := o.Object["status"]; hasStatus {
				// Controllers write status (and so the resourceVersion) on their own: compare what an
				// install writes, the spec (generation) and the metadata.
				meta, _ := json.Marshal([]any{o.GetLabels(), o.GetAnnotations()})
				out[kind+"/"+o.GetName()] = fmt.Sprintf("generation %d, metadata %s", o.GetGeneration(), meta)
				continue
			}
			out[kind+"/"+o.GetName()] = "resourceVersion " + o.GetResourceVersion()
		}
	}
	for _, gvr := range gvrs {
		l, err := dc.Resource(gvr).Namespace(ns).List(context.Background(), metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		add(l.Items, gvr.Resource)
	}
	mw, err := dc.Resource(schema.GroupVersionResource{Group: "admissionregistration.k8s.io", Version: "v1", Resource: "mutatingwebhookconfigurations"}).
		List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	add(mw.Items, "mutatingwebhookconfigurations")
	return out
}

func hasAddr(t *testing.T, link netlink.Link, ip string) bool {
	t.Helper()
	addrs, err := netlink.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if a.IP.String() == ip {
			return true
		}
	}
	return false
}

// nodeRules are the iptables and ip6tables rules (every table) that mention ip.
func nodeRules(t *testing.T, ip string) []string {
	t.Helper()
	var out []string
	for _, save := range []string{"iptables-save", "ip6tables-save"} {
		b, err := exec.Command(save).Output()
		if err != nil {
			t.Fatalf("%s: %v", save, err)
		}
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "-A ") && strings.Contains(l, ip) {
				out = append(out, save+": "+l)
			}
		}
	}
	return out
}

// metric reads a counter's sum from the node forwarder's /metrics on the node IP.
func metric(t *testing.T, nodeIP, name string) float64 {
	t.Helper()
	body := httpGet(t, "http://"+net.JoinHostPort(nodeIP, "9191")+"/metrics")
	var sum float64
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, name+" ") || strings.HasPrefix(l, name+"{") {
			var v float64
			f := strings.Fields(l)
			if _, err := fmt.Sscan(f[len(f)-1], &v); err == nil {
				sum += v
			}
		}
	}
	return sum
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %v", url, resp.Status, err)
	}
	return string(b)
}

// proxiedKubeconfig is the admin kubeconfig with proxy-url set: kubectl tunnels through that proxy.
func proxiedKubeconfig(t *testing.T, c *realnode.Cluster, proxyURL string) string {
	t.Helper()
	kc, err := clientcmd.LoadFromFile(c.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	for _, cl := range kc.Clusters {
		cl.ProxyURL = proxyURL
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// startKubectl runs the harness kubectl in the background (stopped by PID when the test ends) and
// returns its stdout lines.
func startKubectl(t *testing.T, c *realnode.Cluster, kubeconfig string, args ...string) <-chan string {
	t.Helper()
	cmd := exec.Command(c.Kubectl, append([]string{"--kubeconfig", kubeconfig}, args...)...)
	cmd.Env = append(os.Environ(), "KUBECONFIG=")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("kubectl %s stderr:\n%s", strings.Join(args, " "), stderr.String())
		}
	})
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	return lines
}

// waitLine returns the first line containing want.
func waitLine(t *testing.T, lines <-chan string, want string, timeout time.Duration) string {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("kubectl ended before printing %q", want)
			}
			if strings.Contains(l, want) {
				return l
			}
		case <-deadline:
			t.Fatalf("no line with %q within %s", want, timeout)
		}
	}
}
