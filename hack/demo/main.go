// Command demo keeps the seed's two-cluster scenario running for `make demo` until it receives
// SIGTERM or SIGINT (`make demo-down`), then stops every process it started, by PID.
//
// Without --real-node it runs test/scenario: cl01 and cl02 as real kube-apiservers with their own
// etcd, Liqo-shaped objects, and cl02's `agent proxy` as a host process on the remapped address
// 127.81.0.3:8118.
//
// With --real-node (root, Linux, node binaries built) cl02 is a real-node cluster
// (test/harness/realnode: kubelet, containerd, kube-proxy on the harness's bridge) with the pause and
// app images imported and the agent image pushed to the node's registry, and cl01 an
// API-server-only cluster; hack/demo.sh then installs the agents as pods, which the node pulls from
// that registry by digest. It holds the machine's real-node lock for its whole life (the lock is released
// when it exits, however it exits) and waits for it at most --lock-wait.
//
// With --cleanup it only removes what a killed real-node demo left behind, if it gets the lock
// without waiting (never while another real-node cluster runs).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/apiproxy/apiproxy/internal/imagebuild"
	"github.com/apiproxy/apiproxy/test/fixtures/liqo"
	"github.com/apiproxy/apiproxy/test/harness"
	"github.com/apiproxy/apiproxy/test/harness/realnode"
	"github.com/apiproxy/apiproxy/test/scenario"
)

func main() {
	dir := flag.String("dir", ".demo", "directory for the kubeconfig, logs and the ready marker")
	agent := flag.String("agent", "bin/agent", "the built agent binary (API-server-only demo)")
	assets := flag.String("assets", "", "directory with kube-apiserver, etcd and kubectl (hack/test-assets.sh --dir)")
	realNode := flag.Bool("real-node", false, "make cl02 a real-node cluster (root, Linux, node binaries)")
	nodeAssets := flag.String("node-assets", "", "directory of the node binaries (hack/test-assets.sh --node-dir)")
	agentImage := flag.String("agent-image", "", "the agent image archive (make image), pushed to cl02's registry")
	agentRef := flag.String("agent-ref", "", "the agent image's name in that archive (its tag is kept in the registry)")
	pauseBin := flag.String("pause", "", "the static test/images/pause binary (the node's sandbox image)")
	appBin := flag.String("app", "", "the static test/images/app binary (the demo's workload image)")
	lockWait := flag.Duration("lock-wait", 5*time.Minute, "how long to wait for another real-node cluster on this machine to end")
	cleanup := flag.Bool("cleanup", false, "only remove what a killed real-node demo left behind, if no other real-node cluster runs")
	flag.Parse()
	ctrllog.SetLogger(logr.Discard()) // envtest.InstallCRDs logs through controller-runtime; the demo has no use for it
	if *cleanup {
		os.Exit(runCleanup(*nodeAssets))
	}
	if *assets == "" {
		fmt.Fprintln(os.Stderr, "--assets is required: pass $(hack/test-assets.sh --dir)")
		os.Exit(2)
	}
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	abs, _ := filepath.Abs(*dir)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)

	var td harness.Teardown
	var err error
	if *realNode {
		err = upRealNode(&td, sig, abs, *assets, *nodeAssets, *agentImage, *agentRef, *pauseBin, *appBin, *lockWait)
	} else {
		err = upAPIServersOnly(&td, abs, *assets, *agent)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo: setting up:", err)
		td.Run()
		os.Exit(1)
	}
	// If this process is killed, its teardown does not run: demo-down then stops these by PID.
	if err := recordChildren(filepath.Join(abs, "children")); err != nil {
		fmt.Fprintln(os.Stderr, "demo: recording the PIDs it started:", err)
	}
	if err := os.WriteFile(filepath.Join(abs, "ready"), []byte("ready\n"), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	<-sig
	fmt.Println("demo: stopping everything it started")
	start := time.Now()
	td.Run()
	_ = os.Remove(filepath.Join(abs, "ready"))
	fmt.Printf("demo: stopped in %s\n", time.Since(start).Round(100*time.Millisecond))
}

