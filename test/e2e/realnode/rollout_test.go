package realnode_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/apiproxy/apiproxy/pkg/install"
	"github.com/apiproxy/apiproxy/pkg/install/diagnose"
	"github.com/apiproxy/apiproxy/test/harness"
	"github.com/apiproxy/apiproxy/test/harness/realnode"
	"github.com/apiproxy/apiproxy/test/testnet"
)

// upgradeVersion stamps the second agent image: the same code, another version, another digest.
const upgradeVersion = "v0.0.0-upgrade"

// TestNoRequestFailsOnRealNode installs every role without any IP flag (so the node IP is the default
// 169.254.20.11), then runs two clients for the whole test, each opening a new connection every
// 20 ms to GET /version and keeping one watch open:
//   - "node IP": a pod on the node, through the webhook's injection and hostAlias to the node IP,
//     served by the node DaemonSet's forwarders;
//   - "connect": the same client on this machine, through `kubectl apiproxy connect`'s listener,
//     served by the proxy Deployment.
//
// Each scenario disrupts the agents as operators and failures do; it fails if a request of either
// client fails (after a kill -9, only a request in flight on the killed process may), if a watch
// ends with an error, or if a watch carried by a replaced pod does not end and reopen. The figures
// are logged as a table (the README's).
func TestNoRequestFailsOnRealNode(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the real-node cluster needs root: run the tests as root, as CI does")
	}
	c := realnode.Start(t, realnode.Options{})
	c.DumpLogsOnFailure(t)
	// Both releases come from the node's registry, pinned by digest, as a user's upgrade does.
	ref := pushAgent(t, c)
	upRef, err := c.PushIndex(harness.AgentRepository+":"+upgradeVersion, harness.AgentIndexVersion(t, upgradeVersion))
	if err != nil {
		t.Fatal(err)
	}
	if ref == upRef {
		t.Fatalf("the upgrade image has the same reference as the installed one: %s", ref)
	}
	e := &env{c: c, image: ref, nodeIP: install.DefaultNodeIP}
	installArgs := func(image string) []string {
		return []string{"install", "--roles", "proxy,node,webhook", "--apiserver-fqdn", "kubernetes.default.svc", "--setup-iptables",
			"--image", image, "--wait", "--timeout", "3m"}
	}

	// No IP flag: the node IP and the pods' host alias are 169.254.20.11.
	if out, stderr, err := e.plugin(t, installArgs(ref)...); err != nil {
		t.Fatalf("install: %v\nstdout:\n%s\nstderr:\n%s", err, out, stderr)
	}
	link, err := netlink.LinkByName(install.DefaultNodeInterface)
	if err != nil || !hasAddr(t, link, install.DefaultNodeIP) {
		t.Fatalf("%s does not hold %s after install (%v)", install.DefaultNodeInterface, install.DefaultNodeIP, err)
	}

	remove := os.Getenv(removeEnv)
	removeMechanism(t, c, remove)

	nodeLoad := startLoadPod(t, c)
	connectLoad := startConnectLoad(t, e)
	// The forwarders count a tunnel when it ends: the pod's requests (a new connection each) must
	// move the count within a few seconds of the first one.
	before := forwarderTunnels(t)
	waitLoad(t, nodeLoad, time.Now(), 30*time.Second)
	for deadline := time.Now().Add(20 * time.Second); forwarderTunnels(t) <= before; time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the node forwarders' tunnel count did not move in 20s: the pod's requests do not go through %s", install.DefaultNodeIP)
		}
	}
	waitLoad(t, connectLoad, time.Now(), 30*time.Second)

	var rows []scenarioRow
	t.Cleanup(func() { logTable(t, rows) })
	run := func(name string, disrupt func(t *testing.T) disruption) {
		t.Run(name, func(t *testing.T) {
			rows = append(rows, measure(t, name, []*loadClient{nodeLoad, connectLoad}, disrupt))
			if t.Failed() {
				agentLogs(t, c)
			}
		})
	}

	run("DaemonSet rollout restart", func(t *testing.T) disruption {
		rollout(t, c, "daemonset/apiproxy-node")
		waitGone(t, c, "app.kubernetes.io/component=node", 90*time.Second)
		return disruption{replaced: []*loadClient{nodeLoad}}
	})

	run("upgrade to a new image", func(t *testing.T) disruption {
		before := podImageIDs(t, c, "app.kubernetes.io/component=node")
		if out, stderr, err := e.plugin(t, installArgs(upRef)...); err != nil {
			t.Fatalf("install --image %s: %v\nstdout:\n%s\nstderr:\n%s", upRef, err, out, stderr)
		}
		for _, sel := range []string{"app.kubernetes.io/component=node", "app.kubernetes.io/component=proxy"} {
			waitGone(t, c, sel, 90*time.Second)
		}
		after := podImageIDs(t, c, "app.kubernetes.io/component=node")
		if len(after) == 0 || slices.ContainsFunc(after, func(id string) bool { return slices.Contains(before, id) }) {
			t.Errorf("node pods run image IDs %v, before %v: want only the new image's digest", after, before)
		}
		// install applied the mechanisms again.
		removeMechanism(t, c, remove)
		return disruption{replaced: []*loadClient{nodeLoad, connectLoad}}
	})

	run("proxy Deployment rollout restart", func(t *testing.T) disruption {
		rollout(t, c, "deployment/apiproxy-proxy")
		waitGone(t, c, "app.kubernetes.io/component=proxy", 90*time.Second)
		return disruption{replaced: []*loadClient{connectLoad}}
	})

	containers := []string{"proxy", "proxy-2", "node"}
	if remove == "spare" {
		containers = slices.DeleteFunc(containers, func(c string) bool { return c == "proxy-2" })
	}
	for _, container := range containers {
		run("kill -9 of the node pod's "+container, func(t *testing.T) disruption {
			return killContainer(t, c, "app.kubernetes.io/component=node", container, nodeLoad)
		})
	}
	run("kill -9 of a proxy pod's proxy", func(t *testing.T) disruption {
		return killContainer(t, c, "app.kubernetes.io/component=proxy", "proxy", connectLoad)
	})

	run("containerd restart", func(t *testing.T) disruption {
		took := c.RestartContainerd(t)
		t.Logf("containerd was away for %s", took.Round(time.Millisecond))
		// The kubelet notices and reconnects; the agents never stopped.
		time.Sleep(3 * time.Second)
		return disruption{}
	})

	run("an install whose agents cannot reach the API server", func(t *testing.T) disruption {
		// The node's own address, where nothing listens: every dial is refused at once.
		bad := net.JoinHostPort(c.NodeIP, "1")
		args := append(installArgs(upRef), "--upstream", bad)
		args[slices.Index(args, "--timeout")+1] = "45s"
		_, stderr, err := e.plugin(t, args...)
		if err == nil {
			t.Fatalf("install --wait with an unreachable --upstream succeeded:\n%s", stderr)
		}
		// --wait names the container and the failing check, from the probe's event.
		want := "upstream failed: no dial to " + bad + " has succeeded yet; last error: dial tcp " + bad + ": connect: connection refused"
		if !strings.Contains(stderr, want) || !strings.Contains(stderr, "NotReady: ") {
			t.Errorf("install --wait does not say why the new pods are not ready (want NotReady and %q):\n%s", want, stderr)
		}
		out, _, _ := e.plugin(t, "status", "-o", "json")
		var r install.Report
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("status -o json: %v\n%s", err, out)
		}
		for _, role := range r.Roles {
			if role.Role != install.RoleNode && role.Role != install.RoleProxy {
				continue
			}
			if role.Ready || !slices.ContainsFunc(role.Problems, func(p diagnose.Problem) bool {
				return p.Reason == diagnose.ReasonNotReady && strings.Contains(p.Message, "upstream failed: no dial to "+bad)
			}) {
				t.Errorf("status: role %s ready=%v, problems %+v: want NotReady naming the upstream check", role.Role, role.Ready, role.Problems)
			}
		}
		// The old pods served throughout (surge: they go only once the new ones are ready); the
		// right install takes the broken ones back.
		if out, stderr, err := e.plugin(t, installArgs(upRef)...); err != nil {
			t.Fatalf("install: %v\n%s\n%s", err, out, stderr)
		}
		for _, sel := range []string{"app.kubernetes.io/component=node", "app.kubernetes.io/component=proxy"} {
			waitGone(t, c, sel, 90*time.Second)
		}
		return disruption{}
	})

	// The cluster is still whole: every agent pod ready, no restart beyond the killed containers'.
	out, stderr, err := e.plugin(t, "status", "-o", "json")
	var r install.Report
	if err != nil || json.Unmarshal([]byte(out), &r) != nil || !r.Ready {
		t.Errorf("status after the scenarios: %v\n%s%s", err, out, stderr)
	}

	t.Run("uninstall leaves nothing on the node", func(t *testing.T) {
		if out, stderr, err := e.plugin(t, "uninstall", "--timeout", "2m"); err != nil {
			t.Fatalf("uninstall: %v\nstdout:\n%s\nstderr:\n%s", err, out, stderr)
		}
		dir := "/run/apiproxy/" + ns // install's NodeHandoffDir on the node
		deadline := time.Now().Add(2 * time.Minute)
		for {
			left := leftovers(t, e)
			if _, err := os.Stat(dir); err == nil {
				left = append(left, "handoff directory "+dir)
			}
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

// removeEnv names a mechanism to take away before the scenarios, to check that they catch its loss
// (they must then fail; not for CI): "surge" puts back the rolling update that stops the old node
// pod before starting the new one (maxSurge 0, maxUnavailable 1), "spare" leaves one forwarder per
// node pod and one proxy process per proxy pod.
const removeEnv = "APIPROXY_E2E_REMOVE"

func removeMechanism(t *testing.T, c *realnode.Cluster, what string) {
	t.Helper()
	ctx := context.Background()
	patch := func(args ...string) {
		t.Helper()
		if out, stderr, err := c.RunKubectl(ctx, t, append([]string{"-n", ns, "patch"}, args...)...); err != nil {
			t.Fatalf("kubectl patch %v: %v %s %s", args, err, out, stderr)
		}
	}
	switch what {
	case "":
		return
	case "surge":
		patch("daemonset/apiproxy-node", "--type", "merge", "-p", `{"spec":{"updateStrategy":{"rollingUpdate":{"maxSurge":0,"maxUnavailable":1}}}}`)
	case "spare":
		patch("daemonset/apiproxy-node", "--type", "json", "-p", `[{"op":"remove","path":"/spec/template/spec/containers/2"}]`)
		patch("deployment/apiproxy-proxy", "--type", "json", "-p", `[{"op":"remove","path":"/spec/template/spec/containers/1"}]`)
		for _, w := range []string{"daemonset/apiproxy-node", "deployment/apiproxy-proxy"} {
			if out, stderr, err := c.RunKubectl(ctx, t, "-n", ns, "rollout", "status", w, "--timeout", "3m"); err != nil {
				t.Fatalf("rollout status %s: %v %s %s", w, err, out, stderr)
			}
		}
		waitGone(t, c, "app.kubernetes.io/part-of=apiproxy", 90*time.Second)
	default:
		t.Fatalf("%s=%q: use surge or spare", removeEnv, what)
	}
	t.Logf("%s=%s: running the scenarios without that mechanism; they must fail", removeEnv, what)
}

// disruption is what a scenario did: which clients' watches rode on pods it replaced (they must end
// cleanly and reopen), and, for a kill, when and on which client's path.
type disruption struct {
	replaced []*loadClient
	killed   time.Time
	killPath *loadClient
}

type scenarioRow struct {
	name  string
	cells []string
}

// measure reads both clients before and after the disruption and judges the difference.
func measure(t *testing.T, name string, clients []*loadClient, disrupt func(t *testing.T) disruption) scenarioRow {
	began := time.Now()
	before := make([]loadStats, len(clients))
	for i, l := range clients {
		before[i] = l.stats(t)
	}
	d := disrupt(t)
	row := scenarioRow{name: name}
	for i, l := range clients {
		mustEnd := slices.Contains(d.replaced, l)
		// After the disruption: a request that finished later, and the watch open again (after its
		// end when its pod was replaced).
		deadline := time.Now().Add(60 * time.Second)
		var after loadStats
		for {
			after = l.stats(t)
			ended := after.Watch.EndedClean > before[i].Watch.EndedClean || len(after.Watch.Errors) > len(before[i].Watch.Errors)
			if after.LastRequest.After(time.Now().Add(-time.Second)) && after.Watch.Open && (!mustEnd || ended) {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("%s client: 60 s after the disruption, last request at %s, watch open=%v, ended %d times (before %d); must end: %v",
					l.name, after.LastRequest.Format(time.TimeOnly), after.Watch.Open, after.Watch.EndedClean, before[i].Watch.EndedClean, mustEnd)
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		total, failed := after.Requests-before[i].Requests, after.Failed-before[i].Failed
		inFlight := 0
		detailed := after.Failures[min(len(before[i].Failures), len(after.Failures)):]
		if n := int(failed) - len(detailed); n > 0 {
			t.Errorf("%s client: %d more requests failed (the client keeps details of the first %d only)", l.name, n, len(after.Failures))
		}
		for _, f := range detailed {
			// Only a request in flight on the killed process may fail: begun before the kill (the
			// kernel delivers SIGKILL within a moment: 100 ms of slack) and ended after it.
			if d.killPath == l && !f.Start.After(d.killed.Add(100*time.Millisecond)) && !f.End.Before(d.killed) {
				inFlight++
				continue
			}
			t.Errorf("%s client: a request failed at %s (%s after the scenario began): %s", l.name, f.Start.Format("15:04:05.000"), f.Start.Sub(began).Round(time.Millisecond), f.Error)
		}
		for _, w := range after.Watch.Errors[min(len(before[i].Watch.Errors), len(after.Watch.Errors)):] {
			t.Errorf("%s client: the watch failed at %s: %s", l.name, w.Start.Format("15:04:05.000"), w.Error)
		}
		if total < 100 {
			t.Errorf("%s client: only %d requests during the scenario: the load did not exercise it", l.name, total)
		}
		cell := fmt.Sprintf("%d / %d", failed, total)
		if inFlight > 0 {
			cell += fmt.Sprintf(" (in flight on the killed process: %d)", inFlight)
		}
		// A GET whose connection was reset and that passed on a second connection, as client-go
		// retries it: shown, and logged, but not a lost request.
		if retried := after.Retried - before[i].Retried; retried > 0 {
			cell += fmt.Sprintf(" (%d reset and retried, as client-go does)", retried)
			for _, r := range after.Retries[min(len(before[i].Retries), len(after.Retries)):] {
				t.Logf("%s client: a request's connection was reset at %s (%s after the scenario began) and the retry passed: %s", l.name, r.Start.Format("15:04:05.000"), r.Start.Sub(began).Round(time.Millisecond), r.Error)
			}
		}
		ends := after.Watch.EndedClean - before[i].Watch.EndedClean
		watch := "stayed open"
		if ends > 0 {
			watch = fmt.Sprintf("ended cleanly %d×, reopened", ends)
		}
		if n := len(after.Watch.Errors) - len(before[i].Watch.Errors); n > 0 {
			watch = fmt.Sprintf("%d errors", n)
		}
		row.cells = append(row.cells, cell, watch)
	}
	return row
}

// agentLogs logs the last lines of every agent container (the access log names how each tunnel
// ended), for a scenario that failed: the pods are gone by the end of the test.
func agentLogs(t *testing.T, c *realnode.Cluster) {
	t.Helper()
	for _, sel := range []string{"app.kubernetes.io/component=node", "app.kubernetes.io/component=proxy"} {
		out, stderr, err := c.RunKubectl(context.Background(), t, "-n", ns, "logs", "-l", sel, "--all-containers", "--prefix", "--tail", "40")
		t.Logf("agent logs (%s): %v\n%s%s", sel, err, out, stderr)
	}
}

func logTable(t *testing.T, rows []scenarioRow) {
	var b strings.Builder
	b.WriteString("\n| scenario | node IP client: failed / total | its watch | connect client: failed / total | its watch |\n|---|---|---|---|---|\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %s |\n", r.name, strings.Join(r.cells, " | "))
	}
	t.Log(b.String())
}

// rollout restarts a workload and waits for kubectl's rollout status.
func rollout(t *testing.T, c *realnode.Cluster, what string) {
	t.Helper()
	ctx := context.Background()
	if out, stderr, err := c.RunKubectl(ctx, t, "-n", ns, "rollout", "restart", what); err != nil {
		t.Fatalf("rollout restart %s: %v %s %s", what, err, out, stderr)
	}
	if out, stderr, err := c.RunKubectl(ctx, t, "-n", ns, "rollout", "status", what, "--timeout", "3m"); err != nil {
		t.Fatalf("rollout status %s: %v %s %s", what, err, out, stderr)
	}
}

// waitGone waits until no pod of the selector is terminating: the old pods' drains are part of
// the rollout.
func waitGone(t *testing.T, c *realnode.Cluster, selector string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		pods, err := c.Clientset(t).CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			t.Fatal(err)
		}
		var left []string
		for _, p := range pods.Items {
			if p.DeletionTimestamp != nil || !podReady(&p) {
				left = append(left, p.Name)
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pods %s still terminating or not ready after %s", strings.Join(left, ", "), timeout)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func podImageIDs(t *testing.T, c *realnode.Cluster, selector string) []string {
	t.Helper()
	pods, err := c.Clientset(t).CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, p := range pods.Items {
		for _, st := range p.Status.ContainerStatuses {
			if !slices.Contains(ids, st.ImageID) {
				ids = append(ids, st.ImageID)
			}
		}
	}
	return ids
}

// killContainer sends SIGKILL to a container's process (its entrypoint, the agent) of the first pod
// of the selector, and waits until the kubelet has restarted it and the pod is ready again.
func killContainer(t *testing.T, c *realnode.Cluster, selector, container string, path *loadClient) disruption {
	t.Helper()
	pods, err := c.Clientset(t).CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: selector})
	if err != nil || len(pods.Items) == 0 {
		t.Fatalf("pods %s: %v", selector, err)
	}
	pod := pods.Items[0]
	restarts := restartCount(&pod, container)
	pid := c.ContainerPID(t, ns, pod.Name, container)
	killed := time.Now()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill -9 %d (container %s of %s): %v", pid, container, pod.Name, err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		p, err := c.Clientset(t).CoreV1().Pods(ns).Get(context.Background(), pod.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if restartCount(p, container) > restarts && podReady(p) {
			t.Logf("container %s of %s restarted and ready %s after the kill", container, pod.Name, time.Since(killed).Round(100*time.Millisecond))
			// Load on for a while with the restarted process back (the clients measure the whole time).
			time.Sleep(time.Until(killed.Add(killScenario)))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("container %s of %s not restarted and ready 60 s after the kill: %+v", container, pod.Name, p.Status.ContainerStatuses)
		}
		time.Sleep(200 * time.Millisecond)
	}
	return disruption{killed: killed, killPath: path}
}

// killScenario is how long a kill scenario lasts from the kill: past the restart, so both the gap and
// the return are measured.
const killScenario = 6 * time.Second

func restartCount(p *corev1.Pod, container string) int32 {
	for _, st := range p.Status.ContainerStatuses {
		if st.Name == container {
			return st.RestartCount
		}
	}
	return -1
}

// forwarderTunnels sums the node forwarders' tunnel counters (the metrics ports that answer: both
// forwarders', or one when a scenario check removed the second).
func forwarderTunnels(t *testing.T) float64 {
	t.Helper()
	var sum float64
	answered := 0
	for _, port := range []string{"9191", "9192"} {
		resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + net.JoinHostPort(install.DefaultNodeIP, port) + "/metrics")
		if err != nil {
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		answered++
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "apiproxy_proxy_tunnels_total{") {
				var v float64
				f := strings.Fields(l)
				if _, err := fmt.Sscan(f[len(f)-1], &v); err == nil {
					sum += v
				}
			}
		}
	}
	if answered == 0 {
		t.Fatalf("no node forwarder metrics on %s:9191 or :9192", install.DefaultNodeIP)
	}
	return sum
}

