package connect

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/apiproxy/apiproxy/pkg/tunnel"
	"github.com/apiproxy/apiproxy/test/harness"
	"github.com/apiproxy/apiproxy/test/harness/nodestandin"
	"github.com/apiproxy/apiproxy/test/testnet"
)

func testVia() *ViaDialer {
	return &ViaDialer{Relay: &Relay{Context: "cl01", Namespace: "apiproxy-system", Selector: "a=b", Port: 8118}, RemoteProxy: "10.81.0.3:8118"}
}

// Each failure is put on its hop, with the advice that hop needs.
func TestViaDescribe(t *testing.T) {
	v := testVia()
	relay := v.relayLabel()
	for _, tc := range []struct {
		name   string
		err    error
		remote bool // the relay hop had succeeded
		hop    Hop
		want   []string
	}{
		{"no ready pod", fmt.Errorf("dial proxy x: %w", &NoReadyPodError{Context: "cl01", Namespace: "apiproxy-system", Selector: "a=b"}), false, HopPortForward,
			[]string{`namespace "apiproxy-system"`, `context "cl01"`, "a=b"}},
		{"forbidden", &PortForwardError{Context: "cl01", Namespace: "apiproxy-system", Pod: "p", Forbidden: true, Err: errors.New("403")}, false, HopPortForward,
			[]string{"forbidden", `"pods/portforward" in namespace "apiproxy-system"`}},
		{"relay 502", &tunnel.ConnectError{Proxy: relay, Target: v.RemoteProxy, StatusCode: 502, Status: "502 Bad Gateway"}, false, HopRelay,
			[]string{"could not reach the remote proxy 10.81.0.3:8118", "502 Bad Gateway", "inside \"cl01\""}},
		{"relay 403", &tunnel.ConnectError{Proxy: relay, Target: v.RemoteProxy, StatusCode: 403, Status: "403 Forbidden"}, false, HopRelay,
			[]string{"refused to relay to 10.81.0.3:8118", "403 Forbidden", "--allow-target"}},
		{"not relayed (EOF)", fmt.Errorf("CONNECT api:443 via proxy 10.81.0.3:8118: %w", io.ErrUnexpectedEOF), true, HopRelay,
			[]string{"did not relay to 10.81.0.3:8118", "--allow-target", "install --relay"}},
		{"not relayed (400)", &tunnel.ConnectError{Proxy: v.RemoteProxy, StatusCode: 400, Status: "400 Bad Request"}, true, HopRelay,
			[]string{"did not relay"}},
		{"remote proxy 502", &tunnel.ConnectError{Proxy: v.RemoteProxy, StatusCode: 502, Status: "502 Bad Gateway"}, true, HopRemoteProxy,
			[]string{"remote proxy 10.81.0.3:8118", "could not open the tunnel to its API server"}},
		{"relay timeout", context.DeadlineExceeded, false, HopRelay, []string{"in time", "--dial-timeout"}},
		{"remote proxy rejects the token", &tunnel.ConnectError{Proxy: v.RemoteProxy, StatusCode: 407, Status: "407 Proxy Authentication Required"}, true, HopRemoteProxy,
			[]string{"remote proxy 10.81.0.3:8118", "rejected the token", "--proxy-token"}},
		{"remote proxy denies the tunnel", &tunnel.ConnectError{Proxy: v.RemoteProxy, StatusCode: 403, Status: "403 Forbidden"}, true, HopRemoteProxy,
			[]string{"remote proxy 10.81.0.3:8118", "tunnels.apiproxy.io"}},
		{"no token for the remote proxy", &NoTokenError{Context: "cl02", Proxy: v.RemoteProxy}, true, HopRemoteProxy,
			[]string{"--proxy-token", "client certificate"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			if tc.remote {
				err = v.describeRemote(tc.err)
			} else {
				err = v.describe(tc.err)
			}
			var he *HopError
			if !errors.As(err, &he) || he.Hop != tc.hop {
				t.Fatalf("hop of %v: got %v, want %q", tc.err, err, tc.hop)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%q lacks %q", err, w)
				}
			}
			if !errors.Is(err, tc.err) {
				t.Errorf("the cause is not kept: %v", err)
			}
		})
	}
}