// recordChildren writes "PID START-TIME" of this process's children (the API servers, etcd, the
// node's components), so `make demo-down` can stop them by PID after a kill of this process without
// hitting a reused PID (the start time, field 22 of /proc/PID/stat, must still match).
func recordChildren(path string) error {
	tasks, err := filepath.Glob("/proc/self/task/*/children")
	if err != nil {
		return err
	}
	var b strings.Builder
	for _, t := range tasks {
		kids, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		for _, pid := range strings.Fields(string(kids)) {
			stat, err := os.ReadFile(filepath.Join("/proc", pid, "stat"))
			if err != nil {
				continue
			}
			// Fields after the command name, which is in parentheses and may hold spaces.
			rest := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
			if len(rest) > 19 {
				fmt.Fprintf(&b, "%s %s\n", pid, rest[19])
			}
		}
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

func upAPIServersOnly(td *harness.Teardown, dir, assets, agent string) error {
	s, err := scenario.Up(td, assets, scenario.Options{AgentBinary: agent, Dir: dir})
	if err != nil {
		return err
	}
	fmt.Printf("cl01 API server: %s\ncl02 API server: %s\ncl02 proxy (as cl01 sees it): %s (pid %d, log %s)\n",
		s.CL01.Server, s.CL02.Server, s.ProxyAddr, s.ProxyPID(), s.ProxyLog)
	return nil
}

// machineLock is the open lock file while this process holds realnode.LockFile: referenced here for
// the process's life, since a collected *os.File closes its descriptor, and that releases the lock.
var machineLock *os.File

// lockMachine takes realnode.LockFile, waiting at most wait (and not past a signal), and tells the
// harness it is held (realnode.InheritedLockEnv) so StartWith does not wait for this process itself.
// The lock lasts as long as the process: the kernel releases it when the process exits.
func lockMachine(wait time.Duration, sig <-chan os.Signal) error {
	f, err := os.OpenFile(realnode.LockFile, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(wait)
	announced := false
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			machineLock = f
			return os.Setenv(realnode.InheritedLockEnv, "1")
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return fmt.Errorf("locking %s: %w", realnode.LockFile, err)
		}
		if time.Now().After(deadline) {
			f.Close()
			return fmt.Errorf("another real-node cluster still runs on this machine after %s (%s is locked%s): only one can run at a time; try again when it ends, wait longer with APIPROXY_DEMO_LOCK_WAIT=<seconds>, or run the API-server-only demo with APIPROXY_DEMO_REAL_NODE=0",
				wait, realnode.LockFile, lockHolders())
		}
		if !announced {
			fmt.Printf("another real-node cluster runs on this machine (%s is locked%s): waiting up to %s for it to end\n",
				realnode.LockFile, lockHolders(), wait)
			announced = true
		}
		select {
		case <-sig:
			f.Close()
			return errors.New("interrupted while waiting for the real-node lock")
		case <-time.After(time.Second):
		}
	}
}

// lockHolders names the processes holding the lock file, from /proc/locks (best effort).
func lockHolders() string {
	st, err := os.Stat(realnode.LockFile)
	if err != nil {
		return ""
	}
	ino := st.Sys().(*syscall.Stat_t).Ino
	b, err := os.ReadFile("/proc/locks")
	if err != nil {
		return ""
	}
	var who []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		// 1: FLOCK  ADVISORY  WRITE 1234 00:1a:5678 0 EOF  (blocked waiters carry "->")
		if len(f) < 6 || f[1] != "FLOCK" || f[2] == "->" {
			continue
		}
		if parts := strings.Split(f[5], ":"); len(parts) == 3 && parts[2] == fmt.Sprint(ino) {
			comm, _ := os.ReadFile(filepath.Join("/proc", f[4], "comm"))
			who = append(who, fmt.Sprintf("pid %s %s", f[4], strings.TrimSpace(string(comm))))
		}
	}
	if len(who) == 0 {
		return ""
	}
	return " by " + strings.Join(who, ", ")
}

func runCleanup(nodeAssets string) int {
	f, err := os.OpenFile(realnode.LockFile, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		fmt.Printf("not cleaning up the real node: another real-node cluster runs now (%s is locked%s); its own teardown, or the next real-node run, removes what the demo left\n",
			realnode.LockFile, lockHolders())
		return 0
	}
	if err := realnode.Teardown(nodeAssets); err != nil {
		fmt.Fprintln(os.Stderr, "real-node cleanup:", err)
		return 1
	}
	fmt.Println("real-node leftovers removed")
	return 0
}

