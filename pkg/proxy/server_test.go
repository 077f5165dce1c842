package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/apiproxy/apiproxy/test/testnet"
)

// echoServer echoes every connection and, on the client's EOF, answers "|bye" and half-closes.
func echoServer(t *testing.T, network, addr string) string {
	t.Helper()
	return testnet.Serve(t, network, addr, func(c net.Conn) {
		io.Copy(c, c)
		io.WriteString(c, "|bye")
		c.(*net.TCPConn).CloseWrite()
		io.Copy(io.Discard, c)
	})
}

func closedPort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// recordingDialer records every address dialed, then dials it for real (loopback only in these
// tests) or fails with fail when set.
type recordingDialer struct {
	mu     sync.Mutex
	dialed []string
	fail   error
	block  chan struct{} // when set, every dial waits for it (or ctx)
}

func (d *recordingDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	d.mu.Lock()
	d.dialed = append(d.dialed, addr)
	d.mu.Unlock()
	if d.block != nil {
		select {
		case <-d.block:
		case <-ctx.Done():
			return nil, &net.OpError{Op: "dial", Net: network, Err: ctx.Err()}
		}
	}
	if d.fail != nil {
		return nil, d.fail
	}
	if h, _, _ := net.SplitHostPort(addr); h != "127.0.0.1" && h != "::1" {
		return nil, fmt.Errorf("test refuses to dial non-loopback %s", addr)
	}
	return (&net.Dialer{}).DialContext(ctx, network, addr)
}

func (d *recordingDialer) addrs() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.dialed...)
}

type testProxy struct {
	*Server
	addr string
	reg  *prometheus.Registry
	logs *logLines
}

type logLines struct {
	mu    sync.Mutex
	lines []string
}

func (l *logLines) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...)
}

func startProxy(t testing.TB, cfg Config) *testProxy {
	t.Helper()
	return startProxyOn(t, "127.0.0.1:0", cfg)
}

func startProxyOn(t testing.TB, listen string, cfg Config) *testProxy {
	t.Helper()
	tp := &testProxy{reg: prometheus.NewRegistry(), logs: &logLines{}}
	cfg.Registerer = tp.reg
	cfg.Logger = funcr.New(func(prefix, args string) {
		tp.logs.mu.Lock()
		tp.logs.lines = append(tp.logs.lines, args)
		tp.logs.mu.Unlock()
	}, funcr.Options{})
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	l, err := Listen(context.Background(), listen, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	tp.Server, tp.addr = s, l.Addr().String()
	go s.Serve(l)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
	waitFor(t, func() bool { return s.Ready() == nil })
	return tp
}

func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// connect sends head (raw) and returns the connection with the parsed response.
func connect(t *testing.T, proxyAddr, head string) (net.Conn, *bufio.Reader, *http.Response) {
	t.Helper()
	c, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, head); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatalf("reading the proxy's answer to %q: %v", head, err)
	}
	return c, br, resp
}

// assertEchoed sends msg through the tunnel c (read back through r), half-closes it and requires
// the echo server's answer: msg followed by "|bye".
func assertEchoed(t *testing.T, c net.Conn, r io.Reader, msg string) {
	t.Helper()
	io.WriteString(c, msg)
	c.(*net.TCPConn).CloseWrite()
	if got, _ := io.ReadAll(r); string(got) != msg+"|bye" {
		t.Fatalf("relayed %q, want %q", got, msg+"|bye")
	}
}

func connectHead(authority string) string {
	return "CONNECT " + authority + " HTTP/1.1\r\nHost: " + authority + "\r\n\r\n"
}

func total(tp *testProxy, kind, result string) float64 {
	return testutil.ToFloat64(tp.Server.m.total.WithLabelValues(kind, result))
}

