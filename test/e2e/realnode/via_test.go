package realnode_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/apiproxy/apiproxy/pkg/connect"
	"github.com/apiproxy/apiproxy/pkg/install"
	"github.com/apiproxy/apiproxy/test/fixtures/liqo"
	"github.com/apiproxy/apiproxy/test/harness"
	"github.com/apiproxy/apiproxy/test/harness/nodestandin"
	"github.com/apiproxy/apiproxy/test/harness/realnode"
	"github.com/apiproxy/apiproxy/test/scenario"
	"github.com/apiproxy/apiproxy/test/testnet"
)

const (
	// viaEchoPrefix starts every answer of cl02's pod "web" on port 8080.
	viaEchoPrefix = "pong:"
	// viaBridgeHost is the host part of cl02's proxy address on the node's bridge: LocalIP(viaBridgeHost).
	viaBridgeHost = 8
	// viaDials is how many tunnels the dial check opens, one after the other, on one relay session.
	viaDials = 200
)

// viaEnv is the relay topology: cl01 is the real-node cluster with `install --relay` (its proxy pod
// relays); cl02 is an API-server-only cluster with a node stand-in (exec, port-forward) and its
// `agent proxy` on the host, listening on an address of the node's bridge, the only place the pod
// can reach it; Liqo-shaped objects say that cl01 reaches cl02's proxy there.
type viaEnv struct {
	cl01 *realnode.Cluster
	cl02 *harness.Cluster
	// kubeconfig has contexts cl01 and cl02.
	kubeconfig string
	// proxyAddr is cl02's proxy as cl01 (and its pods) reach it; proxyLog its log.
	proxyAddr, proxyLog string
	plugin, kubectl     string
}

