// Package scenario sets up the seed's two-cluster situation on one machine, for the e2e tests and
// `make demo`: cl02 runs `agent proxy` in front of its API server; Liqo's fabric exposes the proxy's
// remapped IP 127.70.0.3 (in 127.70.0.0/16) to cl01, whose Configuration remaps cl02's external CIDR
// to 127.81.0.0/16; so cl01 reaches the proxy at 127.81.0.3:8118. The addresses are loopback ones,
// so no network namespace is needed and no traffic leaves the machine.
package scenario

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/apiproxy/apiproxy/test/fixtures/liqo"
	"github.com/apiproxy/apiproxy/test/harness"
)

// The seed's numbers, moved into 127.0.0.0/8.
const (
	ProviderRemappedIP   = "127.70.0.3"
	ProviderExternalCIDR = "127.70.0.0/16"
	ConsumerRemappedCIDR = "127.81.0.0/16"
	FinalIP              = "127.81.0.3"
	ProxyPort            = 8118
	// ProviderLocalIP stands for the proxy Service's ClusterIP in cl02: data only, never dialed.
	ProviderLocalIP = "10.0.0.10"
	// OnlyInProvider is a namespace that exists in cl02 alone: seeing it proves which API server answered.
	OnlyInProvider = "only-in-cl02"

	ConsumerClusterID = "cl01-a1b2c3"
	ProviderClusterID = "cl02-d4e5f6"
)

// Options tune the scenario.
type Options struct {
	// AgentBinary is the built `agent` binary that runs as cl02's proxy.
	AgentBinary string
	// Aggregation starts cl02 with the aggregation layer configured.
	Aggregation bool
	// Dir receives the merged kubeconfig and the proxy's log.
	Dir string
	// ExtraArgs are extra kube-apiserver flags per cluster name ("cl01", "cl02"), e.g. a node
	// stand-in's (test/harness/nodestandin).
	ExtraArgs map[string]map[string][]string
	// LiqoVersion picks the release whose CRDs (IP, Configuration) both clusters serve
	// (liqo.Versions; default the current one, liqo.V1_2_0).
	LiqoVersion string
}

// Scenario is the running setup.
type Scenario struct {
	CL01, CL02 *harness.Cluster
	// Kubeconfig has contexts cl01 and cl02; cl02 is current (the cluster we want to reach).
	Kubeconfig string
	ProxyAddr  string
	ProxyLog   string

	proxy *Process
}

// Up starts both clusters, creates the Liqo-shaped objects, and starts cl02's proxy. Everything is
// stopped through c (t.Cleanup in tests, a harness.Teardown in the demo).
func Up(c harness.Cleaner, assets string, opts Options) (*Scenario, error) {
	ctx := context.Background()
	if opts.LiqoVersion == "" {
		opts.LiqoVersion = liqo.V1_2_0
	}
	crds, err := liqo.CRDs(opts.LiqoVersion)
	if err != nil {
		return nil, err
	}
	type started struct {
		c   *harness.Cluster
		err error
	}
	ch := make(chan started, 2)
	go func() {
		cl, err := harness.StartWith(c, assets, harness.Options{Name: "cl01", CRDs: crds, ExtraArgs: opts.ExtraArgs["cl01"]})
		ch <- started{cl, err}
	}()
	cl02, err := harness.StartWith(c, assets, harness.Options{Name: "cl02", CRDs: crds, Aggregation: opts.Aggregation, ExtraArgs: opts.ExtraArgs["cl02"]})
	r := <-ch
	if err = errors.Join(err, r.err); err != nil {
		return nil, err
	}
	s := &Scenario{CL01: r.c, CL02: cl02, ProxyAddr: net.JoinHostPort(FinalIP, strconv.Itoa(ProxyPort))}

	if err := Peer(ctx, cl02.Config, s.CL01.Config, DefaultPeering); err != nil {
		return nil, err
	}
	cs, err := kubernetes.NewForConfig(cl02.Config)
	if err != nil {
		return nil, err
	}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: OnlyInProvider}}, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("namespace %s in cl02: %w", OnlyInProvider, err)
	}

	// cl02 is the current context: the provider we want to reach, as in `get-ip --remote cl01`.
	kc := harness.MergeKubeconfigs(cl02, s.CL01)
	s.Kubeconfig = filepath.Join(opts.Dir, "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, s.Kubeconfig); err != nil {
		return nil, err
	}
	if err := s.StartProxy(c, opts.AgentBinary, opts.Dir); err != nil {
		return nil, err
	}
	return s, nil
}

