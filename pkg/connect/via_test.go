package connect

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/apiproxy/apiproxy/pkg/tunnel"
	"github.com/apiproxy/apiproxy/test/harness"
	"github.com/apiproxy/apiproxy/test/harness/nodestandin"
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

var _ net.Conn = (*streamConn)(nil)
