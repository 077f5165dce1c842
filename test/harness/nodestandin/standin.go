// Package nodestandin is a node for the test API servers, which have none: it serves the kubelet's
// streaming endpoints (/exec/{namespace}/{pod}/{container} and /portForward/{namespace}/{pod}) over
// HTTPS with mutual TLS, implemented by k8s.io/cri-streaming's server (the SPDY and WebSocket
// protocols kubelets speak), and registers a Node object pointing the API server at it. Pods bound
// to that node then answer `kubectl exec` (a command the test defines) and `kubectl port-forward`
// (each pod port forwarded to a local address the test chooses) through the real API server.
//
// Use: New before the cluster starts (its CA and client certificate become kube-apiserver flags,
// see APIServerArgs), Register once the cluster runs, then AddPod.
//
// This package is only imported by tests.
package nodestandin

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/cri-streaming/pkg/streaming"
	"k8s.io/cri-streaming/pkg/streaming/portforward"
	"k8s.io/cri-streaming/pkg/streaming/remotecommand"

	"github.com/apiproxy/apiproxy/pkg/certs"
	"github.com/apiproxy/apiproxy/test/harness"
)

// ExecFunc runs a command "in a container". Return ExitCode(n) for a non-zero exit status.
type ExecFunc func(ctx context.Context, cmd []string, stdin io.Reader, stdout, stderr io.Writer) error

// Pod describes a pod served by the stand-in.
type Pod struct {
	Namespace, Name string
	Labels          map[string]string
	// Container is the only container's name (default "main").
	Container string
	// Ports maps a pod port to the local address ("127.0.0.1:PORT") a port-forward to it reaches.
	Ports map[int32]string
	// Exec runs `kubectl exec` commands; nil refuses them.
	Exec ExecFunc
}

// StandIn is one running node stand-in.
type StandIn struct {
	NodeName string
	// Addr is where it serves the kubelet API (127.0.0.1:PORT).
	Addr string

	caFile, clientCertFile, clientKeyFile string
	streams                               streaming.Server
	srv                                   *http.Server

	mu   sync.Mutex
	pods map[string]*Pod // "namespace/name"
}