// TestViaRelayOnRealNode: `connect --via cl01` from the test process (the laptop) through cl01's API
// server and the real kubelet's port-forward into cl01's proxy pod, which CONNECTs to cl02's proxy
// on the bridge, which tunnels to cl02's API server; TLS from kubectl to cl02's API server.
func TestViaRelayOnRealNode(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the real-node cluster needs root: run the tests as root, as CI does")
	}
	v := viaSetUp(t)
	ctx := context.Background()
	cs01 := v.cl01.Clientset(t)

	t.Run("install --relay allows exactly the peer's remapped CIDR on the proxy port", func(t *testing.T) {
		d, err := cs01.AppsV1().Deployments(ns).Get(ctx, "apiproxy-proxy", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var allow []string
		args := d.Spec.Template.Spec.Containers[0].Args
		for i, a := range args {
			if a == "--allow-target" && i+1 < len(args) {
				allow = append(allow, args[i+1])
			}
		}
		if want := []string{v.cl01.LocalCIDR + ":8118"}; !slices.Equal(allow, want) {
			t.Fatalf("proxy --allow-target %v, want %v (args %v)", allow, want, args)
		}
	})

	var relayPod string
	t.Run("connect --via cl01 -- kubectl get ns: cl02 answers, verified against cl02's CA", func(t *testing.T) {
		r := v.run(t, "", "connect", "--remote", "cl01", "--via", "cl01", "--", v.kubectl, "get", "ns", "-o", "name")
		if r.err != nil || !strings.Contains(r.stdout, "namespace/"+scenario.OnlyInProvider) {
			t.Fatalf("connect --via: %v\nstdout: %s\nstderr: %s", r.err, r.stdout, r.stderr)
		}
		relayPod = viaSessionPod(t, r.stderr)
		// kubectl trusts cl02's CA alone, and nothing lets it skip the check: the answer above came
		// from cl02's API server through TLS that started on this machine.
		r = v.run(t, "", "connect", "--remote", "cl01", "--via", "cl01", "--", v.kubectl, "config", "view", "--raw", "--minify",
			"-o", "jsonpath={.clusters[0].cluster.certificate-authority-data} {.clusters[0].cluster.insecure-skip-tls-verify}")
		if r.err != nil {
			t.Fatalf("config view: %v %s", r.err, r.stderr)
		}
		ca, insecure, _ := strings.Cut(strings.TrimSpace(r.stdout), " ")
		if want := viaB64(v.cl02.Config.CAData); ca != want || insecure == "true" {
			t.Fatalf("the command's kubeconfig: CA %.40q... insecure %q, want cl02's CA and verification on", ca, insecure)
		}
	})
	if relayPod == "" {
		return
	}

	t.Run("the relay ran in the proxy pod, entered through the kubelet's port-forward", func(t *testing.T) {
		// The kubelet's port-forward dials the port inside the pod's network namespace: the proxy sees
		// the tunnel come from the pod's loopback, and relays it to cl02's proxy on the bridge.
		// The line is written when the tunnel closes and flushed in a batch: give it a few seconds.
		var lines []string
		_ = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
			lines = viaTunnelLines(t, v, relayPod)
			return len(lines) > 0, nil
		})
		if len(lines) == 0 {
			out, _, _ := v.cl01.RunKubectl(ctx, t, "-n", ns, "logs", relayPod)
			t.Fatalf("proxy pod %s logged no tunnel to %s:\n%s", relayPod, v.proxyAddr, out)
		}
		for _, l := range lines {
			if !strings.Contains(l, `"peer"="127.0.0.1:`) && !strings.Contains(l, `peer="127.0.0.1:`) {
				t.Errorf("tunnel to %s not from the pod's loopback (a kubelet port-forward): %s", v.proxyAddr, l)
			}
		}
		// cl02's proxy was reached from inside the pod: its tunnels come from the pod's IP.
		pod, err := cs01.CoreV1().Pods(ns).Get(ctx, relayPod, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if b, ok := scenario.WaitForLog(v.proxyLog, `peer="`+pod.Status.PodIP+`:`, 10*time.Second); !ok {
			t.Errorf("cl02's proxy logged no tunnel from the relay pod's IP %s:\n%s", pod.Status.PodIP, b)
		}
	})

	t.Run("exec through the relay: stdin, stdout, stderr and the exit status", func(t *testing.T) {
		r := v.run(t, "data from the laptop", "connect", "--remote", "cl01", "--via", "cl01", "--", v.kubectl, "exec", "-i", "web", "--", "upper")
		if r.err != nil || r.stdout != "DATA FROM THE LAPTOP" || !strings.Contains(r.stderr, "done") {
			t.Fatalf("exec: out %q stderr %q err %v", r.stdout, r.stderr, r.err)
		}
		r = v.run(t, "", "connect", "--remote", "cl01", "--via", "cl01", "--", v.kubectl, "exec", "web", "--", "exit", "4")
		var exit *exec.ExitError
		if !errors.As(r.err, &exit) || exit.ExitCode() != 4 {
			t.Fatalf("exec exit status through connect: %v\n%s", r.err, r.stderr)
		}
	})

	t.Run("port-forward through the relay", func(t *testing.T) {
		lines := v.start(t, "connect", "--remote", "cl01", "--via", "cl01", "--", v.kubectl, "port-forward", "pod/web", ":8080")
		l := waitLine(t, lines, "Forwarding from 127.0.0.1:", 60*time.Second)
		addr := strings.Fields(strings.TrimPrefix(l, "Forwarding from "))[0]
		nodestandin.RoundTrip(t, addr, viaEchoPrefix, "hello")
		nodestandin.RoundTrip(t, addr, viaEchoPrefix, strings.Repeat("y", 128<<10))
	})

	t.Run("watch through the relay", func(t *testing.T) {
		lines := v.start(t, "connect", "--remote", "cl01", "--via", "cl01", "--", v.kubectl, "get", "pods", "--watch", "-o", "name")
		waitLine(t, lines, "pod/web", 60*time.Second) // the list: the watch starts after it
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "watched-via"},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "none"}}}}
		if _, err := v.cl02.Clientset(t).CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitLine(t, lines, "pod/watched-via", 30*time.Second)
	})

	t.Run(fmt.Sprintf("%d sequential dials on one port-forward session", viaDials), func(t *testing.T) {
		viaDialLoop(t, v, relayPod)
	})
}

