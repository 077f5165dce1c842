package connect

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"
)

// failingListener hands out the connections of a real loopback listener, then fails the way an
// exhausted process does (EMFILE) once failAfter connections were accepted and fail is closed.
type failingListener struct {
	net.Listener
	failAfter int
	fail      chan struct{}

	mu       sync.Mutex
	accepted int
	closed   chan struct{}
	once     sync.Once
}

var errTooManyFiles = errors.New("accept: too many open files")

func (l *failingListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	n := l.accepted
	l.accepted++
	l.mu.Unlock()
	if n >= l.failAfter {
		<-l.fail
		return nil, errTooManyFiles
	}
	return l.Listener.Accept()
}

func (l *failingListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

// One accept error ends Serve with that error while a long-lived tunnel is open, closes the
// listener, and closes the open tunnel (before the fix, Serve waited for every tunnel to end first).
func TestForwarderServeReturnsAcceptError(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &failingListener{Listener: inner, failAfter: 1, fail: make(chan struct{}), closed: make(chan struct{})}

	// The "API server" side of the tunnel: a loopback peer that never closes (like a watch).
	upstream, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer upstream.Close()
	upstreamConns := make(chan net.Conn, 1)
	go func() {
		c, err := upstream.Accept()
		if err == nil {
			upstreamConns <- c
		}
	}()
	f := &Forwarder{Listener: l, Dial: func(ctx context.Context) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "tcp", upstream.Addr().String())
	}}
	served := make(chan error, 1)
	go func() { served <- f.Serve(context.Background()) }()

	client, err := net.Dial("tcp", inner.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	var up net.Conn
	select {
	case up = <-upstreamConns:
		defer up.Close()
	case <-time.After(30 * time.Second):
		t.Fatal("the tunnel was not opened")
	}

	// The next Accept fails: Serve must end now, not when the watch ends.
	close(l.fail)
	select {
	case err := <-served:
		if !errors.Is(err, errTooManyFiles) {
			t.Fatalf("Serve returned %v, want the accept error", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Serve hangs after an accept error while a tunnel is open")
	}
	select {
	case <-l.closed:
	default:
		t.Fatal("the listener was not closed")
	}
	// The open tunnel was closed: its client reads EOF (or a reset).
	_ = client.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := client.Read(make([]byte, 1)); err == nil {
		t.Fatal("the tunnel stayed open after Serve returned")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("the tunnel stayed open after Serve returned")
	}
}