// The Liqo peering as seen by both clusters. cl02's proxy Service ClusterIP is in cl02's Service
// range; cl01's Configuration maps that range to itself, so the remapped address cl01 computes is
// the ClusterIP, which this machine reaches through kube-proxy's rules and the harness's bridge.
const (
	consumerID = "cl01-a1b2c3"
	providerID = "cl02-d4e5f6"
)

func upRealNode(td *harness.Teardown, sig <-chan os.Signal, dir, assets, nodeAssets, agentImage, agentRef, pauseBin, appBin string, lockWait time.Duration) error {
	for name, v := range map[string]string{"--node-assets": nodeAssets, "--agent-image": agentImage, "--agent-ref": agentRef, "--pause": pauseBin, "--app": appBin} {
		if v == "" {
			return fmt.Errorf("%s is required with --real-node", name)
		}
	}
	if err := lockMachine(lockWait, sig); err != nil {
		return err
	}
	imgDir := filepath.Join(dir, "images")
	pauseTar, err := writeImage(imgDir, harness.PauseImageRef, imagebuild.Spec{
		Files:      []imagebuild.File{{Path: "/pause", Source: pauseBin, Mode: 0o755}},
		Entrypoint: []string{"/pause"},
		User:       "65535:65535",
	})
	if err != nil {
		return err
	}
	appTar, err := writeImage(imgDir, harness.AppImageRef, imagebuild.Spec{
		Files:      []imagebuild.File{{Path: "/app", Source: appBin, Mode: 0o755}, {Path: "/tmp", Dir: true, Mode: 0o1777}},
		Entrypoint: []string{"/app"},
	})
	if err != nil {
		return err
	}

	logf := func(format string, args ...any) { fmt.Printf(format+"\n", args...) }
	fmt.Println("starting cl02 on a real node (etcd, kube-apiserver, controller-manager, scheduler, kubelet, kube-proxy, containerd) and cl01 (API server only)")
	type started struct {
		c   *harness.Cluster
		err error
	}
	ch := make(chan started, 1)
	// Liqo's own CRDs of the current release, from the Go module cache (hack/test-assets.sh).
	crds, err := liqo.CRDs(liqo.V1_2_0)
	if err != nil {
		return err
	}
	go func() {
		c, err := harness.StartWith(td, assets, harness.Options{Name: "cl01", CRDs: crds})
		ch <- started{c, err}
	}()
	cl02, err := realnode.StartWith(td, logf, assets, nodeAssets, realnode.Options{Images: []string{pauseTar, appTar}})
	cl01 := <-ch
	if err = errors.Join(err, cl01.err); err != nil {
		return err
	}
	agentPinned, err := pushAgent(cl02, agentImage, agentRef)
	if err != nil {
		return err
	}
	fmt.Printf("agent image pushed to cl02's registry %s (TLS, its CA trusted by containerd through hosts.toml): %s\n", cl02.Registry, agentPinned)
	if err := peer(cl01.c.Config, cl02); err != nil {
		return err
	}
	if err := writeKubeconfig(filepath.Join(dir, "kubeconfig"), cl01.c, cl02); err != nil {
		return err
	}
	env := fmt.Sprintf("NODE_IP=%s\nHOST_ALIAS_IP=%s\nSERVICE_CIDR=%s\nAGENT_IMAGE=%s\nAPP_IMAGE=%s\nCL02_SERVER=%s\n",
		cl02.NodeIP, cl02.LocalIP(2), cl02.ServiceCIDR, agentPinned, cl02.AppImage, cl02.Server)
	if err := os.WriteFile(filepath.Join(dir, "env.sh"), []byte(env), 0o644); err != nil {
		return err
	}
	fmt.Printf("cl01 API server: %s (API server only)\ncl02 API server: %s (node %s, IP %s on bridge %s; pods %s, Services %s)\n",
		cl01.c.Server, cl02.Server, cl02.NodeName, cl02.NodeIP, realnode.Bridge, cl02.PodCIDR, cl02.ServiceCIDR)
	return nil
}