// New starts a stand-in for a node called nodeName on 127.0.0.1, writing its PKI under dir. It is
// stopped through c.
func New(c harness.Cleaner, nodeName, dir string) (*StandIn, error) {
	ca, err := certs.NewCA("nodestandin-ca-"+nodeName, 24*time.Hour)
	if err != nil {
		return nil, err
	}
	serving, err := ca.Issue(certs.Request{CommonName: nodeName, DNSNames: []string{nodeName, "localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Server: true, Validity: 24 * time.Hour})
	if err != nil {
		return nil, err
	}
	// The identity the API server presents to kubelets (--kubelet-client-certificate).
	client, err := ca.Issue(certs.Request{CommonName: "kube-apiserver-kubelet-client", Organizations: []string{"system:masters"}, Client: true, Validity: 24 * time.Hour})
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	s := &StandIn{
		NodeName:       nodeName,
		caFile:         filepath.Join(dir, "kubelet-ca.crt"),
		clientCertFile: filepath.Join(dir, "kubelet-client.crt"),
		clientKeyFile:  filepath.Join(dir, "kubelet-client.key"),
		pods:           map[string]*Pod{},
	}
	for path, b := range map[string][]byte{s.caFile: ca.CertPEM, s.clientCertFile: client.CertPEM, s.clientKeyFile: client.KeyPEM} {
		if err := os.WriteFile(path, b, 0o600); err != nil {
			return nil, err
		}
	}
	servingPair, err := tls.X509KeyPair(serving.CertPEM, serving.KeyPEM)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Certificate())

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s.Addr = l.Addr().String()

	cfg := streaming.DefaultConfig
	cfg.Addr = s.Addr
	// The streaming server is never started on its own: the kubelet handlers below hand it each
	// request in process, as the kubelet hands it to the CRI runtime's streaming server.
	cfg.BaseURL = &url.URL{Scheme: "https", Host: s.Addr, Path: "/"}
	if s.streams, err = streaming.NewServer(cfg, &runtime{s}); err != nil {
		l.Close()
		return nil, err
	}

	mux := http.NewServeMux()
	mux.HandleFunc("/exec/{namespace}/{pod}/{container}", s.exec)
	mux.HandleFunc("/exec/{namespace}/{pod}/{uid}/{container}", s.exec)
	mux.HandleFunc("/portForward/{namespace}/{pod}", s.portForward)
	mux.HandleFunc("/portForward/{namespace}/{pod}/{uid}", s.portForward)
	s.srv = &http.Server{
		Handler: mux,
		TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{servingPair},
			// Only the API server (its kubelet client certificate) may call this kubelet.
			ClientAuth: tls.RequireAndVerifyClientCert,
			ClientCAs:  pool,
			MinVersion: tls.VersionTLS12,
		},
		ReadHeaderTimeout: 10 * time.Second,
	}
	served := make(chan struct{})
	go func() { defer close(served); _ = s.srv.ServeTLS(l, "", "") }()
	c.Cleanup(func() {
		_ = s.srv.Close()
		<-served
	})
	return s, nil
}

// APIServerArgs are the kube-apiserver flags that make it reach this stand-in as a kubelet: by the
// node's InternalIP, verifying its serving certificate, presenting a client certificate it trusts.
func (s *StandIn) APIServerArgs() map[string][]string {
	return map[string][]string{
		"kubelet-preferred-address-types": {"InternalIP"},
		"kubelet-certificate-authority":   {s.caFile},
		"kubelet-client-certificate":      {s.clientCertFile},
		"kubelet-client-key":              {s.clientKeyFile},
	}
}

// MergeArgs merges kube-apiserver flag maps (for harness.Options.ExtraArgs).
func MergeArgs(maps ...map[string][]string) map[string][]string {
	out := map[string][]string{}
	for _, m := range maps {
		for k, v := range m {
			out[k] = append(out[k], v...)
		}
	}
	return out
}

// Register creates the Node object: Ready, InternalIP 127.0.0.1, kubelet port = the stand-in's.
func (s *StandIn) Register(ctx context.Context, cfg *rest.Config) error {
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	_, portStr, _ := net.SplitHostPort(s.Addr)
	port, _ := strconv.Atoi(portStr)
	node, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: s.NodeName}}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("node %s: %w", s.NodeName, err)
	}
	now := metav1.Now()
	node.Status = corev1.NodeStatus{
		Addresses:       []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "127.0.0.1"}, {Type: corev1.NodeHostName, Address: s.NodeName}},
		DaemonEndpoints: corev1.NodeDaemonEndpoints{KubeletEndpoint: corev1.DaemonEndpoint{Port: int32(port)}},
		Conditions:      []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", LastHeartbeatTime: now, LastTransitionTime: now}},
	}
	if _, err := cs.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("node %s status: %w", s.NodeName, err)
	}
	return nil
}

