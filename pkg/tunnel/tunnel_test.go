package tunnel

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/apiproxy/apiproxy/pkg/gopool"
	"github.com/apiproxy/apiproxy/test/testnet"
)

// fakeProxy answers each CONNECT with answer (raw bytes) and then echoes.
func fakeProxy(t *testing.T, answer string, gotReq chan<- *http.Request) string {
	t.Helper()
	return testnet.Serve(t, "tcp", "127.0.0.1:0", func(c net.Conn) {
		br := bufio.NewReader(c)
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		if gotReq != nil {
			gotReq <- req
		}
		if answer == "" {
			time.Sleep(5 * time.Second) // never answers
			return
		}
		io.WriteString(c, answer)
		io.Copy(c, br)
	})
}

func TestDialConnectKeepsBytesAfterResponse(t *testing.T) {
	reqs := make(chan *http.Request, 1)
	addr := fakeProxy(t, "HTTP/1.1 200 Connection established\r\n\r\nearly-bytes", reqs)
	c, err := DialConnect(context.Background(), "http://"+addr, "kubernetes.default.svc:443")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := <-reqs
	if r.Method != http.MethodConnect || r.RequestURI != "kubernetes.default.svc:443" || r.Host != "kubernetes.default.svc:443" {
		t.Fatalf("proxy got %s %s host %s", r.Method, r.RequestURI, r.Host)
	}
	buf := make([]byte, len("early-bytes"))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "early-bytes" {
		t.Fatalf("bytes after the 200: %q %v", buf, err)
	}
	// The tunnel then carries bytes both ways (the fake proxy echoes).
	io.WriteString(c, "ping")
	buf = make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo: %q %v", buf, err)
	}
	if _, ok := c.(interface{ CloseWrite() error }); !ok {
		t.Fatal("the tunnel conn must support CloseWrite for half-close")
	}
}

func TestDialConnectReturnsPlainTCPConnWithoutLeftover(t *testing.T) {
	addr := fakeProxy(t, "HTTP/1.1 200 OK\r\n\r\n", nil)
	c, err := DialConnect(context.Background(), addr, "127.0.0.1:443")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, ok := c.(*net.TCPConn); !ok {
		t.Fatalf("got %T, want *net.TCPConn so that relays can splice", c)
	}
}

func TestDialConnectNon200IsTypedError(t *testing.T) {
	addr := fakeProxy(t, "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 4\r\n\r\nnope", nil)
	_, err := DialConnect(context.Background(), addr, "10.1.2.3:443")
	var ce *ConnectError
	if !errors.As(err, &ce) {
		t.Fatalf("want *ConnectError, got %T %v", err, err)
	}
	if ce.StatusCode != 502 || ce.Proxy != addr || ce.Target != "10.1.2.3:443" || !strings.Contains(err.Error(), addr) {
		t.Fatalf("unexpected error %+v: %v", ce, err)
	}
}

func TestDialConnectHandshakeTimeoutNamesProxy(t *testing.T) {
	addr := fakeProxy(t, "", nil)
	start := time.Now()
	_, err := (&Dialer{Proxy: addr, Timeout: 200 * time.Millisecond}).DialContext(context.Background(), "tcp", "x:1")
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), addr) {
		t.Fatalf("want deadline error naming %s, got %v", addr, err)
	}
	if time.Since(start) > 4*time.Second {
		t.Fatal("timeout not honoured")
	}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	if _, err := DialConnect(ctx, addr, "x:1"); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancel: want context.Canceled, got %v", err)
	}
}

func TestDialConnectRefusedNamesProxy(t *testing.T) {
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	_, err := DialConnect(context.Background(), addr, "x:1")
	if err == nil || !strings.Contains(err.Error(), "dial proxy "+addr) {
		t.Fatalf("got %v", err)
	}
}

func TestProxyHostPort(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1:8118": "127.0.0.1:8118", "http://127.0.0.1:8118": "127.0.0.1:8118",
		"http://[::1]:8118/": "[::1]:8118", "http://proxy.local": "proxy.local:80",
	} {
		if got, err := ProxyHostPort(in); err != nil || got != want {
			t.Errorf("%q: got %q %v, want %q", in, got, err, want)
		}
	}
	for in, msg := range map[string]string{
		"https://p:443": "scheme \"https\" is not supported", "http://p:1/x": "no path",
		"p": "want HOST:PORT", "http://%zz": "invalid proxy URL",
	} {
		if _, err := ProxyHostPort(in); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("%q: got %v, want error containing %q", in, err, msg)
		}
	}
}

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ch := make(chan net.Conn, 1)
	go func() { c, _ := l.Accept(); ch <- c }()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-ch
	t.Cleanup(func() { c.Close(); s.Close() })
	return c, s
}

