package realnode_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/apiproxy/apiproxy/test/harness"
	"github.com/apiproxy/apiproxy/test/harness/realnode"
)

func TestMain(m *testing.M) { os.Exit(harness.RunTests(m)) }

// The node is real, and when the test is over nothing of it is left: the smoke runs in a subtest
// whose cleanup tears the cluster down, then the machine is compared with before.
func TestRealNodeSmokeAndTeardown(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the real-node cluster needs root: run the tests as root, as CI does")
	}
	realnode.Lock(t) // no other package's cluster may run while we look at the machine
	before := snapshot(t)
	t.Run("smoke", smoke)
	if t.Failed() {
		return
	}
	after := snapshot(t)
	after.assertClean(t, before)
}

const holdEnv = "APIPROXY_REALNODE_HOLD"

// A killed run (SIGKILL of the test process: no cleanup ran) leaves its components and pods
// running, and the next Start clears all of it before starting its own cluster.
func TestKilledRunIsCleanedUp(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the real-node cluster needs root: run the tests as root, as CI does")
	}
	if os.Getenv(holdEnv) != "" {
		t.Skip("runs only in the parent test")
	}
	realnode.Lock(t) // held for the child too, and for the next run
	before := snapshot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestHelperHoldsCluster$", "-test.v", "-test.count=1")
	// The child's built binaries land in our temporary directory, which goes when we are done.
	cmd.Env = append(os.Environ(), holdEnv+"=1", realnode.InheritedLockEnv+"=1", "TMPDIR="+t.TempDir())
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	held := make(chan bool, 1)
	var log strings.Builder
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			log.WriteString(sc.Text() + "\n")
			if sc.Text() == "HOLDING" {
				held <- true
			}
		}
		close(held)
	}()
	if !<-held {
		_ = cmd.Wait()
		t.Fatalf("the child run did not get its cluster up:\n%s", log.String())
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()

	// What the killed run left: its components, its pod, the bridge.
	if _, err := netlink.LinkByName(realnode.Bridge); err != nil {
		t.Fatalf("no bridge after the kill (%v): nothing to clean up, the test proves nothing", err)
	}
	if !processRuns("/app serve") {
		t.Fatal("the killed run's pod is not running: nothing to clean up, the test proves nothing")
	}
	if out, err := exec.Command("iptables", "-t", "nat", "-S", "CNI-HOSTPORT-DNAT").CombinedOutput(); err != nil || !strings.Contains(string(out), "CNI-DN-") {
		t.Fatalf("the killed run left no portmap chains (%v): %s", err, out)
	}

	t.Run("next run", func(t *testing.T) {
		c := realnode.Start(t, realnode.Options{})
		c.DumpLogsOnFailure(t)
		pods, err := c.Clientset(t).CoreV1().Pods("").List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(pods.Items) != 0 {
			t.Errorf("the new cluster has %d pods of the killed run", len(pods.Items))
		}
	})
	if t.Failed() {
		return
	}
	snapshot(t).assertClean(t, before)
}

// TestHelperHoldsCluster is the child of TestKilledRunIsCleanedUp: it starts a cluster with a pod,
// says HOLDING, and waits to be killed.
func TestHelperHoldsCluster(t *testing.T) {
	if os.Getenv(holdEnv) == "" {
		t.Skip("helper process of TestKilledRunIsCleanedUp")
	}
	c := realnode.Start(t, realnode.Options{})
	// With a hostPort, so the kill also leaves the portmap plugin's chains (CNI DEL never runs).
	pod := c.AppPod("leftover", "serve", ":8080")
	pod.Spec.Containers[0].Ports = []corev1.ContainerPort{{ContainerPort: 8080, HostPort: 28090}}
	if _, err := c.Clientset(t).CoreV1().Pods("default").Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	c.WaitPodReady(t, "default", "leftover", 90*time.Second)
	fmt.Println("HOLDING")
	time.Sleep(5 * time.Minute)
}

func processRuns(substr string) bool {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(strings.ReplaceAll(string(b), "\x00", " "), substr) {
			return true
		}
	}
	return false
}

