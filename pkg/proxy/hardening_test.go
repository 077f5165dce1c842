package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/apiproxy/apiproxy/test/testnet"
)

// Issue 13 item 1: an allowed name is dialed as the allow entry spells it; the client's variants
// (another case, a trailing dot, a dotted IP) are not that entry's target.
func TestAllowedTargetsAreDialedInCanonicalForm(t *testing.T) {
	const upstream = "127.0.0.1:6443"
	al, err := ParseAllowList([]string{"myapi.prod:443", "10.0.0.5:443", "[::ffff:10.9.0.0]/112:443"})
	if err != nil {
		t.Fatal(err)
	}
	d := &recordingDialer{fail: errors.New("recorded, not dialed")}
	tp := startProxy(t, Config{Upstream: upstream, Allow: al, Dialer: d})
	for authority, want := range map[string]string{
		"MyApi.Prod:443":         "myapi.prod:443",
		"myapi.prod:443":         "myapi.prod:443",
		"myapi.prod.:443":        upstream, // absolute name: not the one allowed
		"10.0.0.5:443":           "10.0.0.5:443",
		"10.0.0.5.:443":          upstream, // a name, not the address entry
		"[::ffff:10.0.0.5]:443":  "10.0.0.5:443",
		"10.9.1.2:443":           "10.9.1.2:443", // plain client, IPv4-mapped CIDR entry
		"[::ffff:10.9.1.2]:443":  "10.9.1.2:443",
		"[::ffff:10.10.1.2]:443": upstream,
	} {
		before := len(d.addrs())
		_, _, resp := connect(t, tp.addr, connectHead(authority))
		resp.Body.Close()
		got := d.addrs()
		if len(got) != before+1 || got[len(got)-1] != want {
			t.Errorf("CONNECT %s dialed %v, want %s", authority, got[before:], want)
		}
	}
}

// Issue 13 item 2: a 502/504 tells the client the status and a generic reason; the address and the
// errno go to the log (and the result label) only.
func TestErrorBodiesRevealNothing(t *testing.T) {
	refused := closedPort(t)
	_, refusedPort, _ := net.SplitHostPort(refused)
	cases := []struct {
		name   string
		cfg    Config
		status int
	}{
		{"refused", Config{Upstream: refused}, 502},
		{"timeout", Config{Upstream: "127.0.0.1:6443", DialTimeout: 100 * time.Millisecond, Dialer: &recordingDialer{block: make(chan struct{})}}, 504},
		{"errno", Config{Upstream: "127.0.0.1:6443", Dialer: &recordingDialer{fail: &net.OpError{Op: "dial", Net: "tcp", Err: syscall.EHOSTUNREACH}}}, 502},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tp := startProxy(t, tc.cfg)
			_, _, resp := connect(t, tp.addr, connectHead("10.1.2.3:443"))
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
			for _, secret := range []string{"127.0.0.1", "6443", refusedPort, "refused", "unreachable", "timeout", "dial", "10.1.2.3"} {
				if strings.Contains(string(body), secret) || strings.Contains(resp.Status, secret) {
					t.Errorf("answer %q %q reveals %q", resp.Status, body, secret)
				}
			}
			waitFor(t, func() bool {
				for _, l := range tp.logs.all() {
					if strings.Contains(l, `"error"=`) && strings.Contains(l, `"dialed"="`+tc.cfg.Upstream+`"`) {
						return true
					}
				}
				return false
			})
		})
	}
}

