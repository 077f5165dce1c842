// Package testnet holds small networking helpers for tests: loopback servers that stop with the test,
// and a buffer that a process may write to while the test reads it. It has no heavy dependencies, so
// low-level packages can use it in their tests.
package testnet

import (
	"bytes"
	"net"
	"sync"
	"testing"
)

// Serve listens on network/addr (a loopback or test-namespace address: never anything else), runs
// handle for every accepted connection on its own goroutine, closes the connection when handle
// returns, and stops listening when the test ends. It returns the bound address.
func Serve(t testing.TB, network, addr string, handle func(net.Conn)) string {
	t.Helper()
	l, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
	return l.Addr().String()
}

// SyncBuffer collects a process's output while the test may read it.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String is what was written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