// viaDialLoop opens viaDials tunnels one after the other through one Relay (the one connect uses),
// each carrying a TLS request to cl02's API server that the server closes first, after which the
// client still writes (as a client closing after the server does): the pattern that stalled a
// reused session. A stream that does not open on the session makes the Relay replace it (after up
// to 5 s): that must never happen.
func viaDialLoop(t *testing.T, v *viaEnv, relayPod string) {
	var sessions []string
	relay := &connect.Relay{Config: v.cl01.Config, Context: "cl01", Namespace: ns, Port: install.DefaultProxyPort,
		Selector: install.LabelPartOf + "=" + install.PartOf + "," + install.LabelComponent + "=proxy",
		Log: func(format string, args ...any) {
			line := fmt.Sprintf(format, args...)
			sessions = append(sessions, line)
			t.Log(line)
		}}
	defer relay.Close()
	vd := &connect.ViaDialer{Relay: relay, RemoteProxy: v.proxyAddr, Timeout: 30 * time.Second}
	tlsConfig, err := rest.TLSConfigFor(v.cl02.Config)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(v.cl02.Server)
	if err != nil {
		t.Fatal(err)
	}
	tlsConfig.ServerName = u.Hostname()

	tunnelsBefore := viaProxyTunnels(t, v, relayPod)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dials := make([]time.Duration, 0, viaDials)
	for i := range viaDials {
		start := time.Now()
		c, err := vd.DialContext(ctx, "tcp", u.Host)
		if err != nil {
			t.Fatalf("dial %d through the relay: %v\n%s", i+1, err, strings.Join(sessions, "\n"))
		}
		dials = append(dials, time.Since(start))
		if err := viaClosedByServer(c, tlsConfig); err != nil {
			t.Fatalf("request %d through the relay: %v", i+1, err)
		}
	}
	sorted := slices.Clone(dials)
	slices.Sort(sorted)
	slowest := slices.Index(dials, sorted[len(sorted)-1])
	over1s, _ := slices.BinarySearch(sorted, time.Second)
	t.Logf("%d dials through the relay: median %s, p95 %s, max %s (dial %d), %d over 1s",
		len(dials), sorted[len(sorted)/2].Round(time.Microsecond), sorted[len(sorted)*95/100].Round(time.Microsecond),
		sorted[len(sorted)-1].Round(time.Microsecond), slowest+1, len(sorted)-over1s)

	if n := relay.ReplacedSessions(); n != 0 {
		t.Errorf("the relay replaced its port-forward session %d times: a stream did not open on it", n)
	}
	if len(sessions) != 1 {
		t.Errorf("the relay opened %d port-forward sessions for %d dials, want 1:\n%s", len(sessions), viaDials, strings.Join(sessions, "\n"))
	}
	// Not a speed check: a stream that stalls is given up after 5 s (reusedSessionBound), so a dial
	// that slow is the stall itself, however loaded the machine.
	if slow := sorted[len(sorted)-1]; slow >= 5*time.Second {
		t.Errorf("dial %d took %s: the stall fallback's time", slowest+1, slow)
	}
	if after := viaProxyTunnels(t, v, relayPod); after-tunnelsBefore < viaDials {
		t.Errorf("proxy pod %s counted %v tunnels during the loop, want at least %d: the dials did not go through it", relayPod, after-tunnelsBefore, viaDials)
	}
}

