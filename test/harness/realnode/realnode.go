// Package realnode gives a test a single-node Kubernetes cluster whose node is real: etcd,
// kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and kube-proxy (v1.36.3, built by
// hack/test-assets.sh), containerd + runc, and the bridge CNI plugin, running on this machine. Use it
// for what needs pods that really run; the API-server-only clusters of package harness stay for
// everything else.
//
// The node also runs an OCI registry (the CNCF distribution registry) on the node IP, with TLS of a
// CA of its own that containerd trusts through hosts.toml: a test pushes an image or image index
// with PushIndex and runs pods that pull it by digest, as a cluster pulls from a private registry.
//
// It needs root and Linux; without root the test is skipped with a message that says so. Only one
// such cluster can run per machine (bridge, ports and the kubepods cgroups are machine-wide):
// Start takes a lock file, so tests of every package using it run one after the other.
//
// Safety: the node's traffic stays on a bridge the harness creates. The node IP is the bridge's
// address; the pod, Service and local CIDRs are routed to the bridge, and DROP rules stop anything
// from those ranges leaving through the default interface (the machine's DNS resolver is never
// dropped). Teardown kills every process it started by PID and every process of the kubepods
// cgroups, stops the containerd shims of its socket, unmounts, and removes the cgroups, iptables
// chains, links and files it made. Its state lives in a fixed directory (StateDir), so a run after
// a killed run cleans the leftovers up first.
//
//	func TestMain(m *testing.M) { os.Exit(harness.RunTests(m)) } // removes the built binaries and images
//
//	c := realnode.Start(t, realnode.Options{})
//	c.DumpLogsOnFailure(t)
//	ref, err := c.PushIndex("apiproxy/agent:v1.2.3", index) // "10.244.0.1:5000/apiproxy/agent:v1.2.3@sha256:..."
//	pod, err := c.Clientset(t).CoreV1().Pods("default").Create(ctx, c.AppPod("web", "serve", ":8080"), metav1.CreateOptions{})
//	c.WaitPodReady(t, "default", "web", time.Minute)
//	out, stderr, err := c.RunKubectl(ctx, t, "exec", "web", "--", "/app", "get", "http://"+c.LocalIP(2)+"/")
package realnode

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/apiproxy/apiproxy/test/harness"
)

// Fixed names and ports: one real-node cluster per machine, found again by the next run.
const (
	// StateDir holds PKI, configs, logs, pid files and the data of etcd, containerd and the kubelet.
	StateDir = "/var/lib/apiproxy-realnode"
	// RunDir holds containerd's state and socket, runc's state and the CNI IPAM leases.
	RunDir = "/run/apiproxy-realnode"
	// LockFile serializes real-node clusters across test processes.
	LockFile = "/run/apiproxy-realnode.lock"
	// Bridge is the node's network: the CNI bridge, holding the node IP.
	Bridge = "apxnode0"
	// CNINetwork is the CNI network name (portmap chains carry it).
	CNINetwork = "apiproxy-realnode"

	APIServerPort  = 16443
	etcdClientPort = 23790
	etcdPeerPort   = 23800
)

// Options configure the cluster. The zero value is the default cluster.
type Options struct {
	// NodeName is the node's name (default "realnode").
	NodeName string
	// PodCIDR is the bridge network (default 10.244.0.0/24); its first address is the bridge's and the
	// node's IP.
	PodCIDR string
	// ServiceCIDR is the Service range (default 10.96.0.0/24).
	ServiceCIDR string
	// LocalCIDR is a range routed to the bridge and dropped on the way out like the others, for
	// addresses a test puts on the node itself, such as the node agent's --node-ip (default
	// 10.97.0.0/24).
	LocalCIDR string
	// LinkLocalCIDR holds the link-local addresses the node agent puts on the node by default
	// (install's --node-ip 169.254.20.11): the node's own, so not routed to the bridge, but dropped
	// on the way out of the default interface and removed at teardown like LocalCIDR's (default
	// 169.254.20.8/29, which leaves the cloud metadata address 169.254.169.254 alone).
	LinkLocalCIDR string
	// Images are image archives imported into containerd before the cluster starts. Start adds the
	// pause and app images itself; StartWith needs the pause image among them.
	Images []string
}

func (o *Options) defaults() {
	if o.NodeName == "" {
		o.NodeName = "realnode"
	}
	if o.PodCIDR == "" {
		o.PodCIDR = "10.244.0.0/24"
	}
	if o.ServiceCIDR == "" {
		o.ServiceCIDR = "10.96.0.0/24"
	}
	if o.LocalCIDR == "" {
		o.LocalCIDR = "10.97.0.0/24"
	}
	if o.LinkLocalCIDR == "" {
		o.LinkLocalCIDR = "169.254.20.8/29"
	}
}