// pushAgent pushes the image of `make image`'s archive to the node's registry as
// apiproxy/agent:<the archive's tag> and returns the reference pinned by digest that install gets.
func pushAgent(c *realnode.Cluster, archive, ref string) (string, error) {
	tag, err := name.NewTag(ref)
	if err != nil {
		return "", fmt.Errorf("--agent-ref %q: %w", ref, err)
	}
	img, err := tarball.ImageFromPath(archive, nil) // `make image` writes one image
	if err != nil {
		return "", fmt.Errorf("reading the agent image %s from %s: %w", ref, archive, err)
	}
	return c.PushImage(harness.AgentRepository+":"+tag.TagStr(), img)
}

func writeImage(dir, ref string, spec imagebuild.Spec) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	img, err := imagebuild.Build(spec)
	if err != nil {
		return "", fmt.Errorf("image %s: %w", ref, err)
	}
	path := filepath.Join(dir, filepath.Base(strings.ReplaceAll(ref, ":", "_"))+".tar")
	if err := imagebuild.WriteArchive(path, ref, img); err != nil {
		return "", fmt.Errorf("image %s: %w", ref, err)
	}
	return path, nil
}

// peer writes what Liqo would have after peering: the cluster-ID ConfigMaps, Liqo's CRDs and
// namespace in cl02 (so install registers the proxy's IP), cl01's Configuration for cl02 mapping
// cl02's Service range to itself; and, in cl02, a namespace only cl02 has and read access for the
// default ServiceAccount (the demo pod lists pods with it).
func peer(cl01 *rest.Config, cl02 *realnode.Cluster) error {
	ctx := context.Background()
	crds, err := liqo.CRDs(liqo.V1_2_0)
	if err != nil {
		return err
	}
	if _, err := envtest.InstallCRDs(cl02.Config, envtest.CRDInstallOptions{CRDs: crds}); err != nil {
		return fmt.Errorf("Liqo CRDs in cl02: %w", err)
	}
	d01, err := dynamic.NewForConfig(cl01)
	if err != nil {
		return err
	}
	d02, err := dynamic.NewForConfig(cl02.Config)
	if err != nil {
		return err
	}
	for _, c := range []struct {
		where string
		dyn   dynamic.Interface
		id    string
	}{{"cl02", d02, providerID}, {"cl01", d01, consumerID}} {
		if _, err := liqo.CreateObject(ctx, c.dyn, liqo.ClusterIDConfigMap("liqo", c.id)); err != nil {
			return fmt.Errorf("cluster-ID ConfigMap in %s: %w", c.where, err)
		}
	}
	conf := liqo.NetworkCIDRsConfigured(liqo.Configuration("liqo", "cl02", providerID,
		liqo.CIDRs{Pod: []string{cl02.PodCIDR}, External: []string{cl02.ServiceCIDR}},
		&liqo.CIDRs{Pod: []string{cl02.PodCIDR}, External: []string{cl02.ServiceCIDR}}),
		"True", "CIDRsRemapped", 1, time.Now())
	if _, err := liqo.CreateObject(ctx, d01, conf); err != nil {
		return fmt.Errorf("Configuration in cl01: %w", err)
	}
	cs, err := kubernetes.NewForConfig(cl02.Config)
	if err != nil {
		return err
	}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: scenario.OnlyInProvider}}, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("namespace %s in cl02: %w", scenario.OnlyInProvider, err)
	}
	rb := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "default-view"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "view"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "default", Namespace: "default"}},
	}
	if _, err := cs.RbacV1().RoleBindings("default").Create(ctx, rb, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("RoleBinding default-view in cl02: %w", err)
	}
	return nil
}

// writeKubeconfig writes contexts cl01 and cl02, cl02 current (the cluster we want to reach).
func writeKubeconfig(path string, cl01 *harness.Cluster, cl02 *realnode.Cluster) error {
	kc := harness.MergeKubeconfigs(cl01)
	node, err := clientcmd.LoadFromFile(cl02.Kubeconfig)
	if err != nil {
		return err
	}
	cur := node.Contexts[node.CurrentContext]
	if cur == nil {
		return fmt.Errorf("%s has no current context", cl02.Kubeconfig)
	}
	kc.Clusters["cl02"] = node.Clusters[cur.Cluster]
	kc.AuthInfos["cl02"] = node.AuthInfos[cur.AuthInfo]
	kc.Contexts["cl02"] = &clientcmdapi.Context{Cluster: "cl02", AuthInfo: "cl02", Namespace: "default"}
	kc.CurrentContext = "cl02"
	return clientcmd.WriteToFile(*kc, path)
}