// Against a real API server and a node stand-in: streams share one port-forward session, a broken
// session is replaced, and a kubelet-side error reaches the reader.
func TestRelaySessions(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a kube-apiserver")
	}
	node, err := nodestandin.New(t, "n1", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cl := harness.Start(t, harness.Options{Name: "cl01", ExtraArgs: node.APIServerArgs()})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := node.Register(ctx, cl.Config); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Clientset(t).CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "apiproxy-system"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	echo := nodestandin.EchoServer(t, "")
	labels := map[string]string{"app": "proxy"}
	if _, err := node.AddPod(ctx, cl.Config, nodestandin.Pod{Namespace: "apiproxy-system", Name: "proxy-0", Labels: labels, Ports: map[int32]string{8118: echo}}); err != nil {
		t.Fatal(err)
	}
	var sessions atomic.Int32
	r := &Relay{Config: cl.Config, Context: "cl01", Namespace: "apiproxy-system", Selector: "app=proxy", Port: 8118,
		Log: func(format string, _ ...any) {
			if strings.HasPrefix(format, "relay: port-forward session") {
				sessions.Add(1)
			}
		}}
	defer r.Close()

	roundTrip := func(msg string) error {
		c, err := r.DialContext(ctx, "tcp", "ignored:1")
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		if _, err := io.WriteString(c, msg); err != nil {
			return err
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(c, buf); err != nil {
			return err
		}
		if string(buf) != msg {
			return fmt.Errorf("echo %q, want %q", buf, msg)
		}
		return nil
	}

	var wg sync.WaitGroup
	errs := make(chan error, 5)
	for i := range 5 {
		wg.Add(1)
		go func() { defer wg.Done(); errs <- roundTrip(fmt.Sprintf("stream %d", i)) }()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := sessions.Load(); n != 1 {
		t.Fatalf("5 streams used %d port-forward sessions, want 1", n)
	}

	// Break the session under the relay without telling it: streams on it no longer open. The
	// next dial gives up on it and succeeds on a new session.
	r.mu.Lock()
	_ = r.session.conn.Close()
	r.mu.Unlock()
	if err := roundTrip("after the break"); err != nil {
		t.Fatal(err)
	}
	if n := sessions.Load(); n != 2 {
		t.Fatalf("sessions after a broken one: %d, want 2", n)
	}

	t.Run("half-close reaches the pod, which can still answer", func(t *testing.T) {
		c, err := r.DialContext(ctx, "tcp", "x:1")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		if _, err := io.WriteString(c, "last words"); err != nil {
			t.Fatal(err)
		}
		if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		// The echo server answers until it reads EOF, then closes: ReadAll ends only if the EOF got through.
		b, err := io.ReadAll(c)
		if err != nil || string(b) != "last words" {
			t.Fatalf("after CloseWrite: %q %v", b, err)
		}
	})

	t.Run("a port the pod does not serve reports the kubelet's error", func(t *testing.T) {
		bad := &Relay{Config: cl.Config, Context: "cl01", Namespace: "apiproxy-system", Selector: "app=proxy", Port: 9999}
		defer bad.Close()
		c, err := bad.DialContext(ctx, "tcp", "x:1")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		_, _ = c.Write([]byte("x"))
		_, err = io.ReadAll(c)
		if err == nil || !strings.Contains(err.Error(), "does not listen on port 9999") || !strings.Contains(err.Error(), "apiproxy-system/proxy-0") {
			t.Fatalf("want the kubelet's error naming the pod and port, got %v", err)
		}
	})

	t.Run("no ready pod", func(t *testing.T) {
		none := &Relay{Config: cl.Config, Context: "cl01", Namespace: "apiproxy-system", Selector: "app=other", Port: 8118}
		_, err := none.DialContext(ctx, "tcp", "x:1")
		var nr *NoReadyPodError
		if !errors.As(err, &nr) || nr.Namespace != "apiproxy-system" || nr.Selector != "app=other" {
			t.Fatalf("got %v", err)
		}
	})

	t.Run("a pod that is not ready is skipped", func(t *testing.T) {
		if _, err := node.AddPod(ctx, cl.Config, nodestandin.Pod{Namespace: "apiproxy-system", Name: "aaa-unready", Labels: map[string]string{"app": "half"}}); err != nil {
			t.Fatal(err)
		}
		cs := cl.Clientset(t)
		p, err := cs.CoreV1().Pods("apiproxy-system").Get(ctx, "aaa-unready", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for i := range p.Status.Conditions {
			if p.Status.Conditions[i].Type == corev1.PodReady {
				p.Status.Conditions[i].Status = corev1.ConditionFalse
			}
		}
		if _, err := cs.CoreV1().Pods("apiproxy-system").UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		half := &Relay{Config: cl.Config, Context: "cl01", Namespace: "apiproxy-system", Selector: "app=half", Port: 8118}
		_, err = half.DialContext(ctx, "tcp", "x:1")
		var nr *NoReadyPodError
		if !errors.As(err, &nr) || nr.Found != 1 || !strings.Contains(err.Error(), "1 pod(s) match selector app=half, none is running and ready") {
			t.Fatalf("want no ready pod (1 found, not ready), got %v", err)
		}
	})
}

// relayEnv is one API server with a node stand-in and a "proxy" pod whose port 8118 reaches
// backend.
func relayEnv(t *testing.T, backend string) (*harness.Cluster, *nodestandin.StandIn) {
	t.Helper()
	node, err := nodestandin.New(t, "n1", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cl := harness.Start(t, harness.Options{Name: "cl01", ExtraArgs: node.APIServerArgs()})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := node.Register(ctx, cl.Config); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Clientset(t).CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "apiproxy-system"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := node.AddPod(ctx, cl.Config, nodestandin.Pod{Namespace: "apiproxy-system", Name: "proxy-0", Labels: map[string]string{"app": "proxy"}, Ports: map[int32]string{8118: backend}}); err != nil {
		t.Fatal(err)
	}
	return cl, node
}

// byeServer answers one line with "bye\n" and closes: the server ends the connection, as an API
// server does after an upgraded request (exec, port-forward) or an idle timeout.
func byeServer(t *testing.T) string {
	return testnet.Serve(t, "tcp", "127.0.0.1:0", func(c net.Conn) {
		defer c.Close()
		_, _ = bufio.NewReader(c).ReadString('\n')
		_, _ = io.WriteString(c, "bye\n")
	})
}

// dialBye opens a stream, has the server close it, then writes after the EOF as a TLS client does
// (close_notify) when it closes its side.
func dialBye(ctx context.Context, r *Relay) error {
	c, err := r.DialContext(ctx, "tcp", "x:1")
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(c, "hi\n"); err != nil {
		return err
	}
	b, err := io.ReadAll(c)
	if err != nil || string(b) != "bye\n" {
		return fmt.Errorf("read %q, %v; want bye and EOF", b, err)
	}
	// After the EOF: the kubelet no longer reads this stream.
	_, _ = io.WriteString(c, "late 1")
	_, _ = io.WriteString(c, "late 2")
	return nil
}

// The stream-open stall: sequential connections that the pod side closes first, each followed by
// a client write (close_notify), all through one port-forward session. Each must open on that
// session: none may need the fallback to a new session (before the fix, one unread frame stalled
// one of the kubelet's five frame workers and every later stream whose ID fell on it).
func TestRelaySequentialDialsOneSession(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a kube-apiserver")
	}
	cl, _ := relayEnv(t, byeServer(t))
	var sessions atomic.Int32
	r := &Relay{Config: cl.Config, Context: "cl01", Namespace: "apiproxy-system", Selector: "app=proxy", Port: 8118,
		Log: func(format string, _ ...any) {
			if strings.HasPrefix(format, "relay: port-forward session") {
				sessions.Add(1)
			}
		}}
	defer r.Close()
	for i := range 200 {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		err := dialBye(ctx, r)
		cancel()
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		if n := r.ReplacedSessions(); n != 0 {
			t.Fatalf("dial %d: a stream did not open on the reused session (%d sessions replaced)", i, n)
		}
	}
	if n := sessions.Load(); n != 1 {
		t.Fatalf("200 dials used %d sessions, want 1", n)
	}
}

// A session on which streams no longer open is retired for new dials only: a tunnel already open
// on it keeps working (before, the whole session was closed, resetting every live tunnel).
func TestRelaySlowStreamKeepsLiveTunnels(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a kube-apiserver")
	}
	bye := byeServer(t)
	echo := nodestandin.EchoServer(t, "")
	// Port 8118 closes after one line, 8119 echoes.
	cl, node := relayEnv(t, bye)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := node.AddPod(ctx, cl.Config, nodestandin.Pod{Namespace: "apiproxy-system", Name: "proxy-1", Labels: map[string]string{"app": "both"}, Ports: map[int32]string{8118: bye, 8119: echo}}); err != nil {
		t.Fatal(err)
	}
	r := &Relay{Config: cl.Config, Context: "cl01", Namespace: "apiproxy-system", Selector: "app=both", Port: 8119}
	defer r.Close()

	// The live tunnel: streams 1 (error) and 3 (data).
	live, err := r.DialContext(ctx, "tcp", "x:1")
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	_ = live.SetDeadline(time.Now().Add(90 * time.Second))
	echoOnce := func(msg string) {
		t.Helper()
		if _, err := io.WriteString(live, msg); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(live, buf); err != nil || string(buf) != msg {
			t.Fatalf("live tunnel: %q %v", buf, err)
		}
	}
	echoOnce("before")

	// Stall the session on purpose: streams 5 and 7 to the closing port, then data on stream 7
	// after the kubelet stopped reading it (bypassing streamConn.Write's guard).
	r.Port = 8118
	c, err := r.DialContext(ctx, "tcp", "x:1")
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	_, _ = io.WriteString(c, "hi\n")
	if b, err := io.ReadAll(c); string(b) != "bye\n" {
		t.Fatalf("read %q %v", b, err)
	}
	sc := c.(*streamConn)
	for range 3 {
		_, _ = sc.data.Write([]byte("unread"))
	}
	// Stream 7's frame worker is now stuck: a later stream on it does not open, and the relay
	// moves new dials to a fresh session.
	r.Port = 8119
	for i := 0; r.ReplacedSessions() == 0; i++ {
		if i == 10 {
			t.Fatal("the stalled session was never replaced: the test did not stall it")
		}
		dctx, dcancel := context.WithTimeout(ctx, 20*time.Second)
		d, err := r.DialContext(dctx, "tcp", "x:1")
		dcancel()
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		_ = d.Close()
	}
	echoOnce("after the new session")
	_ = c.Close()
}

// A dial does not wait for another dial's network I/O under the relay's lock: while one dial is
// stuck listing pods, another gives up at its own deadline.
func TestRelayDialsDoNotWaitForEachOther(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a kube-apiserver")
	}
	cl, _ := relayEnv(t, nodestandin.EchoServer(t, ""))
	release := make(chan struct{})
	listing := make(chan struct{}, 1)
	cfg := rest.CopyConfig(cl.Config)
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		return roundTripperFunc(func(req *http.Request) (*http.Response, error) {
			if req.Method == http.MethodGet && strings.HasSuffix(req.URL.Path, "/pods") {
				select {
				case listing <- struct{}{}:
				default:
				}
				<-release
			}
			return rt.RoundTrip(req)
		})
	})
	r := &Relay{Config: cfg, Context: "cl01", Namespace: "apiproxy-system", Selector: "app=proxy", Port: 8118}
	defer r.Close()

	first := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		c, err := r.DialContext(ctx, "tcp", "x:1")
		if err == nil {
			_ = c.Close()
		}
		first <- err
	}()
	<-listing // the first dial is inside the pod list now

	ctx, cancel := context.WithCancel(context.Background())
	second := make(chan error, 1)
	go func() { _, err := r.DialContext(ctx, "tcp", "x:1"); second <- err }()
	cancel()
	select {
	case err := <-second:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("second dial: %v, want its own cancellation", err)
		}
	case <-time.After(60 * time.Second):
		close(release)
		t.Fatal("the second dial waited for the first one's pod list")
	}
	close(release)
	if err := <-first; err != nil {
		t.Fatalf("first dial: %v", err)
	}
}