// Cluster is the running cluster.
type Cluster struct {
	// NodeName is the node's name; NodeIP its InternalIP (the bridge's address).
	NodeName, NodeIP string
	// PodCIDR, ServiceCIDR and LocalCIDR are the ranges of Options, defaulted.
	PodCIDR, ServiceCIDR, LocalCIDR string
	// KubernetesServiceIP is the ClusterIP of the default/kubernetes Service (first of ServiceCIDR).
	KubernetesServiceIP string
	// DefaultInterface is the interface of the machine's default route, where the DROP rules sit.
	DefaultInterface string
	// Server is the API server URL; Config and Kubeconfig are admin (system:masters) credentials.
	Server     string
	Config     *rest.Config
	Kubeconfig string
	// Kubectl is the harness-built kubectl.
	Kubectl string
	// PauseImage and AppImage are the images imported at start (harness.PauseImageRef, AppImageRef).
	PauseImage, AppImage string
	// Registry is the node's OCI registry, HOST:PORT (the node IP and RegistryPort): image references
	// start with it. RegistryCA is the path of the CA certificate its serving certificate chains to.
	Registry, RegistryCA string

	assets, nodeAssets string
	procs              *procs
}

// Components whose logs LogPath knows.
var Components = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "containerd", "registry"}

// NodeAssetsDir returns the directory of the node binaries (hack/test-assets.sh --node-dir, or
// APIPROXY_NODE_ASSETS). When they are missing the test is skipped with instructions, except under
// CI=true, where it fails.
func NodeAssetsDir(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("APIPROXY_NODE_ASSETS")
	if dir == "" {
		out, err := exec.Command("bash", filepath.Join(harness.RepoRoot(t), "hack", "test-assets.sh"), "--node-dir").Output()
		if err != nil {
			t.Fatalf("hack/test-assets.sh --node-dir: %v", err)
		}
		dir = strings.TrimSpace(string(out))
	}
	var missing []string
	for _, b := range []string{"kubelet", "kube-controller-manager", "kube-scheduler", "kube-proxy", "containerd", "containerd-shim-runc-v2", "ctr", "registry"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			missing = append(missing, b)
		}
	}
	for _, p := range []string{"/usr/sbin/runc", "/usr/lib/cni/bridge", "/usr/lib/cni/host-local", "/usr/lib/cni/portmap", "/usr/lib/cni/loopback"} {
		if _, err := os.Stat(p); err != nil {
			missing = append(missing, p+" (apt-get install runc containernetworking-plugins)")
		}
	}
	for _, b := range []string{"iptables", "ip6tables", "conntrack"} {
		if _, err := exec.LookPath(b); err != nil {
			missing = append(missing, b+" (apt-get install iptables conntrack)")
		}
	}
	if len(missing) > 0 {
		msg := fmt.Sprintf("real-node assets missing (%s in %s): build them with `hack/test-assets.sh` and install the Debian packages as .ci/run does", strings.Join(missing, ", "), dir)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return dir
}

// Start starts the cluster and registers its teardown with t.Cleanup. It blocks while another
// real-node cluster runs on this machine. It returns when the node is Ready, kube-proxy serves the
// kubernetes Service and the default ServiceAccount exists.
func Start(t testing.TB, opts Options) *Cluster {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the real-node cluster needs root (kubelet, containerd, bridge, iptables): run the tests as root, as CI does")
	}
	assets := harness.AssetsDir(t)
	nodeAssets := NodeAssetsDir(t)
	_, pauseTar := harness.PauseImage(t)
	_, appTar := harness.AppImage(t)
	opts.Images = append([]string{pauseTar, appTar}, opts.Images...)
	c, err := start(t, t.Logf, func(err error) { t.Errorf("real-node teardown: %v", err) }, assets, nodeAssets, opts)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// StartWith starts the cluster outside a test (e.g. `make demo`, with a harness.Teardown whose Run
// tears it down). It must run as root; assets and nodeAssets are the directories of
// hack/test-assets.sh --dir and --node-dir, and opts.Images must hold an archive of the pause image
// named harness.PauseImageRef (the sandbox image containerd is pinned to). Cluster.AppImage is
// harness.AppImageRef, usable when its archive is among opts.Images too.
func StartWith(cl harness.Cleaner, logf func(format string, args ...any), assets, nodeAssets string, opts Options) (*Cluster, error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("the real-node cluster needs root (kubelet, containerd, bridge, iptables)")
	}
	return start(cl, logf, func(err error) { logf("real-node teardown: %v", err) }, assets, nodeAssets, opts)
}