func TestTunnelGoesToUpstreamWhateverTheAuthority(t *testing.T) {
	up := echoServer(t, "tcp", "127.0.0.1:0")
	d := &recordingDialer{}
	tp := startProxy(t, Config{Upstream: up, Dialer: d})
	c, br, resp := connect(t, tp.addr, connectHead("evil.example.com:25"))
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	assertEchoed(t, c, br, "hello")
	if a := d.addrs(); len(a) != 1 || a[0] != up {
		t.Fatalf("dialed %v, want only the upstream %s", a, up)
	}
	waitFor(t, func() bool { return total(tp, KindConnect, ResultOK) == 1 })
	if got := testutil.ToFloat64(tp.m.bytesUp); got != 5 {
		t.Errorf("bytes up %v", got)
	}
	if got := testutil.ToFloat64(tp.m.bytesDn); got != 9 {
		t.Errorf("bytes down %v", got)
	}
	if n := testutil.CollectAndCount(tp.reg, "apiproxy_proxy_dial_duration_seconds"); n != 1 {
		t.Errorf("dial histogram series %d", n)
	}
	// One log line for the tunnel, with everything an operator needs.
	var line string
	for _, l := range tp.logs.all() {
		if strings.Contains(l, `"authority"="evil.example.com:25"`) {
			line = l
		}
	}
	for _, want := range []string{`"dialed"="` + up + `"`, `"bytesUp"=5`, `"bytesDown"=9`, `"result"="ok"`, `"peer"=`, `"duration"=`} {
		if !strings.Contains(line, want) {
			t.Errorf("log line %q lacks %s", line, want)
		}
	}
}

func TestPipelinedBytesAfterHeadersAreRelayed(t *testing.T) {
	up := echoServer(t, "tcp", "127.0.0.1:0")
	tp := startProxy(t, Config{Upstream: up})
	// Head and payload in one write, as a client that does not wait for the 200 sends them.
	c, br, resp := connect(t, tp.addr, connectHead("x:443")+"EARLY-CLIENTHELLO")
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	c.(*net.TCPConn).CloseWrite()
	got, _ := io.ReadAll(br)
	if string(got) != "EARLY-CLIENTHELLO|bye" {
		t.Fatalf("got %q", got)
	}
}

func TestStatusCodes(t *testing.T) {
	up := echoServer(t, "tcp", "127.0.0.1:0")
	cases := []struct {
		name   string
		cfg    Config
		head   string
		status int
		result string
	}{
		{"malformed request line", Config{Upstream: up}, "CONNECT\r\n\r\n", 400, ResultBadRequest},
		{"malformed authority", Config{Upstream: up}, connectHead("no-port"), 400, ResultBadRequest},
		{"malformed header", Config{Upstream: up}, "CONNECT x:1 HTTP/1.1\r\nno colon\r\n\r\n", 400, ResultBadRequest},
		{"head too large", Config{Upstream: up, MaxHeaderBytes: 512}, "CONNECT x:1 HTTP/1.1\r\nX: " + strings.Repeat("a", 2000) + "\r\n\r\n", 400, ResultBadRequest},
		{"GET", Config{Upstream: up}, "GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n", 405, ResultMethod},
		{"refused", Config{Upstream: closedPort(t)}, connectHead("x:443"), 502, ResultDialRefused},
		{"timeout", Config{Upstream: up, DialTimeout: 200 * time.Millisecond, Dialer: &recordingDialer{block: make(chan struct{})}}, connectHead("x:443"), 504, ResultDialTimeout},
		{"etimedout", Config{Upstream: up, Dialer: &recordingDialer{fail: &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ETIMEDOUT}}}, connectHead("x:443"), 504, ResultDialTimeout},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tp := startProxy(t, tc.cfg)
			_, br, resp := connect(t, tp.addr, tc.head)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
			body, _ := io.ReadAll(resp.Body)
			if len(body) == 0 {
				t.Error("no reason in the body")
			}
			if tc.status == 405 && resp.Header.Get("Allow") != "CONNECT" {
				t.Error("405 without Allow: CONNECT")
			}
			if _, err := br.ReadByte(); err != io.EOF {
				t.Errorf("connection not closed after %d: %v", tc.status, err)
			}
			waitFor(t, func() bool { return total(tp, KindConnect, tc.result) == 1 })
		})
	}
}

func TestMaxTunnels(t *testing.T) {
	up := echoServer(t, "tcp", "127.0.0.1:0")
	tp := startProxy(t, Config{Upstream: up, MaxTunnels: 2})
	var open []net.Conn
	for i := 0; i < 2; i++ {
		c, _, resp := connect(t, tp.addr, connectHead("x:443"))
		if resp.StatusCode != 200 {
			t.Fatalf("tunnel %d: %d", i, resp.StatusCode)
		}
		open = append(open, c)
	}
	_, _, resp := connect(t, tp.addr, connectHead("x:443"))
	if resp.StatusCode != 503 {
		t.Fatalf("third tunnel: %d, want 503", resp.StatusCode)
	}
	if got := testutil.ToFloat64(tp.m.active.WithLabelValues(KindConnect)); got != 2 {
		t.Errorf("active gauge %v", got)
	}
	// A slot frees when a tunnel ends.
	open[0].Close()
	waitFor(t, func() bool { return tp.Active() == 1 })
	if _, _, resp := connect(t, tp.addr, connectHead("x:443")); resp.StatusCode != 200 {
		t.Fatalf("after one closed: %d", resp.StatusCode)
	}
	waitFor(t, func() bool { return total(tp, KindConnect, ResultOverCapacity) == 1 })
}

