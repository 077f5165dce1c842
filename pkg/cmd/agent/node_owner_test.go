package agent

import (
	"context"
	"errors"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/apiproxy/apiproxy/pkg/install"
	"github.com/apiproxy/apiproxy/test/harness"
)

// listenInNetns opens a TCP listener on loopback inside the namespace.
func listenInNetns(ns string) (net.Listener, error) {
	// The namespace's loopback starts down.
	if out, err := inNetns(ns, "ip", "link", "set", "lo", "up"); err != nil {
		return nil, errors.New(out)
	}
	var l net.Listener
	err := onThreadInNetns(ns, func() (err error) {
		l, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	})
	return l, err
}

// apiServerInNetns makes the cluster's API server reachable from inside ns at the returned loopback
// address: a listener in ns whose connections the test relays to the API server on the host's
// loopback (TLS passes through untouched). Everything stops at the end of the test.
func apiServerInNetns(t *testing.T, ns, server string) string {
	t.Helper()
	u, err := url.Parse(server)
	if err != nil {
		t.Fatal(err)
	}
	l, err := listenInNetns(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	go func() {
		for {
			in, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer in.Close()
				out, err := net.DialTimeout("tcp", u.Host, 5*time.Second)
				if err != nil {
					return
				}
				defer out.Close()
				go func() { _, _ = io.Copy(out, in); _ = out.(*net.TCPConn).CloseWrite() }()
				_, _ = io.Copy(in, out)
			}()
		}
	}()
	return l.Addr().String()
}