// AddPod creates p bound to this node, Running and Ready, and serves its exec and port-forwards.
func (s *StandIn) AddPod(ctx context.Context, cfg *rest.Config, p Pod) (*corev1.Pod, error) {
	if p.Container == "" {
		p.Container = "main"
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.pods[p.Namespace+"/"+p.Name] = &p
	s.mu.Unlock()
	no := false
	var ports []corev1.ContainerPort
	for port := range p.Ports {
		ports = append(ports, corev1.ContainerPort{ContainerPort: port, Protocol: corev1.ProtocolTCP})
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name, Labels: p.Labels},
		Spec: corev1.PodSpec{
			NodeName:                     s.NodeName,
			AutomountServiceAccountToken: &no,
			Containers:                   []corev1.Container{{Name: p.Container, Image: "nodestandin.invalid/none", Ports: ports}},
		},
	}
	created, err := cs.CoreV1().Pods(p.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	now := metav1.Now()
	created.Status = corev1.PodStatus{
		Phase:  corev1.PodRunning,
		HostIP: "127.0.0.1",
		PodIP:  "127.0.0.1",
		Conditions: []corev1.PodCondition{
			{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
		},
		ContainerStatuses: []corev1.ContainerStatus{{
			Name: p.Container, Ready: true, Image: "nodestandin.invalid/none", ImageID: "none",
			ContainerID: "standin://" + p.Namespace + "/" + p.Name + "/" + p.Container,
			State:       corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
		}},
		StartTime: &now,
	}
	updated, err := cs.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("pod %s/%s status: %w", p.Namespace, p.Name, err)
	}
	return updated, nil
}

func (s *StandIn) pod(namespace, name string) *Pod {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pods[namespace+"/"+name]
}

// exec is the kubelet's /exec handler: the options come from the query, the streaming server runs
// the protocol and calls runtime.Exec.
func (s *StandIn) exec(w http.ResponseWriter, r *http.Request) {
	ns, name, container := r.PathValue("namespace"), r.PathValue("pod"), r.PathValue("container")
	p := s.pod(ns, name)
	if p == nil || p.Container != container {
		http.Error(w, fmt.Sprintf("container %q of pod %s/%s is not on node %s", container, ns, name, s.NodeName), http.StatusNotFound)
		return
	}
	opts, err := remotecommand.NewOptions(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	resp, err := s.streams.GetExec(&runtimeapi.ExecRequest{
		ContainerId: ns + "/" + name, Cmd: r.URL.Query()["command"],
		Tty: opts.TTY, Stdin: opts.Stdin, Stdout: opts.Stdout, Stderr: opts.Stderr,
	})
	s.serveStream(w, r, resp.GetUrl(), err)
}

// portForward is the kubelet's /portForward handler.
func (s *StandIn) portForward(w http.ResponseWriter, r *http.Request) {
	ns, name := r.PathValue("namespace"), r.PathValue("pod")
	if s.pod(ns, name) == nil {
		http.Error(w, fmt.Sprintf("pod %s/%s is not on node %s", ns, name, s.NodeName), http.StatusNotFound)
		return
	}
	opts, err := portforward.NewV4Options(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	resp, err := s.streams.GetPortForward(&runtimeapi.PortForwardRequest{PodSandboxId: ns + "/" + name, Port: opts.Ports})
	s.serveStream(w, r, resp.GetUrl(), err)
}

// serveStream hands the request to the streaming server at the one-time URL it issued.
func (s *StandIn) serveStream(w http.ResponseWriter, r *http.Request, streamURL string, err error) {
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	u, err := url.Parse(streamURL)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	r2 := r.Clone(r.Context())
	r2.URL.Path, r2.URL.RawPath = u.Path, ""
	s.streams.ServeHTTP(w, r2)
}

// runtime is the container runtime behind the streaming server: pods are entries of s.pods.
type runtime struct{ s *StandIn }

func (rt *runtime) Exec(ctx context.Context, containerID string, cmd []string, in io.Reader, out, errOut io.WriteCloser, tty bool, _ <-chan remotecommand.TerminalSize) error {
	ns, name, _ := cutPodKey(containerID)
	p := rt.s.pod(ns, name)
	if p == nil || p.Exec == nil {
		return fmt.Errorf("pod %s runs no commands on this node stand-in", containerID)
	}
	if in == nil {
		in = eofReader{}
	}
	var stdout, stderr io.Writer = io.Discard, io.Discard
	if out != nil {
		stdout = out
	}
	if errOut != nil {
		stderr = errOut
	} else if tty {
		stderr = stdout
	}
	return p.Exec(ctx, cmd, in, stdout, stderr)
}

func (rt *runtime) Attach(context.Context, string, io.Reader, io.WriteCloser, io.WriteCloser, bool, <-chan remotecommand.TerminalSize) error {
	return errors.New("attach is not supported by the node stand-in")
}

// PortForward copies between the stream and the local address the test mapped the port to. It
// returns when the local side has finished sending (as runtimes do), half-closing towards it when
// the client has finished.
func (rt *runtime) PortForward(ctx context.Context, podSandboxID string, port int32, stream io.ReadWriteCloser) error {
	defer stream.Close()
	ns, name, _ := cutPodKey(podSandboxID)
	p := rt.s.pod(ns, name)
	if p == nil {
		return fmt.Errorf("pod %s is not on this node stand-in", podSandboxID)
	}
	addr, ok := p.Ports[port]
	if !ok {
		return fmt.Errorf("pod %s does not listen on port %d", podSandboxID, port)
	}
	conn, err := (&net.Dialer{Timeout: 10 * time.Second}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("pod %s port %d (%s): %w", podSandboxID, port, addr, err)
	}
	defer conn.Close()
	go func() {
		_, _ = io.Copy(conn, stream)
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
	}()
	done := make(chan error, 1)
	go func() { _, err := io.Copy(stream, conn); done <- err }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return nil
	}
}

func cutPodKey(key string) (ns, name string, ok bool) {
	for i := 0; i < len(key); i++ {
		if key[i] == '/' {
			return key[:i], key[i+1:], true
		}
	}
	return "", key, false
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

// exitError is a command's exit status, in the form the streaming server reports to the client.
type exitError struct{ code int }

func (e exitError) Error() string   { return "command exited with status " + strconv.Itoa(e.code) }
func (e exitError) String() string  { return e.Error() }
func (e exitError) Exited() bool    { return true }
func (e exitError) ExitStatus() int { return e.code }

// ExitCode is the error an ExecFunc returns to exit with a non-zero status (kubectl exec exits
// with it too).
func ExitCode(code int) error { return exitError{code} }
