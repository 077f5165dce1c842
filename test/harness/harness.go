// Package harness starts real Kubernetes control planes (kube-apiserver + its own etcd, built by
// hack/test-assets.sh) for integration and e2e tests, and stops them by PID when the test ends.
//
// It wraps controller-runtime's envtest, which runs the real binaries, adding what this project's
// tests need: several independent clusters at once, a merged kubeconfig with one context per cluster
// (as a user would have), the harness-built kubectl, and an optional aggregation layer
// (--requestheader-* / --proxy-client-*) for aggregated API servers.
//
// This package is only imported by tests; it is never linked into the binaries.
package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// Options configure one cluster.
type Options struct {
	// Name is the cluster's name, used as the context name in merged kubeconfigs ("cl01").
	Name string
	// Aggregation configures the aggregation layer: a front-proxy CA and client certificate and the
	// --requestheader-* and --proxy-client-* flags, as seed 004 describes.
	//
	// Such a cluster resolves Services the way a default kube-apiserver does (ClusterIP, and the
	// ExternalName of ExternalName Services) instead of through endpoints, because aggregated API
	// servers in tests listen on loopback, which EndpointSlices reject: register them behind an
	// ExternalName Service "localhost". Do not register ClusterIP-backed webhooks or APIServices in
	// such a cluster: their ClusterIPs lead nowhere on this machine.
	Aggregation bool
	// CRDs are installed before Start returns.
	CRDs []*apiextensionsv1.CustomResourceDefinition
	// ExtraArgs are extra kube-apiserver flags ("name" -> values).
	ExtraArgs map[string][]string
}

// Cluster is one running control plane.
type Cluster struct {
	Name string
	// Config is an admin (system:masters) client configuration.
	Config *rest.Config
	// Kubeconfig is the path of an admin kubeconfig for this cluster alone; its context is Name.
	Kubeconfig string
	// Server is the API server URL (https://127.0.0.1:PORT).
	Server string
	// FrontProxy holds the aggregation layer's material when Options.Aggregation was set.
	FrontProxy *FrontProxy

	env *envtest.Environment
	dir string
}

// FrontProxy is the aggregation layer's front-proxy material: the CA an aggregated API server must
// trust for requestheader authentication, and the client identity the kube-apiserver presents.
type FrontProxy struct {
	CAFile         string
	ClientCertFile string
	ClientKeyFile  string
	// AllowedNames are the CNs accepted as front proxies (--requestheader-allowed-names).
	AllowedNames []string
	// UsernameHeader, GroupHeader and ExtraHeaderPrefix are the --requestheader-* header names.
	UsernameHeader, GroupHeader, ExtraHeaderPrefix string
}

// AssetsDir returns the directory holding kube-apiserver, etcd and kubectl. It honours
// KUBEBUILDER_ASSETS, then asks hack/test-assets.sh where it builds them. When they are missing the
// test is skipped with instructions, except under CI=true, where a missing asset fails the test.
func AssetsDir(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("KUBEBUILDER_ASSETS")
	if dir == "" {
		out, err := exec.Command("bash", filepath.Join(RepoRoot(t), "hack", "test-assets.sh"), "--dir").Output()
		if err != nil {
			t.Fatalf("hack/test-assets.sh --dir: %v", err)
		}
		dir = strings.TrimSpace(string(out))
	}
	var missing []string
	for _, b := range []string{"kube-apiserver", "etcd", "kubectl"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			missing = append(missing, b)
		}
	}
	if len(missing) > 0 {
		msg := fmt.Sprintf("test assets %v missing in %s: build them with `hack/test-assets.sh` (or `make test-assets`), or set KUBEBUILDER_ASSETS", missing, dir)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return dir
}

// Kubectl returns the path of the harness-built kubectl (never /usr/bin/kubectl).
func Kubectl(t testing.TB) string { return filepath.Join(AssetsDir(t), "kubectl") }

