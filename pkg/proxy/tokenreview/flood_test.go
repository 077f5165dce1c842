package tokenreview

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/apiproxy/apiproxy/pkg/proxy"
	"github.com/apiproxy/apiproxy/test/harness"
)

// stallRelay relays TCP to target; while paused it holds every byte a client sends (requests on
// connections already open included), like an API server that stopped answering.
type stallRelay struct {
	addr string
	mu   sync.Mutex
	open chan struct{} // closed while relaying
}

func newStallRelay(t *testing.T, target string) *stallRelay {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &stallRelay{addr: l.Addr().String(), open: make(chan struct{})}
	close(r.open)
	var conns sync.WaitGroup
	var mu sync.Mutex
	var open []net.Conn
	t.Cleanup(func() {
		r.resume()
		l.Close()
		mu.Lock()
		for _, c := range open {
			c.Close() // the clients' idle connections would stay for a minute and a half
		}
		mu.Unlock()
		conns.Wait()
	})
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			open = append(open, c, up)
			mu.Unlock()
			conns.Add(2)
			go func() { defer conns.Done(); io.Copy(c, up); c.Close() }()
			go func() {
				defer conns.Done()
				defer up.Close()
				buf := make([]byte, 32<<10)
				for {
					n, err := c.Read(buf)
					if n > 0 {
						r.mu.Lock()
						open := r.open
						r.mu.Unlock()
						<-open
						if _, werr := up.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return r
}

func (r *stallRelay) pause() {
	r.mu.Lock()
	defer r.mu.Unlock()
	select {
	case <-r.open:
		r.open = make(chan struct{})
	default:
	}
}

func (r *stallRelay) resume() {
	r.mu.Lock()
	defer r.mu.Unlock()
	select {
	case <-r.open:
	default:
		close(r.open)
	}
}

// tunnelGrant creates a ServiceAccount allowed to create tunnels and returns its user name and a
// token.
func tunnelGrant(t *testing.T, ctx context.Context, cs kubernetes.Interface, ns, sa string) (string, string) {
	t.Helper()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "tunnel-" + sa},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{Group}, Resources: []string{Resource}, Verbs: []string{Verb}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "tunnel-" + sa},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "tunnel-" + sa},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: sa, Namespace: ns}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authnv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return "system:serviceaccount:" + ns + ":" + sa, tr.Status.Token
}

func restConfig(t *testing.T, c *harness.Cluster) *rest.Config {
	t.Helper()
	rc, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	return rc
}

// connectStatus sends a CONNECT with a bearer token and returns the answer's status; the
// connection stays open (closed at the test's end) unless the answer came.
func connectStatus(t *testing.T, proxyAddr, token string) int {
	t.Helper()
	c, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprintf(c, "CONNECT kubernetes.default.svc:443 HTTP/1.1\r\nHost: kubernetes.default.svc:443\r\nProxy-Authorization: Bearer %s\r\n\r\n", token)
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatalf("CONNECT: %v", err)
	}
	return resp.StatusCode
}

// Issue 24 item 1, against a real API server: made-up tokens whose TokenReviews hang (the
// unseen-token client's path to the API server stalls) take at most MaxUnseenReviews reviews;
// more are refused at once and counted. A token found valid before still gets its tunnel, from
// the cache and, once the cache entry expired, from the known-token lane, with --max-tunnels 2.
func TestUnseenTokenFloodNeitherQueuesNorBlocksKnownTokens(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a kube-apiserver")
	}
	c := harness.Start(t, harness.Options{Name: "flood"})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, token := tunnelGrant(t, ctx, c.Clientset(t), "peers", "flood")

	rc := restConfig(t, c)
	u, _ := url.Parse(rc.Host)
	relay := newStallRelay(t, u.Host)
	unseenRC := rest.CopyConfig(rc)
	unseenRC.Host = "https://" + relay.addr
	known, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	unseen, err := kubernetes.NewForConfig(unseenRC)
	if err != nil {
		t.Fatal(err)
	}
	const maxUnseen = 4
	reg := prometheus.NewRegistry()
	a, err := New(known, Options{UnseenClient: unseen, MaxUnseenReviews: maxUnseen, TokenTTL: time.Second,
		DeniedTTL: 100 * time.Millisecond, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := proxy.New(proxy.Config{Upstream: u.Host, Auth: a, MaxTunnels: 2, AuthTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), time.Second)
		defer scancel()
		srv.Shutdown(sctx)
	})

	// The token is unseen at first: reviewed through the relay. RBAC reaches the authorizer
	// through an informer: poll, bounded.
	for deadline := time.Now().Add(30 * time.Second); connectStatus(t, l.Addr().String(), token) != 200; time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the granted token never got a tunnel")
		}
	}

	relay.pause()
	const flood = maxUnseen + 3
	for i := 0; i < flood; i++ {
		go func() {
			c, err := net.Dial("tcp", l.Addr().String())
			if err != nil {
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			fmt.Fprintf(c, "CONNECT kubernetes.default.svc:443 HTTP/1.1\r\nProxy-Authorization: Bearer made-up-token-%d\r\n\r\n", i)
			io.Copy(io.Discard, c)
		}()
	}
	refused := func() float64 { return metricValue(t, reg, "apiproxy_proxy_token_reviews_refused_total", "") }
	for deadline := time.Now().Add(5 * time.Second); refused() != flood-maxUnseen; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("refused %v reviews of unseen tokens, want %d (%v in flight)", refused(), flood-maxUnseen,
				metricValue(t, reg, "apiproxy_proxy_token_reviews_in_flight", "unseen"))
		}
	}
	if n := metricValue(t, reg, "apiproxy_proxy_token_reviews_in_flight", "unseen"); n != maxUnseen {
		t.Fatalf("%v reviews of unseen tokens in flight, want the cap %d", n, maxUnseen)
	}
	if got := connectStatus(t, l.Addr().String(), token); got != 200 {
		t.Fatalf("cached valid token during the flood: %d, want 200", got)
	}
	time.Sleep(1200 * time.Millisecond) // past TokenTTL: the next CONNECT reviews the token again
	if got := connectStatus(t, l.Addr().String(), token); got != 200 {
		t.Fatalf("known valid token, reviewed again during the flood: %d, want 200", got)
	}
	if n := metricValue(t, reg, "apiproxy_proxy_token_reviews_in_flight", "unseen"); n != maxUnseen {
		t.Fatalf("%v reviews of unseen tokens in flight, want still %d", n, maxUnseen)
	}
}