func smoke(t *testing.T) {
	c := realnode.Start(t, realnode.Options{})
	c.DumpLogsOnFailure(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cs := c.Clientset(t)

	// The safety net is in place before anything runs.
	if out, err := exec.Command("iptables", "-S", "OUTPUT").CombinedOutput(); err != nil || !strings.Contains(string(out), "APXNODE-OUTPUT") {
		t.Fatalf("OUTPUT has no jump to our DROP chain: %v\n%s", err, out)
	}

	hostnet := appPod("hostnet", c.AppImage, true, "127.0.0.1:28081")
	podnet := appPod("podnet", c.AppImage, false, ":8080")
	podnet.Labels = map[string]string{"app": "podnet"}
	for _, p := range []*corev1.Pod{hostnet, podnet} {
		if _, err := cs.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	waitPodReady(ctx, t, cs, "default", "hostnet")
	ip := waitPodReady(ctx, t, cs, "default", "podnet").Status.PodIP

	t.Run("hostNetwork pod", func(t *testing.T) {
		assertGet(t, "http://127.0.0.1:28081/", "hello from ")
	})
	t.Run("pod on the bridge", func(t *testing.T) {
		_, pods, _ := net.ParseCIDR(c.PodCIDR)
		if !pods.Contains(net.ParseIP(ip)) {
			t.Fatalf("pod IP %s not in the pod CIDR %s", ip, c.PodCIDR)
		}
		assertGet(t, "http://"+net.JoinHostPort(ip, "8080")+"/", "hello from podnet")
	})

	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "podnet"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "podnet"},
			Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}
	svc, err := cs.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cip := "http://" + svc.Spec.ClusterIP + "/"
	t.Run("ClusterIP from the host", func(t *testing.T) {
		eventually(t, 20*time.Second, func() error { return get(cip, "hello from podnet") })
	})
	t.Run("ClusterIP from a pod", func(t *testing.T) {
		out, stderr, err := c.RunKubectl(ctx, t, "exec", "podnet", "--", "/app", "get", cip)
		if err != nil || !strings.Contains(out, "200 hello from podnet") {
			t.Fatalf("exec get %s: out=%q stderr=%q err=%v", cip, out, stderr, err)
		}
	})
	t.Run("exec", func(t *testing.T) {
		out, stderr, err := c.RunKubectl(ctx, t, "exec", "podnet", "--", "/app", "echo", "exec", "works")
		if err != nil || out != "exec works\n" {
			t.Fatalf("exec: out=%q stderr=%q err=%v", out, stderr, err)
		}
	})
	t.Run("logs", func(t *testing.T) {
		out, stderr, err := c.RunKubectl(ctx, t, "logs", "podnet")
		if err != nil || !strings.Contains(out, "serving on") {
			t.Fatalf("logs: out=%q stderr=%q err=%v", out, stderr, err)
		}
	})
	t.Run("port-forward", func(t *testing.T) {
		addr := portForward(ctx, t, c, "pod/podnet", "8080")
		assertGet(t, "http://"+addr+"/", "hello from podnet")
	})
	t.Run("pod pulls from the node's registry by digest", func(t *testing.T) {
		_, archive := harness.AppImage(t)
		img, err := tarball.ImageFromPath(archive, nil)
		if err != nil {
			t.Fatal(err)
		}
		ref, err := c.PushImage("test/app:pulled", img)
		if err != nil {
			t.Fatal(err)
		}
		pod := appPod("pulled", ref, false, ":8080")
		pod.Spec.Containers[0].ImagePullPolicy = corev1.PullIfNotPresent
		if _, err := cs.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		st := waitPodReady(ctx, t, cs, "default", "pulled").Status.ContainerStatuses
		_, digest, _ := strings.Cut(ref, "@")
		if want := c.Registry + "/test/app@" + digest; len(st) != 1 || st[0].ImageID != want {
			t.Errorf("container statuses %+v, want image ID %s", st, want)
		}
	})
	t.Run("component logs", func(t *testing.T) {
		if !strings.Contains(c.Log("kubelet"), c.NodeName) {
			t.Errorf("kubelet log %s does not mention the node", c.LogPath("kubelet"))
		}
	})
}

// appPod is a pod of the test app serving on addr, ready when it answers.
func appPod(name, image string, hostNetwork bool, addr string) *corev1.Pod {
	_, port, _ := net.SplitHostPort(addr)
	probe := &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/", Port: intstr.Parse(port)}}, PeriodSeconds: 1}
	if hostNetwork {
		probe.HTTPGet.Host = "127.0.0.1"
	}
	grace := int64(1)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{
			HostNetwork:                   hostNetwork,
			TerminationGracePeriodSeconds: &grace,
			Containers: []corev1.Container{{Name: "app", Image: image, ImagePullPolicy: corev1.PullNever,
				Args: []string{"serve", addr}, ReadinessProbe: probe}},
		},
	}
}

func waitPodReady(ctx context.Context, t *testing.T, cs kubernetes.Interface, ns, name string) *corev1.Pod {
	t.Helper()
	var pod *corev1.Pod
	eventually(t, 90*time.Second, func() error {
		var err error
		pod, err = cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, cond := range pod.Status.Conditions {
			if cond.Type == corev1.PodReady && cond.Status == corev1.ConditionTrue {
				return nil
			}
		}
		return fmt.Errorf("pod %s/%s not ready: phase %s, %+v", ns, name, pod.Status.Phase, pod.Status.ContainerStatuses)
	})
	return pod
}