// RepoRoot returns the repository's top directory (the one holding go.mod).
func RepoRoot(t testing.TB) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot locate the harness source file")
	}
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// Start starts one cluster and registers its shutdown with t.Cleanup.
func Start(t testing.TB, opts Options) *Cluster {
	t.Helper()
	c, err := start(t, AssetsDir(t), opts)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// StartClusters starts one cluster per Options, concurrently, each with its own etcd.
func StartClusters(t testing.TB, opts ...Options) []*Cluster {
	t.Helper()
	assets := AssetsDir(t)
	clusters := make([]*Cluster, len(opts))
	errs := make([]error, len(opts))
	var wg sync.WaitGroup
	for i := range opts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			clusters[i], errs[i] = start(t, assets, opts[i])
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	return clusters
}

// Cleaner registers teardown work: *testing.T does, and so does a Teardown for clusters that outlive
// a test (the demo).
type Cleaner interface {
	Cleanup(func())
}

// Teardown collects cleanups and runs them, last registered first, when Run is called.
type Teardown struct {
	mu  sync.Mutex
	fns []func()
}

// Cleanup registers f.
func (td *Teardown) Cleanup(f func()) { td.mu.Lock(); td.fns = append(td.fns, f); td.mu.Unlock() }

// Run runs the registered cleanups once, in reverse order.
func (td *Teardown) Run() {
	td.mu.Lock()
	fns := td.fns
	td.fns = nil
	td.mu.Unlock()
	for i := len(fns) - 1; i >= 0; i-- {
		fns[i]()
	}
}

// StartWith starts a cluster without failing a test: for goroutines, and outside any test (`make
// demo`, with a Teardown whose Run stops the processes by PID).
func StartWith(c Cleaner, assets string, opts Options) (*Cluster, error) {
	return start(c, assets, opts)
}

// start does the work of Start without calling t.Fatal, so it can run on any goroutine. The
// cluster's shutdown is registered with the Cleaner as soon as its processes exist.
func start(t Cleaner, assets string, opts Options) (*Cluster, error) {
	if opts.Name == "" {
		opts.Name = "cluster"
	}
	dir, err := os.MkdirTemp("", "apiproxy-"+opts.Name+"-")
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	env := &envtest.Environment{
		BinaryAssetsDirectory:    assets,
		CRDs:                     opts.CRDs,
		ControlPlaneStartTimeout: 60 * time.Second,
		ControlPlaneStopTimeout:  30 * time.Second,
	}
	args := env.ControlPlane.GetAPIServer().Configure()
	// Route webhooks and aggregated APIs to Service endpoints instead of ClusterIPs: the ClusterIPs of
	// this API server (10.0.0.0/24) lead nowhere on this machine, and no test may send traffic there.
	args.Set("enable-aggregator-routing", "true")
	c := &Cluster{Name: opts.Name, env: env, dir: dir}
	if opts.Aggregation {
		fp, err := newFrontProxy(filepath.Join(dir, "front-proxy"))
		if err != nil {
			return nil, fmt.Errorf("front-proxy certificates for %s: %w", opts.Name, err)
		}
		c.FrontProxy = fp
		args.Set("requestheader-client-ca-file", fp.CAFile)
		args.Set("requestheader-allowed-names", strings.Join(fp.AllowedNames, ","))
		args.Set("requestheader-username-headers", fp.UsernameHeader)
		args.Set("requestheader-group-headers", fp.GroupHeader)
		args.Set("requestheader-extra-headers-prefix", fp.ExtraHeaderPrefix)
		args.Set("proxy-client-cert-file", fp.ClientCertFile)
		args.Set("proxy-client-key-file", fp.ClientKeyFile)
		args.Set("enable-aggregator-routing", "false")
	}
	for k, v := range opts.ExtraArgs {
		args.Set(k, v...)
	}

	// Register the stop before starting: envtest stops whatever it did start (by PID), even after a
	// half-failed start.
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			if tb, ok := t.(testing.TB); ok {
				tb.Errorf("stopping cluster %s: %v", opts.Name, err)
			} else {
				fmt.Fprintf(os.Stderr, "stopping cluster %s: %v\n", opts.Name, err)
			}
		}
	})
	if _, err := env.Start(); err != nil {
		return nil, fmt.Errorf("starting cluster %s: %w", opts.Name, err)
	}

	user, err := env.AddUser(envtest.User{Name: "admin-" + opts.Name, Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return nil, fmt.Errorf("admin user for %s: %w", opts.Name, err)
	}
	c.Config = rest.CopyConfig(user.Config())
	c.Server = c.Config.Host
	c.Kubeconfig = filepath.Join(dir, "kubeconfig")
	if err := clientcmd.WriteToFile(*MergeKubeconfigs(c), c.Kubeconfig); err != nil {
		return nil, fmt.Errorf("writing kubeconfig: %w", err)
	}
	return c, nil
}