func openIdle(t *testing.T, addr string, n int) []net.Conn {
	t.Helper()
	conns := make([]net.Conn, 0, n)
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for i := 0; i < n; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("idle connection %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	return conns
}

// Issue 13 item 3: a thousand connections that never send a head are counted, and a CONNECT that
// does send one still gets its 200 (within the header timeout, not a speed assertion).
func TestIdleConnectionsDoNotStarveAConnect(t *testing.T) {
	up := echoServer(t, "tcp", "127.0.0.1:0")
	tp := startProxy(t, Config{Upstream: up, HeaderTimeout: 30 * time.Second})
	openIdle(t, tp.addr, 1000)
	waitFor(t, func() bool { return tp.PendingHeads() == 1000 })
	if got := testutil.ToFloat64(tp.m.pending); got != 1000 {
		t.Fatalf("apiproxy_proxy_pending_heads = %v, want 1000", got)
	}
	c, br, resp := connect(t, tp.addr, connectHead("x:443"))
	if resp.StatusCode != 200 {
		t.Fatalf("CONNECT next to 1000 idle connections: %s", resp.Status)
	}
	assertEchoed(t, c, br, "ping")
}

// Issue 13 item 3: at --max-pending-heads the oldest headless connection gets 408 and the count
// stays at the cap.
func TestPendingHeadsAreCapped(t *testing.T) {
	up := echoServer(t, "tcp", "127.0.0.1:0")
	tp := startProxy(t, Config{Upstream: up, HeaderTimeout: 30 * time.Second, MaxPendingHeads: 10})
	// One at a time, so that the order of arrival is known.
	var idle []net.Conn
	for i := 1; i <= 10; i++ {
		idle = append(idle, openIdle(t, tp.addr, 1)...)
		waitFor(t, func() bool { return tp.PendingHeads() == i })
	}
	openIdle(t, tp.addr, 1)
	idle[0].SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(idle[0]), &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != http.StatusRequestTimeout {
		t.Fatalf("oldest idle connection: %v %v, want 408", resp, err)
	}
	waitFor(t, func() bool { return total(tp, KindConnect, ResultEvicted) == 1 })
	if n := tp.PendingHeads(); n != 10 {
		t.Fatalf("%d pending heads, want the cap 10", n)
	}
	// A client that sends its head still gets through, at the expense of the oldest idle one.
	if _, _, resp := connect(t, tp.addr, connectHead("x:443")); resp.StatusCode != 200 {
		t.Fatalf("CONNECT at the cap: %s", resp.Status)
	}
	if got := testutil.ToFloat64(tp.m.pending); got > 10 {
		t.Fatalf("pending gauge %v above the cap", got)
	}
}

// Issue 13 item 3: when the drain begins, connections without a complete head get 503 at once, and
// one whose head arrives during the drain gets no tunnel.
func TestDrainAnswers503ToHeadlessConnections(t *testing.T) {
	up := echoServer(t, "tcp", "127.0.0.1:0")
	d := &recordingDialer{}
	tp := startProxy(t, Config{Upstream: up, HeaderTimeout: 30 * time.Second, Dialer: d})
	idle := openIdle(t, tp.addr, 1)[0]
	partial := openIdle(t, tp.addr, 1)[0]
	io.WriteString(partial, "CONNECT x:443 HTTP/1.1\r\nHost: x")
	waitFor(t, func() bool { return tp.PendingHeads() == 2 })
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		tp.Shutdown(ctx)
	}()
	for name, c := range map[string]net.Conn{"idle": idle, "partial head": partial} {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodConnect})
		if err != nil || resp.StatusCode != http.StatusServiceUnavailable {
			t.Errorf("%s connection during drain: %v %v, want 503", name, resp, err)
		}
	}
	waitFor(t, func() bool { return total(tp, KindConnect, ResultDrainRefused) == 2 })
	if len(d.addrs()) != 0 {
		t.Fatalf("dialed %v during the drain", d.addrs())
	}
}