// saKubeconfig writes a kubeconfig for server authenticated as service account sa with a token from
// the TokenRequest API, as the projected volume would hold.
func saKubeconfig(t *testing.T, cs kubernetes.Interface, cl *harness.Cluster, namespace, sa, server string) string {
	t.Helper()
	exp := int64(3600)
	tr, err := cs.CoreV1().ServiceAccounts(namespace).CreateToken(context.Background(), sa,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["c"] = &clientcmdapi.Cluster{Server: "https://" + server, CertificateAuthorityData: cl.Config.CAData}
	cfg.AuthInfos["sa"] = &clientcmdapi.AuthInfo{Token: tr.Status.Token}
	cfg.Contexts["c"] = &clientcmdapi.Context{Cluster: "c", AuthInfo: "sa"}
	cfg.CurrentContext = "c"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestNodeCleanupWhenOwnerDeleted runs the real agent in network namespaces against a real API
// server, with the node role installed by `install` (its ServiceAccount, Role and DaemonSet): on
// SIGTERM it keeps the address and the rules while its DaemonSet exists (rolling update, restart)
// or when the API server cannot be asked, and removes them when the DaemonSet is being deleted or
// gone (uninstall).
func TestNodeCleanupWhenOwnerDeleted(t *testing.T) {
	nodeAgentBinary(t)
	cl := harness.Start(t, harness.Options{Name: "node-owner"})
	cs := cl.Clientset(t)
	ctx := context.Background()
	c, err := install.NewClient(cl.Config)
	if err != nil {
		t.Fatal(err)
	}
	o := install.DefaultOptions()
	o.Roles = []install.Role{install.RoleNode}
	if _, err := install.Install(ctx, c, o, install.DryRunNone, io.Discard); err != nil {
		t.Fatalf("install --roles node: %v", err)
	}
	ns := install.DefaultNamespace
	owner := ns + "/apiproxy-node"

	// run starts the agent in a fresh namespace as the DaemonSet's sidecar runs it, waits for the
	// address and the rules, stops it with SIGTERM and reports whether they are still there.
	run := func(t *testing.T, ip string, kubeconfigFor func(netnsName string) string) (kept bool, logs string) {
		t.Helper()
		nsName := testNetns(t)
		rules := wantRules(ip+"/32", "443")
		d := startNodeDaemon(t, nsName, "--ip-address", ip, "--interface", "apiproxy0", "--setup-iptables",
			"--cleanup-when-owner-deleted", owner, "--kubeconfig", kubeconfigFor(nsName))
		has := func() (addr bool, rulesPresent int) {
			out, _ := inNetns(nsName, "ip", "-4", "addr", "show", "dev", "apiproxy0")
			p, _ := countRules(saved(t, nsName, "iptables-save"), rules)
			return strings.Contains(out, ip+"/32"), p
		}
		waitUntil(t, 5*time.Second, "the address and the five rules", func() bool { a, p := has(); return a && p == 5 })
		d.stop(t)
		addr, p := has()
		_, linkErr := inNetns(nsName, "ip", "link", "show", "apiproxy0")
		switch {
		case addr && p == 5 && linkErr == nil:
			return true, d.logs.String()
		case !addr && p == 0 && linkErr != nil:
			return false, d.logs.String()
		}
		t.Fatalf("half cleaned: address=%v rules=%d link=%v\n%s", addr, p, linkErr == nil, d.logs.String())
		return false, ""
	}
	viaAPIServer := func(nsName string) string {
		return saKubeconfig(t, cs, cl, ns, "apiproxy-node", apiServerInNetns(t, nsName, cl.Server))
	}

	t.Run("owner exists: rolling update or restart keeps everything", func(t *testing.T) {
		kept, logs := run(t, "10.96.0.21", viaAPIServer)
		if !kept || !strings.Contains(logs, "the owner still exists") {
			t.Errorf("kept=%v, want the address and rules kept for the next pod:\n%s", kept, logs)
		}
	})

	t.Run("API server unreachable: keeps everything", func(t *testing.T) {
		kept, logs := run(t, "10.96.0.22", func(nsName string) string {
			// Nothing listens on this port inside the namespace: connection refused.
			l, err := listenInNetns(nsName)
			if err != nil {
				t.Fatal(err)
			}
			addr := l.Addr().String()
			_ = l.Close()
			return saKubeconfig(t, cs, cl, ns, "apiproxy-node", addr)
		})
		if !kept || !strings.Contains(logs, "cannot tell whether the owner was deleted") {
			t.Errorf("kept=%v, want the address kept (safe default):\n%s", kept, logs)
		}
	})

	t.Run("no permission: keeps everything", func(t *testing.T) {
		if _, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "stranger"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		kept, logs := run(t, "10.96.0.26", func(nsName string) string {
			return saKubeconfig(t, cs, cl, ns, "stranger", apiServerInNetns(t, nsName, cl.Server))
		})
		if !kept || !strings.Contains(logs, "cannot tell whether the owner was deleted") || !strings.Contains(logs, "forbidden") {
			t.Errorf("kept=%v, want the address kept when the API server refuses the question:\n%s", kept, logs)
		}
	})

	// Being deleted: a finalizer holds the DaemonSet, as foreground deletion or a slow GC would.
	ds := cs.AppsV1().DaemonSets(ns)
	if _, err := ds.Patch(ctx, "apiproxy-node", types.MergePatchType, []byte(`{"metadata":{"finalizers":["test.apiproxy.io/hold"]}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := ds.Delete(ctx, "apiproxy-node", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Run("owner being deleted: cleans up", func(t *testing.T) {
		kept, logs := run(t, "10.96.0.23", viaAPIServer)
		if kept || !strings.Contains(logs, "The owner is deleted (uninstall): cleaning up") {
			t.Errorf("kept=%v, want everything removed:\n%s", kept, logs)
		}
	})
	if _, err := ds.Patch(ctx, "apiproxy-node", types.MergePatchType, []byte(`{"metadata":{"finalizers":null}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "the DaemonSet to be gone", func() bool {
		_, err := ds.Get(ctx, "apiproxy-node", metav1.GetOptions{})
		return err != nil
	})
	t.Run("owner gone: cleans up", func(t *testing.T) {
		kept, logs := run(t, "10.96.0.24", viaAPIServer)
		if kept || !strings.Contains(logs, "Cleaned up") {
			t.Errorf("kept=%v, want everything removed:\n%s", kept, logs)
		}
	})
}

// Without a token or kubeconfig the agent stops before touching the node, saying what it needs.
func TestNodeOwnerCheckNeedsAPIAccess(t *testing.T) {
	agent := nodeAgentBinary(t)
	nsName := testNetns(t)
	cmd := exec.Command("ip", "netns", "exec", nsName, agent, "node", "--ip-address", "10.96.0.25", "--interface", "apiproxy0",
		"--cleanup-when-owner-deleted", "apiproxy-system/apiproxy-node")
	// Not a pod: no KUBERNETES_SERVICE_HOST, no token.
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "KUBERNETES_") {
			env = append(env, e)
		}
	}
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || !strings.Contains(string(out), "--cleanup-when-owner-deleted needs API access") {
		t.Errorf("want a non-zero exit saying it needs API access, got %v:\n%s", err, out)
	}
	if _, err := inNetns(nsName, "ip", "link", "show", "apiproxy0"); err == nil {
		t.Error("the agent changed the node before failing")
	}
}