// viaClosedByServer asks for cl02's only-in-cl02 namespace over TLS on raw with "Connection:
// close", reads up to the server's close and the tunnel's EOF, then writes twice more and closes
// (close_notify): bytes sent after the far end has gone.
func viaClosedByServer(raw net.Conn, cfg *tls.Config) error {
	c := tls.Client(raw, cfg)
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(c, "GET /api/v1/namespaces/"+scenario.OnlyInProvider+" HTTP/1.1\r\nHost: kubernetes\r\nConnection: close\r\n\r\n"); err != nil {
		return err
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return err
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte(`"name":"`+scenario.OnlyInProvider+`"`)) {
		return fmt.Errorf("GET namespace %s: %s %.200q %v", scenario.OnlyInProvider, resp.Status, body, err)
	}
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

// viaSetUp builds the topology (see viaEnv); everything goes away with the test.
func viaSetUp(t *testing.T) *viaEnv {
	t.Helper()
	ctx := context.Background()
	c := realnode.Start(t, realnode.Options{})
	c.DumpLogsOnFailure(t)
	ref := pushAgent(t, c)
	crds := harness.Cluster{Name: "cl01", Config: c.Config}
	crds.InstallCRDs(t, liqo.MustCRDs(t, liqo.V1_2_0)...)

	dir := t.TempDir()
	n2, err := nodestandin.New(t, "cl02-node", filepath.Join(dir, "n2"))
	if err != nil {
		t.Fatal(err)
	}
	cl02 := harness.Start(t, harness.Options{Name: "cl02", CRDs: liqo.MustCRDs(t, liqo.V1_2_0), ExtraArgs: n2.APIServerArgs()})
	if err := n2.Register(ctx, cl02.Config); err != nil {
		t.Fatal(err)
	}
	echo := nodestandin.EchoServer(t, viaEchoPrefix)
	if _, err := n2.AddPod(ctx, cl02.Config, nodestandin.Pod{Namespace: "default", Name: "web", Ports: map[int32]string{8080: echo}, Exec: nodestandin.UpperExec}); err != nil {
		t.Fatal(err)
	}
	if _, err := cl02.Clientset(t).CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: scenario.OnlyInProvider}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// cl02's proxy listens on an address of the node's bridge, from the harness's local range: the
	// pod reaches it through its default route, and nothing of it leaves the machine.
	bridgeIP := c.LocalIP(viaBridgeHost)
	viaAddBridgeAddr(t, bridgeIP)
	peering := viaPeering(t, c.LocalCIDR, bridgeIP)
	if err := scenario.Peer(ctx, cl02.Config, c.Config, peering); err != nil {
		t.Fatal(err)
	}
	v := &viaEnv{cl01: c, cl02: cl02, proxyAddr: net.JoinHostPort(bridgeIP, strconv.Itoa(scenario.ProxyPort)),
		plugin: harness.Binary(t, "./cmd/kubectl-apiproxy"), kubectl: c.Kubectl}
	p, err := scenario.RunAgentProxy(t, harness.Binary(t, "./cmd/agent"), v.proxyAddr, cl02.Server, filepath.Join(dir, "cl02-proxy.log"))
	if err != nil {
		t.Fatal(err)
	}
	v.proxyLog = p.Log
	v.kubeconfig = viaKubeconfig(t, c, cl02)

	r := v.run(t, "", "--context", "cl01", "install", "--relay", "--image", ref, "--wait", "--timeout", "3m")
	if r.err != nil {
		t.Fatalf("install --relay: %v\nstdout:\n%s\nstderr:\n%s", r.err, r.stdout, r.stderr)
	}
	return v
}

// viaPeering: cl02's proxy has the remapped IP 127.70.x.y in 127.70.0.0/N, which cl01 remaps to the
// node's local CIDR (same N): the host part of bridgeIP, so cl01 reaches the proxy at bridgeIP.
func viaPeering(t *testing.T, localCIDR, bridgeIP string) scenario.Peering {
	t.Helper()
	local := netip.MustParsePrefix(localCIDR)
	ip := netip.MustParseAddr(bridgeIP).As4()
	if !local.Addr().Is4() || local.Bits() < 16 {
		t.Fatalf("local CIDR %s: the peering fixture needs IPv4 and a prefix of /16 or longer", localCIDR)
	}
	ext := netip.PrefixFrom(netip.AddrFrom4([4]byte{127, 70, 0, 0}), local.Bits())
	remapped := netip.AddrFrom4([4]byte{127, 70, ip[2], ip[3]})
	if !ext.Contains(remapped) {
		t.Fatalf("%s not in %s", remapped, ext)
	}
	return scenario.Peering{ProviderRemappedIP: remapped.String(), ProviderExternalCIDR: ext.String(), ConsumerRemappedCIDR: local.String()}
}

// viaAddBridgeAddr puts ip/32 on the node's bridge until the test ends. A killed run leaves it on
// the bridge, which the next real-node cluster's clean-up removes with the bridge.
func viaAddBridgeAddr(t *testing.T, ip string) {
	t.Helper()
	link, err := netlink.LinkByName(realnode.Bridge)
	if err != nil {
		t.Fatal(err)
	}
	addr, err := netlink.ParseAddr(ip + "/32")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.AddrAdd(link, addr); err != nil {
		t.Fatalf("adding %s to %s: %v", addr, realnode.Bridge, err)
	}
	t.Cleanup(func() {
		if err := netlink.AddrDel(link, addr); err != nil {
			t.Errorf("removing %s from %s: %v", addr, realnode.Bridge, err)
		}
	})
}