// Issue 13 item 5: a TCP health probe (connect, close, no byte) is counted but not logged; a client
// that sends something is.
func TestHealthProbesAreNotLogged(t *testing.T) {
	up := echoServer(t, "tcp", "127.0.0.1:0")
	tp := startProxy(t, Config{Upstream: up})
	for i := 0; i < 3; i++ {
		c, err := net.Dial("tcp", tp.addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	waitFor(t, func() bool { return total(tp, KindConnect, ResultNoRequest) == 3 })
	// A probe of a transparent listener too: relayed (to an upstream that is dialed at once), not logged.
	tl, err := Listen(context.Background(), "127.0.0.1:0", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	go tp.ServeTCP(tl)
	c, err := net.Dial("tcp", tl.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	waitFor(t, func() bool { return total(tp, KindTCP, ResultOK)+total(tp, KindTCP, ResultRelayError) == 1 })
	_, _, resp := connect(t, tp.addr, "GET / HTTP/1.1\r\n\r\n")
	resp.Body.Close()
	waitFor(t, func() bool { return total(tp, KindConnect, ResultMethod) == 1 })
	var lines []string
	for _, l := range tp.logs.all() {
		if strings.Contains(l, `"result"=`) {
			lines = append(lines, l)
		}
	}
	if len(lines) != 1 || !strings.Contains(lines[0], `"result"="bad_method"`) {
		t.Fatalf("want one log line (the GET), got %q", lines)
	}
}

// fakeProxy answers every CONNECT with status, and on 2xx echoes like echoServer.
func fakeProxy(t *testing.T, status string) string {
	return testnet.Serve(t, "tcp", "127.0.0.1:0", func(c net.Conn) {
		br := bufio.NewReader(c)
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 "+status+"\r\n\r\n")
		if !strings.HasPrefix(status, "2") {
			return
		}
		io.Copy(c, br)
		io.WriteString(c, "|bye")
		c.(*net.TCPConn).CloseWrite()
		io.Copy(io.Discard, c)
	})
}

// denyAll is an Authenticator that forbids every tunnel.
type denyAll struct{}

func (denyAll) Authenticate(context.Context, *ConnectRequest) (*Identity, error) {
	return nil, &AuthError{Status: http.StatusForbidden, Reason: "test", Identity: &Identity{User: "someone"}}
}
func (denyAll) Challenges() []string { return nil }

// Issue 13 item 4: through --upstream-proxy, any 2xx is a tunnel, and the upstream proxy's refusal
// keeps its meaning (403 stays 403) where our client can act on it.
func TestUpstreamProxyAnswersAreMappedFaithfully(t *testing.T) {
	t.Run("201 is a tunnel", func(t *testing.T) {
		consumer := startProxy(t, Config{Upstream: "kubernetes.default.svc:443", UpstreamProxy: fakeProxy(t, "201 Created")})
		c, br, resp := connect(t, consumer.addr, connectHead("x:443"))
		if resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		assertEchoed(t, c, br, "over-201")
	})
	for answer, want := range map[string]int{
		"403 Forbidden":                     403,
		"503 Service Unavailable":           503,
		"407 Proxy Authentication Required": 502, // credentials we don't have: our gateway failed
		"400 Bad Request":                   502,
	} {
		t.Run(answer, func(t *testing.T) {
			consumer := startProxy(t, Config{Upstream: "kubernetes.default.svc:443", UpstreamProxy: fakeProxy(t, answer)})
			_, _, resp := connect(t, consumer.addr, connectHead("x:443"))
			if resp.StatusCode != want {
				t.Fatalf("upstream proxy answered %s: we answered %d, want %d", answer, resp.StatusCode, want)
			}
			if resp.StatusCode == 407 && resp.Header.Get("Proxy-Authenticate") != "" {
				t.Fatal("passed the upstream's challenge on")
			}
		})
	}
	t.Run("a real second proxy that forbids", func(t *testing.T) {
		provider := startProxy(t, Config{Upstream: echoServer(t, "tcp", "127.0.0.1:0"), Auth: denyAll{}})
		consumer := startProxy(t, Config{Upstream: "kubernetes.default.svc:443", UpstreamProxy: "http://" + provider.addr})
		_, _, resp := connect(t, consumer.addr, connectHead("x:443"))
		if resp.StatusCode != 403 {
			t.Fatalf("status %d, want the provider's 403", resp.StatusCode)
		}
	})
}

// Issue 15 item 1: --allow-source closes other clients before reading, on both listener kinds, and
// counts them.
func TestAllowSource(t *testing.T) {
	up := echoServer(t, "tcp", "127.0.0.1:0")
	sl, err := ParseSourceList([]string{"127.0.0.2/32", "fd00::/8"})
	if err != nil {
		t.Fatal(err)
	}
	tp := startProxy(t, Config{Upstream: up, AllowSources: sl})
	from := func(src string) *net.Dialer {
		return &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	}
	// Allowed: 127.0.0.2.
	c, err := from("127.0.0.2").Dial("tcp", tp.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, connectHead("x:443"))
	if resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodConnect}); err != nil || resp.StatusCode != 200 {
		t.Fatalf("from 127.0.0.2: %v %v", resp, err)
	}
	// Refused: 127.0.0.1, closed without an answer.
	refusedAnswer := func(d *net.Dialer, addr string) {
		t.Helper()
		c, err := d.Dial("tcp", addr)
		if err != nil {
			return // refused even earlier: fine
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c, connectHead("x:443"))
		if b, err := io.ReadAll(c); len(b) != 0 || isTimeout(err) {
			t.Fatalf("refused source got %q %v", b, err)
		}
	}
	refusedAnswer(from("127.0.0.1"), tp.addr)
	waitFor(t, func() bool { return testutil.ToFloat64(tp.m.refused.WithLabelValues(KindConnect)) == 1 })

	// The transparent listener obeys it too.
	tl, err := Listen(context.Background(), "127.0.0.1:0", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	go tp.ServeTCP(tl)
	refusedAnswer(from("127.0.0.1"), tl.Addr().String())
	waitFor(t, func() bool { return testutil.ToFloat64(tp.m.refused.WithLabelValues(KindTCP)) == 1 })
	c2, err := from("127.0.0.2").Dial("tcp", tl.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	io.WriteString(c2, "raw")
	c2.(*net.TCPConn).CloseWrite()
	c2.SetReadDeadline(time.Now().Add(10 * time.Second))
	if got, _ := io.ReadAll(c2); string(got) != "raw|bye" {
		t.Fatalf("transparent from 127.0.0.2: %q", got)
	}

	// The log line is rate-bounded: many refusals, one line.
	for i := 0; i < 20; i++ {
		refusedAnswer(from("127.0.0.1"), tp.addr)
	}
	n := 0
	for _, l := range tp.logs.all() {
		if strings.Contains(l, "allow-source") {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d log lines for 22 refusals, want 1 per interval", n)
	}

	// IPv6: ::1 is outside fd00::/8.
	if l6, err := net.Listen("tcp", "[::1]:0"); err == nil {
		l6.Close()
		tp6 := startProxyOn(t, "[::1]:0", Config{Upstream: up, AllowSources: sl})
		refusedAnswer(&net.Dialer{}, tp6.addr)
		waitFor(t, func() bool { return testutil.ToFloat64(tp6.m.refused.WithLabelValues(KindConnect)) == 1 })
		sl6, _ := ParseSourceList([]string{"::1"})
		tp6ok := startProxyOn(t, "[::1]:0", Config{Upstream: up, AllowSources: sl6})
		if _, _, resp := connect(t, tp6ok.addr, connectHead("x:443")); resp.StatusCode != 200 {
			t.Fatalf("from ::1 with --allow-source ::1: %s", resp.Status)
		}
	} else {
		t.Logf("IPv6 part skipped: %v", err)
	}
}

func TestParseSourceList(t *testing.T) {
	for in, msg := range map[string]string{
		"10.0.0.0/33":         "bad CIDR",
		"nope":                "want a CIDR",
		"fe80::1%eth0":        "want a CIDR",
		"::ffff:0:0/80":       "shorter than /96",
		"::ffff:10.0.0.0/104": "",
	} {
		_, err := ParseSourceList([]string{in})
		if (msg == "") != (err == nil) || (err != nil && (!strings.Contains(err.Error(), msg) || !strings.Contains(err.Error(), in))) {
			t.Errorf("%q: got %v, want %q", in, err, msg)
		}
	}
	sl, _ := ParseSourceList([]string{"::ffff:10.0.0.0/104", "192.0.2.7"})
	for addr, want := range map[string]bool{"10.1.2.3": true, "::ffff:10.1.2.3": true, "11.0.0.1": false, "192.0.2.7": true, "192.0.2.8": false} {
		if got := sl.Allows(&net.TCPAddr{IP: net.ParseIP(addr)}); got != want {
			t.Errorf("Allows(%s) = %v", addr, got)
		}
	}
}

// allowAs is an Authenticator that lets everyone through as one identity.
type allowAs struct{ id Identity }

func (a allowAs) Authenticate(context.Context, *ConnectRequest) (*Identity, error) { return &a.id, nil }
func (allowAs) Challenges() []string                                               { return nil }

type syncBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// Issue 15 item 5: one audit record per tunnel with its identity, bytes and end; probes get none.
func TestAuditRecordPerTunnel(t *testing.T) {
	up := echoServer(t, "tcp", "127.0.0.1:0")
	var buf syncBuf
	tp := startProxy(t, Config{Upstream: up, Audit: NewAuditLog(&buf),
		Auth: allowAs{Identity{User: "system:serviceaccount:ns:sa", Groups: []string{"system:serviceaccounts"}}}})
	probe, _ := net.Dial("tcp", tp.addr)
	probe.Close()
	c, br, resp := connect(t, tp.addr, connectHead("kubernetes.default.svc:443"))
	if resp.StatusCode != 200 {
		t.Fatal(resp.Status)
	}
	io.WriteString(c, "12345")
	c.(*net.TCPConn).CloseWrite()
	io.ReadAll(br)
	waitFor(t, func() bool {
		return total(tp, KindConnect, ResultOK) == 1 && total(tp, KindConnect, ResultNoRequest) == 1
	})
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 1 {
		t.Fatalf("want one record, got %q", lines)
	}
	var r AuditRecord
	if err := json.Unmarshal([]byte(lines[0]), &r); err != nil {
		t.Fatal(err)
	}
	if r.ID == "" || r.User != "system:serviceaccount:ns:sa" || len(r.Groups) != 1 || r.Auth != AuthAllowed ||
		r.Authority != "kubernetes.default.svc:443" || r.Dialed != up || r.BytesUp != 5 || r.BytesDown != 9 ||
		r.End != ResultOK || r.Status != 200 || !strings.HasPrefix(r.Source, "127.0.0.1:") || r.Duration <= 0 {
		t.Fatalf("record %+v", r)
	}
	if got := testutil.ToFloat64(tp.m.auth.WithLabelValues(AuthAllowed)); got != 1 {
		t.Fatalf("auth allowed counter %v", got)
	}
}

// gatedAuth lets the token "good" through at once and holds every other token's review until the
// review's context ends, like a TokenReview the API server does not answer.
type gatedAuth struct{ held atomic.Int32 }

func (g *gatedAuth) Authenticate(ctx context.Context, req *ConnectRequest) (*Identity, error) {
	if req.Header.Get("Proxy-Authorization") == "Bearer good" {
		return &Identity{User: "good"}, nil
	}
	g.held.Add(1)
	defer g.held.Add(-1)
	<-ctx.Done()
	return nil, ctx.Err()
}
func (*gatedAuth) Challenges() []string { return nil }

func authHead(authority, token string) string {
	return "CONNECT " + authority + " HTTP/1.1\r\nHost: " + authority + "\r\nProxy-Authorization: Bearer " + token + "\r\n\r\n"
}

// Issue 24 item 1: clients whose reviews hang don't hold tunnel slots, so with every slot's worth
// of made-up tokens pending (and more), a client with a valid token still gets its tunnel.
func TestPendingReviewsHoldNoTunnelSlot(t *testing.T) {
	up := echoServer(t, "tcp", "127.0.0.1:0")
	auth := &gatedAuth{}
	tp := startProxy(t, Config{Upstream: up, MaxTunnels: 2, Auth: auth, AuthTimeout: time.Minute})
	const flood = 6
	for i := 0; i < flood; i++ {
		c, err := net.Dial("tcp", tp.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		io.WriteString(c, authHead("kubernetes.default.svc:443", "made-up-"+string(rune('a'+i))))
	}
	for deadline := time.Now().Add(5 * time.Second); auth.held.Load() != flood; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d made-up-token reviews pending, the others refused: pending reviews hold tunnel slots", auth.held.Load(), flood)
		}
	}
	c, br, resp := connect(t, tp.addr, authHead("kubernetes.default.svc:443", "good"))
	if resp.StatusCode != 200 {
		t.Fatalf("valid token with %d reviews pending and --max-tunnels 2: %s, want 200", flood, resp.Status)
	}
	assertEchoed(t, c, br, "through")
	if n := auth.held.Load(); n != flood {
		t.Fatalf("%d reviews pending, want %d still", n, flood)
	}
}

// Issue 24 item 4: a shutdown whose grace period runs out cancels the reviews and dials still
// pending (their own timeouts are far longer), closes their connections and returns within the
// grace period and a second.
func TestForcedShutdownCancelsReviewsAndDials(t *testing.T) {
	auth := &gatedAuth{}
	d := &recordingDialer{block: make(chan struct{})}
	tp := startProxy(t, Config{Upstream: "127.0.0.1:6443", Dialer: d, Auth: auth,
		AuthTimeout: time.Minute, DialTimeout: time.Minute})
	review, err := net.Dial("tcp", tp.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer review.Close()
	io.WriteString(review, authHead("kubernetes.default.svc:443", "made-up"))
	dial, err := net.Dial("tcp", tp.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer dial.Close()
	io.WriteString(dial, authHead("kubernetes.default.svc:443", "good"))
	waitFor(t, func() bool { return auth.held.Load() == 1 && len(d.addrs()) == 1 })

	const grace = 300 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	start := time.Now()
	err = tp.Shutdown(ctx)
	if took := time.Since(start); took > grace+time.Second {
		t.Fatalf("Shutdown took %s with a %s grace period, want at most a second more", took, grace)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown: %v, want the grace period to run out", err)
	}
	for name, c := range map[string]net.Conn{"pending review": review, "pending dial": dial} {
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := io.ReadAll(c); isTimeout(err) {
			t.Errorf("%s: connection still open after Shutdown", name)
		}
	}
	waitFor(t, func() bool { return total(tp, KindConnect, ResultDrained) == 2 })
}