// metricValue reads one gauge or counter from reg; label is the value of its only label, if any.
func metricValue(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label != "" && (len(m.GetLabel()) != 1 || m.GetLabel()[0].GetValue() != label) {
				continue
			}
			if m.GetGauge() != nil {
				return m.GetGauge().GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

// Issue 24 item 3: however klog's verbosity reaches client-go's request code (-v, or --vmodule
// naming its file), the reviews' requests and answers are not logged with their bodies: the
// token never appears in the log, while the review client's lower levels still do.
func TestReviewClientNeverLogsTheToken(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a kube-apiserver")
	}
	c := harness.Start(t, harness.Options{Name: "verbose"})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, token := tunnelGrant(t, ctx, c.Clientset(t), "peers", "verbose")

	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(fs) // the flags set klog's global state
	var buf syncBuffer
	t.Cleanup(func() {
		fs.Set("v", "0")
		fs.Set("vmodule", "")
		fs.Set("logtostderr", "true")
		klog.SetOutput(io.Discard)
	})
	fs.Set("logtostderr", "false")
	fs.Set("alsologtostderr", "false")
	fs.Set("stderrthreshold", "FATAL")
	klog.SetOutput(&buf)

	for _, levels := range []map[string]string{
		{"v": "9", "vmodule": ""},
		// Which file klog matches for a body depends on client-go's call depth (request.go's
		// logBody is attributed to its caller, type.go for typed clients): name both.
		{"v": "0", "vmodule": "request=8,type=8,round_trippers=6"},
	} {
		for k, v := range levels {
			if err := fs.Set(k, v); err != nil {
				t.Fatal(err)
			}
		}
		buf.Reset()
		// A client made now, as the agent makes it after parsing its flags (client-go decides at
		// construction whether to wrap its transport with the debugging one).
		cs, err := kubernetes.NewForConfig(restConfig(t, c))
		if err != nil {
			t.Fatal(err)
		}
		a, err := New(cs, Options{})
		if err != nil {
			t.Fatal(err)
		}
		req := &proxy.ConnectRequest{Authority: "kubernetes.default.svc:443", Header: map[string][]string{}}
		for _, tok := range []string{token, "made-up-token-that-must-not-be-logged"} {
			req.Header.Set("Proxy-Authorization", "Bearer "+tok)
			_, _ = a.Authenticate(ctx, req)
		}
		klog.Flush()
		out := buf.String()
		if !strings.Contains(out, "tokenreviews") {
			t.Fatalf("%v: no log line about the reviews, the test sees no logging at all:\n%s", levels, out)
		}
		for _, secret := range []string{token, "made-up-token-that-must-not-be-logged"} {
			if piece := anyPiece(out, secret, 16); piece != "" {
				t.Fatalf("%v: the log contains %q of a token under review:\n%s", levels, piece, out)
			}
		}
	}
}

// anyPiece returns a piece of secret, n bytes long, found in text, or "". Pieces, not just the
// whole secret: client-go hex-dumps protobuf bodies, 16 bytes a line.
func anyPiece(text, secret string, n int) string {
	for i := 0; i+n <= len(secret); i++ {
		if strings.Contains(text, secret[i:i+n]) {
			return secret[i : i+n]
		}
	}
	return ""
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }
func (s *syncBuffer) Reset()         { s.mu.Lock(); defer s.mu.Unlock(); s.b.Reset() }