// machineLock records that this process holds LockFile through Lock, so Start does not wait for itself.
var machineLock struct {
	sync.Mutex
	held int
}

// InheritedLockEnv, set to 1, tells a child process that its parent holds LockFile for it (a test
// that starts a cluster in a child process it then kills).
const InheritedLockEnv = "APIPROXY_REALNODE_LOCK_HELD"

// Lock takes the machine-wide real-node lock (LockFile) until the test ends, for tests that look at
// the machine before and after a cluster and must not see another package's cluster. Start, called
// while it is held, does not take it again: do not run such tests in parallel.
func Lock(t testing.TB) {
	t.Helper()
	unlock, err := lock(t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	machineLock.Lock()
	machineLock.held++
	machineLock.Unlock()
	t.Cleanup(func() {
		machineLock.Lock()
		machineLock.held--
		machineLock.Unlock()
		unlock()
	})
}

func start(cl harness.Cleaner, logf func(string, ...any), teardownErr func(error), assets, nodeAssets string, opts Options) (*Cluster, error) {
	opts.defaults()
	machineLock.Lock()
	held := machineLock.held > 0 || os.Getenv(InheritedLockEnv) == "1"
	machineLock.Unlock()
	if !held {
		unlock, err := lock(logf)
		if err != nil {
			return nil, err
		}
		cl.Cleanup(unlock)
	}

	c := &Cluster{
		NodeName: opts.NodeName, PodCIDR: opts.PodCIDR, ServiceCIDR: opts.ServiceCIDR, LocalCIDR: opts.LocalCIDR,
		Kubectl: filepath.Join(assets, "kubectl"), PauseImage: harness.PauseImageRef, AppImage: harness.AppImageRef,
		assets: assets, nodeAssets: nodeAssets,
	}
	// A killed earlier run leaves processes, mounts, rules and links: clear them before anything.
	if err := Teardown(nodeAssets); err != nil {
		return nil, fmt.Errorf("cleaning up an earlier real-node run: %w", err)
	}
	// Teardown kills every process of the kubepods cgroups: never run next to a kubelet of this
	// machine's own.
	if dirs := kubepodsDirs(); len(dirs) > 0 {
		return nil, fmt.Errorf("kubepods cgroups exist on this machine (%s) that no real-node run recorded: another kubelet runs here, or a teardown failed; the cluster does not start next to them (check, then remove the empty cgroups with rmdir)", strings.Join(dirs, ", "))
	}
	cl.Cleanup(func() {
		start := time.Now()
		if err := Teardown(nodeAssets); err != nil {
			teardownErr(err)
		}
		logf("real-node cluster torn down in %s", time.Since(start).Round(10*time.Millisecond))
	})

	start := time.Now()
	if err := c.start(opts); err != nil {
		c.dumpLogs(logf)
		return nil, fmt.Errorf("starting the real-node cluster: %w", err)
	}
	logf("real-node cluster %s up in %s (node IP %s, API server %s)", c.NodeName, time.Since(start).Round(10*time.Millisecond), c.NodeIP, c.Server)
	return c, nil
}

func (c *Cluster) start(opts Options) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	nw, err := planNetwork(opts)
	if err != nil {
		return err
	}
	c.NodeIP, c.KubernetesServiceIP, c.DefaultInterface = nw.nodeIP.String(), nw.kubernetesIP.String(), nw.defaultIf
	c.Server = "https://" + net.JoinHostPort(c.NodeIP, fmt.Sprint(APIServerPort))
	c.Registry = net.JoinHostPort(c.NodeIP, fmt.Sprint(RegistryPort))
	c.RegistryCA = filepath.Join(StateDir, "pki", "registry-ca.crt")

	for _, d := range []string{StateDir, RunDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	if err := setUpNetwork(nw); err != nil {
		return fmt.Errorf("node network: %w", err)
	}
	pki, err := writePKI(filepath.Join(StateDir, "pki"), c)
	if err != nil {
		return fmt.Errorf("PKI: %w", err)
	}
	c.Kubeconfig = pki.kubeconfig("admin")
	c.Config, err = clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	if err != nil {
		return err
	}
	if err := writeConfigs(c, nw); err != nil {
		return err
	}
	if err := writeRegistryConfig(c); err != nil {
		return err
	}
	c.procs = &procs{}

	if err := c.procs.start("registry", c.registryCmd()); err != nil {
		return err
	}
	if err := c.procs.start("containerd", c.containerdCmd()); err != nil {
		return err
	}
	if err := waitFor(ctx, "containerd", func() error { _, err := c.ctr("version"); return err }); err != nil {
		return err
	}
	if err := c.waitRegistry(ctx); err != nil {
		return err
	}
	for _, a := range opts.Images {
		if err := c.importImage(a); err != nil {
			return err
		}
	}
	if err := c.procs.start("etcd", c.etcdCmd()); err != nil {
		return err
	}
	if err := c.procs.start("kube-apiserver", c.apiserverCmd()); err != nil {
		return err
	}
	cs, err := kubernetes.NewForConfig(c.Config)
	if err != nil {
		return err
	}
	if err := waitFor(ctx, "kube-apiserver /readyz", func() error {
		_, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		return err
	}); err != nil {
		return err
	}
	for _, name := range []string{"kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy"} {
		if err := c.procs.start(name, c.componentCmd(name)); err != nil {
			return err
		}
	}
	return c.waitReady(ctx, cs)
}

// LogPath is the log file of a component (one of Components).
func (c *Cluster) LogPath(component string) string {
	return filepath.Join(StateDir, "logs", component+".log")
}

// Log returns a component's log so far.
func (c *Cluster) Log(component string) string {
	b, _ := os.ReadFile(c.LogPath(component))
	return string(b)
}

// dumpLogs puts the end of every component's log into the test output (after a failed start).
func (c *Cluster) dumpLogs(logf func(string, ...any)) {
	for _, comp := range Components {
		log := c.Log(comp)
		if len(log) > 3000 {
			log = "..." + log[len(log)-3000:]
		}
		if log != "" {
			logf("--- %s log (end) ---\n%s", comp, log)
		}
	}
}

// DumpLogsOnFailure registers a cleanup that, when the test failed, prints the pods, the events,
// the last log lines of every container that is not ready or restarted, and the end of every
// component's log (registered after Start, it runs before the teardown).
func (c *Cluster) DumpLogsOnFailure(t testing.TB) {
	t.Cleanup(func() {
		if t.Failed() {
			c.dumpPods(t)
			c.dumpLogs(t.Logf)
		}
	})
}

func (c *Cluster) dumpPods(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, args := range [][]string{{"get", "pods", "-A", "-o", "wide"}, {"get", "events", "-A", "--sort-by=.lastTimestamp"}} {
		out, stderr, _ := c.RunKubectl(ctx, t, args...)
		t.Logf("--- kubectl %s ---\n%s%s", strings.Join(args, " "), out, stderr)
	}
	cs, err := kubernetes.NewForConfig(c.Config)
	if err != nil {
		return
	}
	pods, err := cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return
	}
	tail := int64(30)
	for _, p := range pods.Items {
		for _, st := range append(p.Status.InitContainerStatuses, p.Status.ContainerStatuses...) {
			if st.Ready && st.RestartCount == 0 {
				continue
			}
			for _, prev := range []bool{false, true} {
				if prev && st.RestartCount == 0 {
					continue
				}
				b, err := cs.CoreV1().Pods(p.Namespace).GetLogs(p.Name, &corev1.PodLogOptions{Container: st.Name, TailLines: &tail, Previous: prev}).DoRaw(ctx)
				if err == nil {
					t.Logf("--- logs of %s/%s container %s (previous=%v) ---\n%s", p.Namespace, p.Name, st.Name, prev, b)
				}
			}
		}
	}
}