// MergeKubeconfigs builds one kubeconfig with a context, cluster and user per cluster, named after
// the cluster; the first cluster's context is current.
func MergeKubeconfigs(clusters ...*Cluster) *clientcmdapi.Config {
	kc := clientcmdapi.NewConfig()
	for i, c := range clusters {
		kc.Clusters[c.Name] = &clientcmdapi.Cluster{
			Server:                   c.Config.Host,
			CertificateAuthorityData: c.Config.CAData,
		}
		kc.AuthInfos[c.Name] = &clientcmdapi.AuthInfo{
			ClientCertificateData: c.Config.CertData,
			ClientKeyData:         c.Config.KeyData,
			Token:                 c.Config.BearerToken,
		}
		kc.Contexts[c.Name] = &clientcmdapi.Context{Cluster: c.Name, AuthInfo: c.Name, Namespace: "default"}
		if i == 0 {
			kc.CurrentContext = c.Name
		}
	}
	return kc
}

// WriteMergedKubeconfig writes MergeKubeconfigs to a file in the test's temporary directory.
func WriteMergedKubeconfig(t testing.TB, clusters ...*Cluster) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*MergeKubeconfigs(clusters...), path); err != nil {
		t.Fatalf("writing merged kubeconfig: %v", err)
	}
	return path
}

// Clientset returns an admin clientset for the cluster.
func (c *Cluster) Clientset(t testing.TB) kubernetes.Interface {
	t.Helper()
	cs, err := kubernetes.NewForConfig(c.Config)
	if err != nil {
		t.Fatalf("clientset for %s: %v", c.Name, err)
	}
	return cs
}

// Dynamic returns an admin dynamic client for the cluster.
func (c *Cluster) Dynamic(t testing.TB) dynamic.Interface {
	t.Helper()
	dc, err := dynamic.NewForConfig(c.Config)
	if err != nil {
		t.Fatalf("dynamic client for %s: %v", c.Name, err)
	}
	return dc
}

// InstallCRDs installs CRDs into a running cluster and waits until they are served.
func (c *Cluster) InstallCRDs(t testing.TB, crds ...*apiextensionsv1.CustomResourceDefinition) {
	t.Helper()
	if _, err := envtest.InstallCRDs(c.Config, envtest.CRDInstallOptions{CRDs: crds}); err != nil {
		t.Fatalf("installing CRDs in %s: %v", c.Name, err)
	}
}

// RunKubectl runs the harness-built kubectl with the given kubeconfig and arguments.
func RunKubectl(ctx context.Context, t testing.TB, kubeconfig string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := exec.CommandContext(ctx, Kubectl(t), append([]string{"--kubeconfig", kubeconfig}, args...)...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	cmd.Env = append(os.Environ(), "KUBECONFIG=")
	err = cmd.Run()
	return o.String(), e.String(), err
}