type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }

var _ net.Conn = (*streamConn)(nil)

// A relay (the --via cluster's proxy) that authenticates tunnels gets a token on the relay leg:
// --via-proxy-token, or the --via context's user's token after its 407; without one the error
// names the relay and --via-proxy-token (it used to send nothing and blame --allow-target). The
// remote proxy keeps its own token.
func TestViaSendsRelayCredentials(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a kube-apiserver")
	}
	echo := nodestandin.EchoServer(t, "")
	remote := testnet.StartAuthProxy(t, "remote-token", echo)
	relayProxy := testnet.StartAuthProxy(t, "relay-token", remote.Addr)
	cl, _ := relayEnv(t, relayProxy.Addr)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	dial := func(relayCreds *ProxyCredentials) error {
		r := &Relay{Config: cl.Config, Context: "cl01", Namespace: "apiproxy-system", Selector: "app=proxy", Port: 8118}
		defer r.Close()
		v := &ViaDialer{Relay: r, RemoteProxy: remote.Addr, Timeout: 20 * time.Second,
			Creds: &ProxyCredentials{Override: "remote-token", Context: "cl02"}, RelayCreds: relayCreds}
		c, err := v.DialContext(ctx, "tcp", "kubernetes.default.svc:443")
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		if _, err := io.WriteString(c, "ping"); err != nil {
			return err
		}
		buf := make([]byte, 4)
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
			return fmt.Errorf("echo through both proxies: %q %v", buf, err)
		}
		return nil
	}

	t.Run("--via-proxy-token", func(t *testing.T) {
		if err := dial(&ProxyCredentials{Override: "relay-token", Context: "cl01", Flag: "--via-proxy-token"}); err != nil {
			t.Fatal(err)
		}
		if got := relayProxy.Seen(); !slices.Equal(got, []string{"bearer"}) {
			t.Errorf("the relay saw %v, want the token on the first CONNECT", got)
		}
		if got := remote.Seen(); !slices.Equal(got, []string{"bearer"}) {
			t.Errorf("the remote proxy saw %v", got)
		}
	})
	t.Run("the --via context's token after a 407", func(t *testing.T) {
		viaUser := rest.AnonymousClientConfig(cl.Config)
		viaUser.BearerToken = "relay-token"
		if err := dial(&ProxyCredentials{Config: viaUser, Context: "cl01", Flag: "--via-proxy-token"}); err != nil {
			t.Fatal(err)
		}
		if got := relayProxy.Seen(); !slices.Equal(got, []string{"none", "bearer"}) {
			t.Errorf("the relay saw %v, want none then the context's token", got)
		}
		remote.Seen()
	})
	t.Run("no token for the relay", func(t *testing.T) {
		err := dial(&ProxyCredentials{Override: "wrong", Context: "cl01", Flag: "--via-proxy-token"})
		var he *HopError
		if !errors.As(err, &he) || he.Hop != HopRelay || !strings.Contains(err.Error(), "407") || !strings.Contains(err.Error(), "--via-proxy-token") || strings.Contains(err.Error(), "--allow-target") {
			t.Fatalf("err = %v: want the relay hop, 407 and --via-proxy-token, not --allow-target", err)
		}
		if strings.Contains(err.Error(), "wrong") {
			t.Errorf("the error shows the token: %v", err)
		}
		if got := remote.Seen(); len(got) != 0 {
			t.Errorf("the remote proxy was reached: %v", got)
		}
	})
}