// loadClient is one `app kube-load`: its /stats URL.
type loadClient struct {
	name, statsURL string
}

type loadStats struct {
	Requests    int64         `json:"requests"`
	Failed      int64         `json:"failed"`
	Failures    []loadFailure `json:"failures"`
	Retried     int64         `json:"retried"`
	Retries     []loadFailure `json:"retries"`
	LastRequest time.Time     `json:"lastRequest"`
	Watch       struct {
		Opened     int64         `json:"opened"`
		EndedClean int64         `json:"endedClean"`
		Errors     []loadFailure `json:"errors"`
		Open       bool          `json:"open"`
	} `json:"watch"`
}

type loadFailure struct {
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
	Error string    `json:"error"`
}

func (l *loadClient) stats(t *testing.T) loadStats {
	t.Helper()
	var s loadStats
	if err := json.Unmarshal([]byte(httpGet(t, l.statsURL)), &s); err != nil {
		t.Fatalf("%s client stats: %v", l.name, err)
	}
	return s
}

// waitLoad waits until the client has finished a request after since and has its watch open.
func waitLoad(t *testing.T, l *loadClient, since time.Time, timeout time.Duration) bool {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		s := l.stats(t)
		if s.LastRequest.After(since) && s.Watch.Open && s.Requests > 0 {
			return true
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s client: no request after %s or no watch open within %s: %+v", l.name, since.Format(time.TimeOnly), timeout, s)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// startLoadPod runs the client in a pod on the node (injected by the webhook: it reaches
// kubernetes.default.svc at the node IP) and returns it once it answers.
func startLoadPod(t *testing.T, c *realnode.Cluster) *loadClient {
	t.Helper()
	ctx := context.Background()
	cs := c.Clientset(t)
	// The watch lists and watches ConfigMaps of default.
	rb := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "load-view"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "view"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "default", Namespace: "default"}},
	}
	if _, err := cs.RbacV1().RoleBindings("default").Create(ctx, rb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod, err := cs.CoreV1().Pods("default").Create(ctx, c.AppPod("load", "kube-load", ":8080", "20ms"), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	aliased := slices.ContainsFunc(pod.Spec.HostAliases, func(h corev1.HostAlias) bool {
		return h.IP == install.DefaultNodeIP && slices.Contains(h.Hostnames, "kubernetes.default.svc")
	})
	if !aliased {
		t.Fatalf("the load pod's hostAliases %+v lack kubernetes.default.svc -> %s (the default host alias)", pod.Spec.HostAliases, install.DefaultNodeIP)
	}
	pod = c.WaitPodReady(t, "default", "load", 90*time.Second)
	return &loadClient{name: "node IP", statsURL: "http://" + net.JoinHostPort(pod.Status.PodIP, "8080") + "/stats"}
}

// startConnectLoad runs `kubectl apiproxy connect --proxy-url` to the proxy Service in listener mode
// on this machine, and the same client program against its kubeconfig; both are stopped by PID.
func startConnectLoad(t *testing.T, e *env) *loadClient {
	t.Helper()
	svc, err := e.c.Clientset(t).CoreV1().Services(ns).Get(context.Background(), "apiproxy-proxy", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	proxyURL := "http://" + net.JoinHostPort(svc.Spec.ClusterIP, "8118")
	kubeconfig := startProcess(t, "connect", "export KUBECONFIG=", harness.Binary(t, "./cmd/kubectl-apiproxy"),
		"--kubeconfig", e.c.Kubeconfig, "connect", "--proxy-url", proxyURL)
	addr := startProcess(t, "kube-load", "stats on ", harness.Binary(t, "./test/images/app"), "kube-load", "127.0.0.1:0", "20ms", kubeconfig)
	return &loadClient{name: "connect", statsURL: "http://" + addr + "/stats"}
}

// startProcess runs a command until the test ends (stopped by PID: SIGTERM, then SIGKILL) and
// returns the rest of the first stdout line that starts with prefix.
func startProcess(t *testing.T, name, prefix string, argv ...string) string {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
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
	done := make(chan struct{})
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), prefix); ok {
				select {
				case found <- v:
				default:
				}
			}
		}
		_ = cmd.Wait()
		close(done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("%s stderr (end):\n%s", name, lastBytes(stderr.String(), 3000))
		}
	})
	select {
	case v := <-found:
		return v
	case <-done:
		t.Fatalf("%s exited before printing %q:\n%s", name, prefix, stderr.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("%s printed no %q within 60 s:\n%s", name, prefix, stderr.String())
	}
	return ""
}

func lastBytes(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}
