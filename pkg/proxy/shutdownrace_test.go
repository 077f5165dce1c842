package proxy

import (
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// lateListener hands out its first connection only once Close has been called: the moment an
// accept loop took a connection off a shared queue (--handoff-dir) just as Shutdown began.
type lateListener struct {
	net.Listener
	closed   chan struct{}
	once     sync.Once
	accepted bool
}

func (l *lateListener) Accept() (net.Conn, error) {
	if !l.accepted {
		l.accepted = true
		<-l.closed
		return l.Listener.Accept() // the connection already waiting in the queue
	}
	return nil, net.ErrClosed
}

func (l *lateListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil // the real listener stays open until the test ends: its queued connection is taken above
}

// A connection an accept loop took as Shutdown closed the listeners is served, not dropped: with
// sockets shared between agents no other agent can accept it any more, so dropping it reset the
// client (seen on the real node as one failed request in a DaemonSet rollout).
func TestShutdownServesTheConnectionsAlreadyAccepted(t *testing.T) {
	up := echoServer(t, "tcp", "127.0.0.1:0")
	tp := startProxy(t, Config{Upstream: up})
	real, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer real.Close()
	ll := &lateListener{Listener: real, closed: make(chan struct{})}
	served := make(chan error, 1)
	go func() { served <- tp.ServeTCP(ll) }()
	waitFor(t, func() bool { return tp.Active() == 0 && tp.Ready() == nil })

	c, err := net.Dial("tcp", real.Addr().String()) // queued, not yet accepted
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	shut := make(chan error, 1)
	go func() { shut <- tp.Shutdown(ctx) }()

	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "ping"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("the connection accepted during Shutdown: echo %q, %v (want it relayed, not dropped)", buf, err)
	}
	c.(*net.TCPConn).CloseWrite()
	_, _ = io.Copy(io.Discard, c)
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if err := <-served; err != ErrServerClosed {
		t.Errorf("ServeTCP returned %v, want ErrServerClosed", err)
	}
}