func TestNoOKBeforeTheDialSucceeded(t *testing.T) {
	up := echoServer(t, "tcp", "127.0.0.1:0")
	d := &recordingDialer{block: make(chan struct{})}
	tp := startProxy(t, Config{Upstream: up, Dialer: d})
	c, err := net.Dial("tcp", tp.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, connectHead("x:443"))
	waitFor(t, func() bool { return len(d.addrs()) == 1 })
	// The dial is pending: nothing may have been answered yet.
	c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, err := c.Read(make([]byte, 1)); n != 0 || !errors.Is(err, syscall.EAGAIN) && !isTimeout(err) {
		t.Fatalf("proxy answered (%d bytes, %v) before the upstream dial completed", n, err)
	}
	close(d.block)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("after the dial: %v %v", resp, err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestSlowHeadersAreCut(t *testing.T) {
	d := &recordingDialer{}
	tp := startProxy(t, Config{Upstream: echoServer(t, "tcp", "127.0.0.1:0"), HeaderTimeout: 300 * time.Millisecond, Dialer: d})
	c, err := net.Dial("tcp", tp.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	io.WriteString(c, "CONNECT x:443 HTTP/1.1\r\nHost: x") // ... and never the rest
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != http.StatusRequestTimeout {
		t.Fatalf("want 408 for the slow client, got %v, %v", resp, err)
	}
	if time.Since(start) < 250*time.Millisecond {
		t.Fatalf("cut after %s, before the header timeout", time.Since(start))
	}
	waitFor(t, func() bool { return total(tp, KindConnect, ResultHeaderTimeout) == 1 })
	if len(d.addrs()) != 0 {
		t.Fatal("dialed for an incomplete request")
	}
}

func TestHalfCloseBothWays(t *testing.T) {
	// Upstream: reads to EOF, then answers and half-closes: the shape of TLS close_notify handling.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	upGot := make(chan string, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		b, _ := io.ReadAll(c)
		upGot <- string(b)
		io.WriteString(c, "answer-after-your-eof")
		c.(*net.TCPConn).CloseWrite()
		// The client's side must stay readable: wait for its close.
		io.Copy(io.Discard, c)
	}()
	tp := startProxy(t, Config{Upstream: l.Addr().String()})
	c, br, resp := connect(t, tp.addr, connectHead("x:443"))
	if resp.StatusCode != 200 {
		t.Fatal(resp.Status)
	}
	io.WriteString(c, "request")
	c.(*net.TCPConn).CloseWrite()
	if got := <-upGot; got != "request" {
		t.Fatalf("upstream got %q", got)
	}
	got, err := io.ReadAll(br)
	if err != nil || string(got) != "answer-after-your-eof" {
		t.Fatalf("client got %q %v", got, err)
	}
}

func TestAllowTargetIsDialedAsNamed(t *testing.T) {
	up := echoServer(t, "tcp", "127.0.0.1:0")
	other := echoServer(t, "tcp", "127.0.0.1:0")
	_, port, _ := net.SplitHostPort(other)
	al, err := ParseAllowList([]string{"127.0.0.0/8:" + port})
	if err != nil {
		t.Fatal(err)
	}
	d := &recordingDialer{}
	tp := startProxy(t, Config{Upstream: up, Allow: al, Dialer: d})
	c, br, resp := connect(t, tp.addr, connectHead(other))
	if resp.StatusCode != 200 {
		t.Fatal(resp.Status)
	}
	c.(*net.TCPConn).CloseWrite()
	io.ReadAll(br)
	if a := d.addrs(); len(a) != 1 || a[0] != other {
		t.Fatalf("dialed %v, want %s", a, other)
	}
}

// Property: whatever authority a client names, the proxy dials the upstream or an authority on the
// allow list, nothing else.
func TestPropertyNothingOutsideTheAllowListIsDialed(t *testing.T) {
	const upstream = "127.0.0.1:6443"
	entries := []string{"10.96.0.0/12:443", "kubernetes.default.svc:443", "[fd00::/120]:6443", "127.0.0.9:8443"}
	al, err := ParseAllowList(entries)
	if err != nil {
		t.Fatal(err)
	}
	d := &recordingDialer{fail: errors.New("recorded, not dialed")}
	tp := startProxy(t, Config{Upstream: upstream, Allow: al, Dialer: d})
	rng := rand.New(rand.NewSource(42))
	hosts := []func() string{
		func() string { return fmt.Sprintf("10.%d.%d.%d", rng.Intn(256), rng.Intn(256), rng.Intn(256)) },
		func() string { return fmt.Sprintf("10.%d.0.1", 90+rng.Intn(30)) },
		func() string { return fmt.Sprintf("[fd00::%x]", rng.Intn(0x200)) },
		func() string { return fmt.Sprintf("[::ffff:10.%d.0.1]", 90+rng.Intn(30)) },
		func() string {
			return []string{"kubernetes.default.svc", "KUBERNETES.default.svc.", "kubernetes.default", "evil.com", "localhost", "metadata.google.internal"}[rng.Intn(6)]
		},
		func() string { return fmt.Sprintf("127.0.0.%d", rng.Intn(12)) },
		func() string {
			return fmt.Sprintf("%d.%d.%d.%d", rng.Intn(256), rng.Intn(256), rng.Intn(256), rng.Intn(256))
		},
	}
	ports := []int{443, 6443, 8443, 80, 22, 1 + rng.Intn(65535)}
	seen := map[string]bool{}
	for i := 0; i < 300; i++ {
		authority := hosts[rng.Intn(len(hosts))]() + ":" + fmt.Sprint(ports[rng.Intn(len(ports))])
		before := len(d.addrs())
		_, _, resp := connect(t, tp.addr, connectHead(authority))
		if resp.StatusCode != 502 {
			t.Fatalf("%s: status %d", authority, resp.StatusCode)
		}
		got := d.addrs()
		if len(got) != before+1 {
			t.Fatalf("%s: %d dials", authority, len(got)-before)
		}
		dialed := got[len(got)-1]
		host, port, _ := ParseAuthority(authority)
		canonical, allowed := al.Match(host, port)
		want := upstream
		if allowed {
			want = canonical
		}
		if dialed != want {
			t.Fatalf("CONNECT %s (allowed=%v) dialed %s, want %s", authority, allowed, dialed, want)
		}
		seen[fmt.Sprint(allowed)] = true
	}
	if !seen["true"] || !seen["false"] {
		t.Fatalf("generator did not cover both cases: %v", seen)
	}
	// Independently of Allows: everything dialed is the upstream or inside an entry.
	for _, a := range d.addrs() {
		if a == upstream || a == "127.0.0.9:8443" || a == "kubernetes.default.svc:443" {
			continue
		}
		h, p, _ := net.SplitHostPort(a)
		ok := (p == "443" && (strings.HasPrefix(h, "10.9") || strings.HasPrefix(h, "10.10") || strings.HasPrefix(h, "10.11"))) ||
			(p == "6443" && strings.HasPrefix(h, "fd00::") && len(h) <= len("fd00::ff"))
		if !ok {
			t.Errorf("dialed %s, outside the allow list", a)
		}
	}
}

func TestUpstreamProxyChainAndTransparentListener(t *testing.T) {
	up := echoServer(t, "tcp", "127.0.0.1:0")
	provider := startProxy(t, Config{Upstream: up})
	// The consumer asks the provider for a name only the provider's side would know: the provider
	// routes it to its upstream anyway.
	consumer := startProxy(t, Config{Upstream: "kubernetes.default.svc:443", UpstreamProxy: "http://" + provider.addr})
	tl, err := Listen(context.Background(), "127.0.0.1:0", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	go consumer.ServeTCP(tl)
	c, err := net.Dial("tcp", tl.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "raw-bytes")
	c.(*net.TCPConn).CloseWrite()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, _ := io.ReadAll(c)
	if string(got) != "raw-bytes|bye" {
		t.Fatalf("got %q", got)
	}
	waitFor(t, func() bool {
		return total(consumer, KindTCP, ResultOK) == 1 && total(provider, KindConnect, ResultOK) == 1
	})

	// A refusal at the provider comes back as 502 through the consumer's CONNECT listener.
	refusing := startProxy(t, Config{Upstream: closedPort(t)})
	chained := startProxy(t, Config{Upstream: "kubernetes.default.svc:443", UpstreamProxy: refusing.addr})
	_, _, resp := connect(t, chained.addr, connectHead("x:443"))
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 502 || strings.Contains(string(body), refusing.addr) || strings.Contains(string(body), "127.0.0.1") {
		t.Fatalf("chained refusal: %d %q, want 502 with a body that names no address", resp.StatusCode, body)
	}
}

func TestIPv6ListenerAndUpstream(t *testing.T) {
	l, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skipf("::1 not configured on this machine: %v", err)
	}
	l.Close()
	up := echoServer(t, "tcp", "[::1]:0")
	tp := startProxyOn(t, "[::1]:0", Config{Upstream: up})
	if !strings.HasPrefix(tp.addr, "[::1]:") {
		t.Fatalf("listening on %s", tp.addr)
	}
	c, br, resp := connect(t, tp.addr, connectHead("[fd00::1]:443"))
	if resp.StatusCode != 200 {
		t.Fatal(resp.Status)
	}
	assertEchoed(t, c, br, "v6")
}

func TestIdleTimeoutClosesTunnel(t *testing.T) {
	up := echoServer(t, "tcp", "127.0.0.1:0")
	tp := startProxy(t, Config{Upstream: up, IdleTimeout: 200 * time.Millisecond})
	_, br, resp := connect(t, tp.addr, connectHead("x:443"))
	if resp.StatusCode != 200 {
		t.Fatal(resp.Status)
	}
	if _, err := br.ReadByte(); err == nil || isTimeout(err) {
		t.Fatalf("idle tunnel not closed: %v", err)
	}
	waitFor(t, func() bool { return total(tp, KindConnect, ResultIdle) == 1 })
}

func TestShutdownDrainsThenCuts(t *testing.T) {
	up := echoServer(t, "tcp", "127.0.0.1:0")
	tp := startProxy(t, Config{Upstream: up})
	c, br, resp := connect(t, tp.addr, connectHead("x:443"))
	if resp.StatusCode != 200 {
		t.Fatal(resp.Status)
	}
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		done <- tp.Shutdown(ctx)
	}()
	waitFor(t, func() bool { return tp.Ready() != nil })
	// No new connections...
	waitFor(t, func() bool {
		c2, err := net.DialTimeout("tcp", tp.addr, time.Second)
		if err == nil {
			c2.Close()
		}
		return err != nil
	})
	// ...but the open tunnel still works until its client finishes.
	assertEchoed(t, c, br, "still-here")
	if err := <-done; err != nil {
		t.Fatalf("drain: %v", err)
	}

	// With a grace period too short, the remaining tunnels are cut.
	tp2 := startProxy(t, Config{Upstream: up})
	_, br2, _ := connect(t, tp2.addr, connectHead("x:443"))
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := tp2.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("want the grace period to run out, got %v", err)
	}
	if _, err := br2.ReadByte(); err == nil || isTimeout(err) {
		t.Fatalf("tunnel still open after the grace period: %v", err)
	}
	waitFor(t, func() bool { return total(tp2, KindConnect, ResultDrained) == 1 })
}

