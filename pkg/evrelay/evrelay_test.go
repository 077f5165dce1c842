//go:build linux

package evrelay

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"testing"
	"time"

	"github.com/apiproxy/apiproxy/pkg/tunnel"
)

// pair returns both ends of a loopback TCP connection.
func pair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	return c, s
}

// A tunnel moves 8 MiB each way with half-closes passed on, and reports the byte counts.
func TestRelayBulkAndHalfClose(t *testing.T) {
	client, a := pair(t)
	b, server := pair(t)
	res := make(chan tunnel.RelayResult, 1)
	tn, err := New(a, b, tunnel.RelayOptions{}, func(r tunnel.RelayResult) { res <- r })
	if err != nil {
		t.Fatal(err)
	}
	tn.Run()
	up := make([]byte, 8<<20)
	rand.Read(up)
	// The server echoes everything back, then closes its write side on EOF.
	go func() {
		io.Copy(server, server)
		server.(*net.TCPConn).CloseWrite()
	}()
	go func() {
		client.Write(up)
		client.(*net.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(client)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, up) {
		t.Fatalf("echo differs: got %d bytes, want %d", len(got), len(up))
	}
	select {
	case r := <-res:
		if r.Err != nil || r.AToB != int64(len(up)) || r.BToA != int64(len(up)) {
			t.Fatalf("result %+v", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no result")
	}
}

// Close cuts a running tunnel: both ends see it closed and done reports Closed.
func TestClose(t *testing.T) {
	client, a := pair(t)
	b, server := pair(t)
	res := make(chan tunnel.RelayResult, 1)
	tn, err := New(a, b, tunnel.RelayOptions{}, func(r tunnel.RelayResult) { res <- r })
	if err != nil {
		t.Fatal(err)
	}
	tn.Run()
	tn.Close()
	if r := <-res; !r.Closed {
		t.Fatalf("result %+v", r)
	}
	for _, c := range []net.Conn{client, server} {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := c.Read(make([]byte, 1)); err == nil {
			t.Fatalf("read %d bytes from a closed tunnel", n)
		}
	}
}