// viaKubeconfig has contexts cl01 (the real node's admin) and cl02; cl02 is current.
func viaKubeconfig(t *testing.T, cl01 *realnode.Cluster, cl02 *harness.Cluster) string {
	t.Helper()
	kc := harness.MergeKubeconfigs(cl02)
	rn, err := clientcmd.LoadFromFile(cl01.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cur := rn.Contexts[rn.CurrentContext]
	kc.Clusters["cl01"] = rn.Clusters[cur.Cluster]
	kc.AuthInfos["cl01"] = rn.AuthInfos[cur.AuthInfo]
	kc.Contexts["cl01"] = &clientcmdapi.Context{Cluster: "cl01", AuthInfo: "cl01", Namespace: "default"}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
	return path
}

type viaResult struct {
	stdout, stderr string
	err            error
}

// run runs the plugin with the topology's kubeconfig (current context cl02) and stdin.
func (v *viaEnv) run(t *testing.T, stdin string, args ...string) viaResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, v.plugin, append([]string{"--kubeconfig", v.kubeconfig}, args...)...)
	cmd.Env = append(os.Environ(), "KUBECONFIG=")
	cmd.Stdin = strings.NewReader(stdin)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	return viaResult{o.String(), e.String(), err}
}

// start runs the plugin in the background, in a process group of its own (connect's command is
// its child, which a terminal's Ctrl-C reaches directly): at the end of the test the group gets
// SIGINT, then SIGKILL. It returns the stdout lines.
func (v *viaEnv) start(t *testing.T, args ...string) <-chan string {
	t.Helper()
	cmd := exec.Command(v.plugin, append([]string{"--kubeconfig", v.kubeconfig}, args...)...)
	cmd.Env = append(os.Environ(), "KUBECONFIG=")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &testnet.SyncBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 100)
	exited := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default: // nobody reads any more
			}
		}
		close(lines)
		_ = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		pgid := cmd.Process.Pid
		_ = syscall.Kill(-pgid, syscall.SIGINT)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			<-exited
			t.Errorf("%v did not exit on SIGINT", args)
		}
		if t.Failed() {
			t.Logf("%v stderr:\n%s", args, stderr.String())
		}
	})
	return lines
}

// viaSessionPod is the proxy pod that connect's relay session went to, from its stderr.
func viaSessionPod(t *testing.T, stderr string) string {
	t.Helper()
	const marker = "port-forward session to pod " + ns + "/"
	_, rest, ok := strings.Cut(stderr, marker)
	if !ok {
		t.Fatalf("connect reported no port-forward session to a pod in %s:\n%s", ns, stderr)
	}
	pod := strings.Fields(rest)[0]
	return pod
}

// viaTunnelLines are the proxy pod's log lines of tunnels to cl02's proxy.
func viaTunnelLines(t *testing.T, v *viaEnv, pod string) []string {
	t.Helper()
	out, stderr, err := v.cl01.RunKubectl(context.Background(), t, "-n", ns, "logs", pod)
	if err != nil {
		t.Fatalf("logs of %s: %v %s", pod, err, stderr)
	}
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, v.proxyAddr) && strings.Contains(l, "authority") {
			lines = append(lines, l)
		}
	}
	return lines
}

// viaProxyTunnels is the proxy pod's apiproxy_proxy_tunnels_total, read through the API server.
func viaProxyTunnels(t *testing.T, v *viaEnv, pod string) float64 {
	t.Helper()
	ctx := context.Background()
	cs := v.cl01.Clientset(t)
	p, err := cs.CoreV1().Pods(ns).Get(ctx, pod, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Every proxy process of the pod (they share the proxy port): each has a metrics port.
	var sum float64
	for _, c := range p.Spec.Containers {
		for _, cp := range c.Ports {
			if !strings.HasPrefix(cp.Name, "metrics") {
				continue
			}
			b, err := cs.CoreV1().Pods(ns).ProxyGet("http", pod, strconv.Itoa(int(cp.ContainerPort)), "/metrics", nil).DoRaw(ctx)
			if err != nil {
				t.Fatalf("metrics of %s container %s: %v", pod, c.Name, err)
			}
			for _, l := range strings.Split(string(b), "\n") {
				if strings.HasPrefix(l, "apiproxy_proxy_tunnels_total ") || strings.HasPrefix(l, "apiproxy_proxy_tunnels_total{") {
					f := strings.Fields(l)
					if x, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
						sum += x
					}
				}
			}
		}
	}
	return sum
}

func viaB64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
