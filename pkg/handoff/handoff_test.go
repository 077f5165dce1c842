package handoff

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"
)

func bind(ctx context.Context, addr string) (net.Listener, error) {
	var lc net.ListenConfig
	return lc.Listen(ctx, "tcp", addr)
}

// freeAddr is a loopback address with a port nobody listens on now.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// join is one agent starting: Open, Listen on addrs, Serve.
func join(t *testing.T, dir, name string, addrs ...string) (*Dir, []net.Listener, []Source) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d, err := Open(ctx, dir, name, logr.Discard())
	if err != nil {
		t.Fatal(err)
	}
	var ls []net.Listener
	var srcs []Source
	for _, a := range addrs {
		sock, err := d.Listen(ctx, a, bind)
		if err != nil {
			d.Close()
			t.Fatalf("%s: Listen %s: %v", name, a, err)
		}
		l, err := sock.Listener()
		if err != nil {
			d.Close()
			t.Fatalf("%s: Listener %s: %v", name, a, err)
		}
		ls, srcs = append(ls, l), append(srcs, sock.Source)
	}
	if err := d.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.Close()
		for _, l := range ls {
			l.Close()
		}
	})
	return d, ls, srcs
}

// The mechanism itself: a second agent takes over the first one's socket (the same accept queue),
// so connections that wait in the queue when the first agent stops (closes its listener without
// accepting them) are accepted by the second, none reset. With two separately bound sockets
// (SO_REUSEPORT without tcp_migrate_req), the queued ones would be reset.
func TestQueuedConnectionsSurviveTheOldAgent(t *testing.T) {
	dir := t.TempDir()
	addr := freeAddr(t)
	oldDir, oldLs, srcs := join(t, dir, "old", addr)
	if srcs[0] != Bound {
		t.Fatalf("first agent: source %s, want %s", srcs[0], Bound)
	}
	_, newLs, srcs := join(t, dir, "new", addr)
	if srcs[0] != TakenOver {
		t.Fatalf("second agent: source %s, want %s", srcs[0], TakenOver)
	}

	// Nobody accepts yet: the handshakes complete into the (shared) queue.
	const n = 50
	conns := make([]net.Conn, n)
	for i := range conns {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		defer c.Close()
		if _, err := fmt.Fprintf(c, "%d\n", i); err != nil {
			t.Fatal(err)
		}
		conns[i] = c
	}
	// The old agent stops as the proxy does: first no more offers, then its listener closes.
	oldDir.Close()
	oldLs[0].Close()

	got := make(chan error, n)
	go func() {
		for range n {
			c, err := newLs[0].Accept()
			if err != nil {
				got <- err
				return
			}
			go func() {
				defer c.Close()
				b := make([]byte, 8)
				k, err := c.Read(b)
				if err == nil {
					_, err = c.Write(b[:k])
				}
				got <- err
			}()
		}
	}()
	for range n {
		if err := <-got; err != nil {
			t.Fatalf("the new agent lost a queued connection: %v", err)
		}
	}
	for i, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		b := make([]byte, 8)
		if k, err := c.Read(b); err != nil || string(b[:k]) != fmt.Sprintf("%d\n", i) {
			t.Errorf("connection %d: echo %q, %v (reset by the old agent's close?)", i, b[:k], err)
		}
	}
}

// Agents starting at the same moment take turns (the lock): one binds, the others take over, and
// none fails with "address in use".
func TestConcurrentStartsShareOneSocket(t *testing.T) {
	dir := t.TempDir()
	addr := freeAddr(t)
	var wg sync.WaitGroup
	srcs := make([]Source, 4)
	for i := range srcs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, s := join(t, dir, fmt.Sprintf("a%d", i), addr)
			srcs[i] = s[0]
		}()
	}
	wg.Wait()
	bound := 0
	for _, s := range srcs {
		if s == Bound {
			bound++
		}
	}
	if bound != 1 {
		t.Errorf("sources %v: want exactly one agent to bind", srcs)
	}
}

// A killed agent leaves its socket file: the next one finds nobody behind it, removes it and
// binds; an address no peer offers is bound; a peer that holds another address is no obstacle.
func TestStaleSocketAndUnknownAddresses(t *testing.T) {
	dir := t.TempDir()
	stale := filepath.Join(dir, "proxy-dead.sock")
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: stale, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	a1, a2 := freeAddr(t), freeAddr(t)
	_, _, srcs := join(t, dir, "first", a1)
	if srcs[0] != Bound {
		t.Errorf("source %s, want %s", srcs[0], Bound)
	}
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale socket file still there: %v", err)
	}
	_, ls, srcs := join(t, dir, "second", a1, a2)
	if srcs[0] != TakenOver || srcs[1] != Bound {
		t.Errorf("sources %v, want [%s %s]", srcs, TakenOver, Bound)
	}
	if ls[1].Addr().String() != a2 {
		t.Errorf("bound %s, want %s", ls[1].Addr(), a2)
	}
}

// An address held by a process outside the directory: the error says so.
func TestAddressHeldOutside(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	d, err := Open(context.Background(), t.TempDir(), "x", logr.Discard())
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	_, err = d.Listen(context.Background(), l.Addr().String(), bind)
	if !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("err = %v, want address in use", err)
	}
	if want := "does not share it"; !strings.Contains(err.Error(), want) {
		t.Errorf("err = %v, want it to say %q", err, want)
	}
}

// One agent at a time has the turn to accept on an address; the next one gets it when the first
// gives it back or dies (its lock file descriptor closes), in a moment, and a wait ends with ctx.
func TestTurns(t *testing.T) {
	dir := t.TempDir()
	addr := freeAddr(t)
	a, _, _ := join(t, dir, "a", addr)
	b, _, _ := join(t, dir, "b", addr)
	releaseA, err := a.Turn(context.Background(), addr)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan func(), 1)
	go func() {
		release, err := b.Turn(context.Background(), addr)
		if err != nil {
			t.Error(err)
		}
		got <- release
	}()
	select {
	case <-got:
		t.Fatal("b got the turn while a holds it")
	case <-time.After(200 * time.Millisecond):
	}
	// Another address is independent.
	other := freeAddr(t)
	if r, err := b.Turn(context.Background(), other); err != nil {
		t.Fatal(err)
	} else {
		r()
	}
	released := time.Now()
	releaseA()
	select {
	case releaseB := <-got:
		t.Logf("b got the turn %s after a gave it back", time.Since(released))
		defer releaseB()
	case <-time.After(5 * time.Second):
		t.Fatal("b did not get the turn after a gave it back")
	}
	// A wait that ends with its context.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := a.Turn(ctx, addr); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("a's second wait: %v, want the deadline", err)
	}
}