// relayed sets up client ⇄ [relay] ⇄ server over TCP and returns the outer ends.
func relayed(t *testing.T, opts RelayOptions) (client, server net.Conn, done <-chan RelayResult) {
	client, a := tcpPair(t)
	b, server := tcpPair(t)
	ch := make(chan RelayResult, 1)
	go func() { ch <- Relay(a, b, opts) }()
	return client, server, ch
}

func TestRelayBulkBothWaysAndHalfClose(t *testing.T) {
	client, server, done := relayed(t, RelayOptions{})
	up := make([]byte, 3<<20)
	down := make([]byte, 2<<20)
	rand.Read(up)
	rand.Read(down)
	var wg sync.WaitGroup
	var gotUp, gotDown []byte
	wg.Add(2)
	go func() {
		defer wg.Done()
		client.Write(up)
		client.(*net.TCPConn).CloseWrite() // client done sending, still reading
		gotDown, _ = io.ReadAll(client)
	}()
	go func() {
		defer wg.Done()
		gotUp, _ = io.ReadAll(server) // EOF arrives through the relay's CloseWrite
		// After the client's half-close the server can still answer.
		server.Write(down)
		server.(*net.TCPConn).CloseWrite()
	}()
	wg.Wait()
	if !bytes.Equal(gotUp, up) || !bytes.Equal(gotDown, down) {
		t.Fatalf("corrupted relay: up %d/%d down %d/%d bytes", len(gotUp), len(up), len(gotDown), len(down))
	}
	res := <-done
	if res.Err != nil || res.AToB != int64(len(up)) || res.BToA != int64(len(down)) {
		t.Fatalf("result %+v", res)
	}
}

func TestRelayReplaysBufferedConnBytes(t *testing.T) {
	client, a := tcpPair(t)
	b, server := tcpPair(t)
	done := make(chan RelayResult, 1)
	go func() { done <- Relay(a, &bufferedConn{Conn: b, buf: []byte("from-proxy-")}, RelayOptions{}) }()
	server.Write([]byte("then-server"))
	server.(*net.TCPConn).CloseWrite()
	client.(*net.TCPConn).CloseWrite()
	got, _ := io.ReadAll(client)
	if string(got) != "from-proxy-then-server" {
		t.Fatalf("got %q", got)
	}
	if res := <-done; res.BToA != int64(len(got)) {
		t.Fatalf("counted %d", res.BToA)
	}
}