// Clientset returns an admin clientset.
func (c *Cluster) Clientset(t testing.TB) kubernetes.Interface {
	t.Helper()
	cs, err := kubernetes.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// RunKubectl runs the harness-built kubectl with the admin kubeconfig.
func (c *Cluster) RunKubectl(ctx context.Context, t testing.TB, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	return harness.RunKubectl(ctx, t, c.Kubeconfig, args...)
}

// ImportImage imports an image archive (OCI or docker format) into the node's containerd, in the
// k8s.io namespace the kubelet uses. Pods then run it with imagePullPolicy IfNotPresent or Never.
func (c *Cluster) ImportImage(t testing.TB, archive string) {
	t.Helper()
	if err := c.importImage(archive); err != nil {
		t.Fatal(err)
	}
}

func (c *Cluster) importImage(archive string) error {
	if out, err := c.ctr("-n", "k8s.io", "images", "import", archive); err != nil {
		return fmt.Errorf("ctr images import %s: %v: %s", archive, err, out)
	}
	return nil
}

// Ctr runs the node's ctr against its containerd (e.g. "-n", "k8s.io", "images", "ls").
func (c *Cluster) Ctr(t testing.TB, args ...string) string {
	t.Helper()
	out, err := c.ctr(args...)
	if err != nil {
		t.Fatalf("ctr %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return out
}

func (c *Cluster) ctr(args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(c.nodeAssets, "ctr"), append([]string{"--address", containerdSocket}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func waitFor(ctx context.Context, what string, f func() error) error {
	var err error
	for {
		if err = f(); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w (last error: %v)", what, ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