func eventually(t *testing.T, d time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %v", d, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func get(url, want string) error {
	c := &http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.Contains(string(body), want) {
		return fmt.Errorf("GET %s: %s %q, want 200 with %q", url, resp.Status, body, want)
	}
	return nil
}

func assertGet(t *testing.T, url, want string) {
	t.Helper()
	if err := get(url, want); err != nil {
		t.Fatal(err)
	}
}

// portForward runs kubectl port-forward to a random local port and returns its address; the
// process is stopped by PID when the test ends.
func portForward(ctx context.Context, t *testing.T, c *realnode.Cluster, target, port string) string {
	t.Helper()
	cmd := exec.CommandContext(ctx, c.Kubectl, "--kubeconfig", c.Kubeconfig, "port-forward", "--address", "127.0.0.1", target, ":"+port)
	cmd.Env = append(os.Environ(), "KUBECONFIG=")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	re := regexp.MustCompile(`Forwarding from (127\.0\.0\.1:\d+)`)
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				found <- m[1]
				break
			}
		}
		_, _ = io.Copy(io.Discard, out)
	}()
	select {
	case addr := <-found:
		return addr
	case <-time.After(30 * time.Second):
		t.Fatal("kubectl port-forward printed no local address within 30s")
	}
	return ""
}

// machineState is what a real-node cluster could leave behind.
type machineState struct {
	iptables  []string // rules and user chains of iptables-save and ip6tables-save
	links     []string
	cgroups   []string
	ipForward string
}

func snapshot(t *testing.T) machineState {
	t.Helper()
	var s machineState
	for _, save := range []string{"iptables-save", "ip6tables-save"} {
		out, err := exec.Command(save).Output()
		if err != nil {
			t.Fatalf("%s: %v", save, err)
		}
		table := ""
		for _, line := range strings.Split(string(out), "\n") {
			switch {
			case strings.HasPrefix(line, "*"):
				table = line[1:]
			case strings.HasPrefix(line, "-A "):
				s.iptables = append(s.iptables, save+" "+table+" "+line)
			case strings.HasPrefix(line, ":"):
				chain := strings.Fields(line[1:])[0]
				if !slices.Contains([]string{"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}, chain) {
					s.iptables = append(s.iptables, save+" "+table+" chain "+chain)
				}
			}
		}
	}
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		s.links = append(s.links, l.Attrs().Name+" "+l.Type())
	}
	s.cgroups, _ = filepath.Glob("/sys/fs/cgroup/*/kubepods")
	b, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	s.ipForward = strings.TrimSpace(string(b))
	return s
}

func (after machineState) assertClean(t *testing.T, before machineState) {
	t.Helper()
	diff := func(what string, b, a []string) {
		for _, x := range a {
			if !slices.Contains(b, x) {
				t.Errorf("left behind: %s %s", what, x)
			}
		}
	}
	diff("iptables", before.iptables, after.iptables)
	diff("link", before.links, after.links)
	diff("cgroup", before.cgroups, after.cgroups)
	if after.ipForward != before.ipForward {
		t.Errorf("net.ipv4.ip_forward is %s, was %s", after.ipForward, before.ipForward)
	}
	// Processes: nothing runs from our directories or as a shim of our containerd.
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(b) == 0 {
			continue
		}
		cmd := strings.ReplaceAll(string(b), "\x00", " ")
		if strings.Contains(cmd, realnode.StateDir) || strings.Contains(cmd, realnode.RunDir) ||
			strings.Contains(cmd, "/app serve") || strings.HasPrefix(cmd, "/pause") {
			t.Errorf("left behind: process %s: %s", e.Name(), cmd)
		}
	}
	mounts, _ := os.ReadFile("/proc/self/mounts")
	for _, line := range strings.Split(string(mounts), "\n") {
		if strings.Contains(line, realnode.StateDir) || strings.Contains(line, realnode.RunDir) || strings.Contains(line, "/run/containerd") {
			t.Errorf("left behind: mount %s", line)
		}
	}
	for _, p := range []string{realnode.StateDir, realnode.RunDir, "/var/lib/kubelet", "/var/log/containers", "/run/containerd", "/var/lib/cni/results"} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("left behind: %s", p)
		}
	}
	routes, _ := netlink.RouteList(nil, netlink.FAMILY_V4)
	for _, r := range routes {
		if r.Dst != nil && (strings.HasPrefix(r.Dst.String(), "10.96.0.") || strings.HasPrefix(r.Dst.String(), "10.97.0.") || strings.HasPrefix(r.Dst.String(), "10.244.0.")) {
			t.Errorf("left behind: route %s", r)
		}
	}
}