func TestRelayNonTCPFallsBackToBuffers(t *testing.T) {
	client, a := net.Pipe()
	b, server := net.Pipe()
	done := make(chan RelayResult, 1)
	go func() { done <- Relay(a, b, RelayOptions{}) }()
	go func() { client.Write([]byte("hello")); client.Close() }()
	got, _ := io.ReadAll(server)
	if string(got) != "hello" {
		t.Fatalf("got %q", got)
	}
	select {
	case res := <-done:
		if res.AToB != 5 {
			t.Fatalf("%+v", res)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("relay did not end after a full close on a conn without CloseWrite")
	}
}

func TestRelayIdleTimeout(t *testing.T) {
	client, server, done := relayed(t, RelayOptions{IdleTimeout: 600 * time.Millisecond})
	// Traffic in one direction only keeps the tunnel alive in both.
	for i := 0; i < 4; i++ {
		server.Write([]byte("x"))
		buf := make([]byte, 1)
		if _, err := io.ReadFull(client, buf); err != nil {
			t.Fatal(err)
		}
		time.Sleep(150 * time.Millisecond)
	}
	select {
	case <-done:
		t.Fatal("closed while bytes were flowing one way")
	default:
	}
	select {
	case res := <-done:
		if !res.Idle || res.Err != nil {
			t.Fatalf("want idle result, got %+v", res)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("idle tunnel not closed")
	}
	if _, err := client.Read(make([]byte, 1)); err == nil {
		t.Fatal("client side still open")
	}
}

func TestRelayAbortsBothOnReset(t *testing.T) {
	client, server, done := relayed(t, RelayOptions{})
	client.(*net.TCPConn).SetLinger(0)
	client.Close() // RST
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("relay hangs after a reset")
	}
	server.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := server.Read(make([]byte, 1)); err == nil {
		t.Fatal("server side not closed")
	}
}

func TestParkedRelayBulkHalfCloseAndReset(t *testing.T) {
	// The same behaviour with idle directions parked on epoll instead of a goroutine.
	client, a := tcpPair(t)
	b, server := tcpPair(t)
	done := make(chan RelayResult, 1)
	Start(a, b, RelayOptions{ParkIdle: true}, func(r RelayResult) { done <- r })
	up := make([]byte, 2<<20)
	rand.Read(up)
	go func() {
		time.Sleep(50 * time.Millisecond) // let the directions park first
		client.Write(up)
		client.(*net.TCPConn).CloseWrite()
	}()
	got, _ := io.ReadAll(server)
	if !bytes.Equal(got, up) {
		t.Fatalf("relayed %d of %d bytes, or corrupted", len(got), len(up))
	}
	server.Write([]byte("late answer"))
	server.(*net.TCPConn).CloseWrite()
	back, _ := io.ReadAll(client)
	if string(back) != "late answer" {
		t.Fatalf("got %q", back)
	}
	if res := <-done; res.Err != nil || res.AToB != int64(len(up)) || res.BToA != 11 {
		t.Fatalf("%+v", res)
	}
}

func TestParkedIdleTunnelsHoldNoGoroutine(t *testing.T) {
	const n = gopool.MaxIdle + 50
	before := runtime.NumGoroutine()
	var tunnels []*Tunnel
	var clients []net.Conn
	done := make(chan RelayResult, n)
	for i := 0; i < n; i++ {
		client, a := tcpPair(t)
		b, server := tcpPair(t)
		tunnels = append(tunnels, Start(a, b, RelayOptions{ParkIdle: true}, func(r RelayResult) { done <- r }))
		clients = append(clients, client)
		// One byte each way, then idle.
		client.Write([]byte{1})
		server.Read(make([]byte, 1))
		server.Write([]byte{2})
		client.Read(make([]byte, 1))
	}
	// Goroutines that relayed and now wait in gopool for more work are not the tunnels': the pool
	// keeps at most gopool.MaxIdle of them whatever the number of tunnels.
	held := func() int { return runtime.NumGoroutine() - before - gopool.Idle() }
	deadline := time.Now().Add(5 * time.Second)
	for held() > 5 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if extra := held(); extra > 5 {
		t.Fatalf("%d idle tunnels hold %d goroutines (besides %d idle in the pool)", n, extra, gopool.Idle())
	}
	// Close cuts parked tunnels: done is reported and the peers see the close.
	for _, tn := range tunnels {
		tn.Close()
	}
	for i := 0; i < n; i++ {
		select {
		case res := <-done:
			if !res.Closed {
				t.Fatalf("%+v", res)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("only %d of %d closed tunnels reported", i, n)
		}
	}
	clients[0].SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := clients[0].Read(make([]byte, 1)); err == nil {
		t.Fatal("client still connected")
	}
}

// The direction that ends last closes its destination without a shutdown(SHUT_WR) of its own: the
// peer must still see a clean EOF after every byte (a FIN, not a reset), whichever side ends first.
func TestRelayLastDirectionEndsWithCleanEOF(t *testing.T) {
	for _, park := range []bool{false, true} {
		for _, clientFirst := range []bool{true, false} {
			client, server, done := relayed(t, RelayOptions{ParkIdle: park})
			first, second := server, client
			if clientFirst {
				first, second = client, server
			}
			// first sends and half-closes; second reads it all, answers and half-closes; first then
			// reads the answer and an EOF delivered by the relay's final Close.
			first.Write([]byte("question"))
			first.(*net.TCPConn).CloseWrite()
			second.SetReadDeadline(time.Now().Add(5 * time.Second))
			got, err := io.ReadAll(second)
			if err != nil || string(got) != "question" {
				t.Fatalf("park=%v clientFirst=%v: second got %q, %v", park, clientFirst, got, err)
			}
			second.Write([]byte("answer"))
			second.(*net.TCPConn).CloseWrite()
			first.SetReadDeadline(time.Now().Add(5 * time.Second))
			back, err := io.ReadAll(first)
			if err != nil || string(back) != "answer" {
				t.Fatalf("park=%v clientFirst=%v: first got %q, %v (want a clean EOF)", park, clientFirst, back, err)
			}
			if res := <-done; res.Err != nil {
				t.Fatalf("park=%v clientFirst=%v: %+v", park, clientFirst, res)
			}
		}
	}
}