// StartProxy runs cl02's `agent proxy` on the remapped address with cl02's API server as upstream.
func (s *Scenario) StartProxy(c harness.Cleaner, agent, dir string) error {
	p, err := RunAgentProxy(c, agent, s.ProxyAddr, s.CL02.Config.Host, filepath.Join(dir, "agent-proxy.log"))
	if err != nil {
		return fmt.Errorf("%w (is %s already in use, e.g. by `make demo`? run `make demo-down`)", err, s.ProxyAddr)
	}
	s.proxy, s.ProxyLog = p, p.Log
	return nil
}

// Process is a running agent.
type Process struct {
	Cmd *exec.Cmd
	// Log holds the process's stdout and stderr.
	Log    string
	exited chan struct{}
}

// Stop sends SIGTERM to the process's PID and SIGKILL after 5 s; it returns once it has exited.
func (p *Process) Stop() {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(5 * time.Second):
		_ = p.Cmd.Process.Kill()
		<-p.exited
	}
}

// RunAgentProxy runs `agent proxy --listen listen --upstream <host:port of server> extra...`,
// logging to logPath, waits until it accepts connections, and registers its Stop with c.
func RunAgentProxy(c harness.Cleaner, agent, listen, server, logPath string, extra ...string) (*Process, error) {
	u, err := url.Parse(server)
	if err != nil {
		return nil, fmt.Errorf("upstream server %q: %w", server, err)
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	args := append([]string{"proxy", "--listen", listen, "--upstream", u.Host, "--metrics-addr", "127.0.0.1:0"}, extra...)
	cmd := exec.Command(agent, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("starting %s proxy: %w", agent, err)
	}
	p := &Process{Cmd: cmd, Log: logPath, exited: make(chan struct{})}
	go func() { _ = cmd.Wait(); logf.Close(); close(p.exited) }()
	c.Cleanup(p.Stop)

	deadline := time.Now().Add(15 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", listen, time.Second)
		if err == nil {
			conn.Close()
			return p, nil
		}
		select {
		case <-p.exited:
			b, _ := os.ReadFile(logPath)
			return nil, fmt.Errorf("agent proxy on %s exited at start:\n%s", listen, b)
		default:
		}
		if time.Now().After(deadline) {
			p.Stop()
			return nil, fmt.Errorf("agent proxy not accepting on %s after 15s: %v", listen, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// WaitForLog rereads the log at path until it contains want, for up to timeout, and returns its
// last content and whether want appeared. Tests need it for tunnel lines: the proxy writes one when
// a tunnel closes, which can be after the client has returned, and the access log is flushed in
// batches (up to 100 ms later; see pkg/logbatch).
func WaitForLog(path, want string, timeout time.Duration) ([]byte, bool) {
	var b []byte
	err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		b, _ = os.ReadFile(path)
		return bytes.Contains(b, []byte(want)), nil
	})
	return b, err == nil
}

// WaitForLogGrowth waits up to timeout for the file at path to grow beyond size bytes, and reports
// whether it did (for checks that some tunnel was logged, without knowing its line).
func WaitForLogGrowth(path string, size int64, timeout time.Duration) bool {
	err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		st, err := os.Stat(path)
		return err == nil && st.Size() > size, nil
	})
	return err == nil
}

// StopProxy stops cl02's proxy (SIGTERM to its PID, SIGKILL after 5 s).
func (s *Scenario) StopProxy() { s.proxy.Stop() }

// ProxyPID is the proxy process's PID.
func (s *Scenario) ProxyPID() int { return s.proxy.Cmd.Process.Pid }