func TestNewRejectsBadConfig(t *testing.T) {
	for _, cfg := range []Config{{}, {Upstream: "no-port"}, {Upstream: "x:1", UpstreamProxy: "https://p:1"}} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%+v accepted", cfg)
		}
	}
	_ = logr.Discard()
}

func TestChainedTimeoutIs504(t *testing.T) {
	// The provider's dial times out: it answers 504, and the consumer passes 504 on.
	provider := startProxy(t, Config{Upstream: "127.0.0.1:6443", DialTimeout: 200 * time.Millisecond, Dialer: &recordingDialer{block: make(chan struct{})}})
	consumer := startProxy(t, Config{Upstream: "kubernetes.default.svc:443", UpstreamProxy: "http://" + provider.addr, DialTimeout: 5 * time.Second})
	_, _, resp := connect(t, consumer.addr, connectHead("x:443"))
	if resp.StatusCode != 504 {
		t.Fatalf("status %d, want 504", resp.StatusCode)
	}
	waitFor(t, func() bool { return total(consumer, KindConnect, ResultDialTimeout) == 1 })
}

func TestListenEnablesTCPKeepAlive(t *testing.T) {
	l, err := Listen(context.Background(), "127.0.0.1:0", 7*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := net.Dial("tcp", l.Addr().String())
		if err == nil {
			time.Sleep(time.Second)
			c.Close()
		}
	}()
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	raw, _ := c.(*net.TCPConn).SyscallConn()
	var on, idle int
	raw.Control(func(fd uintptr) {
		on, _ = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_KEEPALIVE)
		idle, _ = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE)
	})
	if on != 1 || idle != 7 {
		t.Fatalf("SO_KEEPALIVE=%d TCP_KEEPIDLE=%d, want 1 and 7", on, idle)
	}
}
