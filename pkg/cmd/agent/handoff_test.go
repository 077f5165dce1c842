package agent

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/apiproxy/apiproxy/pkg/health"
	"github.com/apiproxy/apiproxy/test/harness"
	"github.com/apiproxy/apiproxy/test/testnet"
)

// dialLoop opens a new connection to addr every few milliseconds, sends a line and reads its echo,
// until stop; it records each failure with the attempt's start and end.
type dialLoop struct {
	stop chan struct{}
	wg   sync.WaitGroup
	mu   sync.Mutex
	ok   int
	fail []attempt
}

type attempt struct {
	start, end time.Time
	err        error
}

func startDialLoop(addr string) *dialLoop {
	l := &dialLoop{stop: make(chan struct{})}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		for i := 0; ; i++ {
			select {
			case <-l.stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			a := attempt{start: time.Now()}
			a.err = echoOnce(addr, fmt.Sprintf("ping %d\n", i))
			a.end = time.Now()
			l.mu.Lock()
			if a.err != nil {
				l.fail = append(l.fail, a)
			} else {
				l.ok++
			}
			l.mu.Unlock()
		}
	}()
	return l
}

func echoOnce(addr, msg string) error {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	b := make([]byte, len(msg))
	if _, err := io.ReadFull(c, b); err != nil {
		return err
	}
	if string(b) != msg {
		return fmt.Errorf("echo %q, want %q", b, msg)
	}
	return nil
}

func (l *dialLoop) halt() (ok int, fail []attempt) {
	close(l.stop)
	l.wg.Wait()
	return l.ok, l.fail
}

// Two `agent proxy --handoff-dir` processes hold one transparent listener: the second takes the
// first one's socket over. A kill -9 of either loses only the connections it was serving (none here
// outside the instant of the kill), and a third agent replacing the survivor (start, then SIGTERM
// to the old one, as a surge rollout does) loses none. The probe command reads each one's health
// socket. Without the shared socket the second process could not even bind.
func TestProxyProcessesShareListeners(t *testing.T) {
	upstream := testnet.Serve(t, "tcp", "127.0.0.1:0", func(c net.Conn) { _, _ = io.Copy(c, c) })
	listen := freeAddr(t, "127.0.0.1")
	dir, sockets := t.TempDir(), t.TempDir()
	// Each agent is started and waited for through its own health socket (the address answers as
	// soon as the first one listens).
	start := func(name string) *proxyProcess {
		sock := filepath.Join(sockets, name+".sock")
		p := startProxyProcess(t, nil, listen, "--listen", "", "--listen-tcp", listen, "--upstream", upstream, "--metrics-addr", "",
			"--handoff-dir", dir, "--health-socket", sock, "--readiness-dial-upstream", "--shutdown-grace", "5s")
		deadline := time.Now().Add(20 * time.Second)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_, ready, _ := health.Probe(ctx, "unix:"+sock, "/readyz")
			cancel()
			if ready {
				return p
			}
			if time.Now().After(deadline) {
				t.Fatalf("agent %s not ready:\n%s", name, p.stderr.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	a := start("a")
	b := start("b")
	if !strings.Contains(b.stderr.String(), "took over a listening socket") {
		t.Fatalf("the second agent did not take the socket over:\n%s", b.stderr.String())
	}

	// agent probe: every check, by name, from the process behind the socket.
	out, err := exec.Command(harness.Binary(t, "./cmd/agent"), "probe", "--socket", filepath.Join(sockets, "b.sock")).CombinedOutput()
	if err != nil || string(out) != "[+]listeners ok\n[+]upstream ok\nreadyz check passed\n" {
		t.Errorf("agent probe: %v\n%s", err, out)
	}

	loop := startDialLoop(listen)
	time.Sleep(500 * time.Millisecond)
	killed := time.Now()
	if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	ok, fail := loop.halt()
	inFlight := 0
	for _, f := range fail {
		if f.start.Before(killed) && f.end.After(killed) {
			inFlight++
			continue
		}
		t.Errorf("a connection failed after the kill -9 of one agent (started %s after it): %v", f.start.Sub(killed), f.err)
	}
	t.Logf("kill -9 of one of two agents: %d connections ok, %d failed (in flight at the kill: %d)", ok, len(fail), inFlight)
	if ok < 50 {
		t.Errorf("only %d connections succeeded: the loop did not exercise the kill", ok)
	}

	// A rolling replacement of the survivor: the new agent first, then SIGTERM to the old one.
	loop = startDialLoop(listen)
	time.Sleep(300 * time.Millisecond)
	c := start("c")
	if err := b.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-b.done:
		b.done <- err
	case <-time.After(15 * time.Second):
		t.Fatal("the old agent did not exit after SIGTERM")
	}
	time.Sleep(500 * time.Millisecond)
	ok, fail = loop.halt()
	for _, f := range fail {
		t.Errorf("a connection failed while one agent replaced another: %v", f.err)
	}
	t.Logf("replacement: %d connections ok, %d failed", ok, len(fail))
	if !bytes.Contains([]byte(c.stderr.String()), []byte("took over a listening socket")) {
		t.Errorf("the third agent bound its own socket instead of taking it over:\n%s", c.stderr.String())
	}
}

// Without --handoff-dir, a second agent on the same address fails at start with the reason.
func TestProxySecondAgentWithoutHandoffCannotBind(t *testing.T) {
	upstream := testnet.Serve(t, "tcp", "127.0.0.1:0", func(c net.Conn) { _, _ = io.Copy(c, c) })
	listen := freeAddr(t, "127.0.0.1")
	startProxyProcess(t, nil, listen, "--listen", "", "--listen-tcp", listen, "--upstream", upstream, "--metrics-addr", "")
	out, err := exec.Command(harness.Binary(t, "./cmd/agent"), "proxy", "--listen", "", "--listen-tcp", listen, "--upstream", upstream, "--metrics-addr", "").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "address already in use") {
		t.Fatalf("second agent without --handoff-dir: %v\n%s", err, out)
	}
}

// An agent that takes the sockets over but cannot reach its upstream (a broken release or flag in a
// rollout) must not accept on them: the agent it took them from keeps serving every connection,
// and the newcomer reports why it is not ready.
func TestProxyTakingOverWaitsForItsUpstream(t *testing.T) {
	upstream := testnet.Serve(t, "tcp", "127.0.0.1:0", func(c net.Conn) { _, _ = io.Copy(c, c) })
	dead := freeAddr(t, "127.0.0.1") // nothing listens: refused
	listen := freeAddr(t, "127.0.0.1")
	dir, sockets := t.TempDir(), t.TempDir()
	start := func(name, up string) *proxyProcess {
		return startProxyProcess(t, nil, listen, "--listen", "", "--listen-tcp", listen, "--upstream", up, "--metrics-addr", "",
			"--handoff-dir", dir, "--health-socket", filepath.Join(sockets, name+".sock"), "--readiness-dial-upstream")
	}
	start("good", upstream)
	broken := start("broken", dead)
	sock := "unix:" + filepath.Join(sockets, "broken.sock")
	var body string
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(body, "[-]upstream failed") {
		if time.Now().After(deadline) {
			t.Fatalf("the broken agent's readiness does not name the upstream: %q\n%s", body, broken.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		body, _, _ = health.Probe(ctx, sock, "/readyz")
		cancel()
	}
	if !strings.Contains(broken.stderr.String(), "took over a listening socket") {
		t.Fatalf("the broken agent did not take the socket over:\n%s", broken.stderr.String())
	}
	loop := startDialLoop(listen)
	time.Sleep(2 * time.Second)
	ok, fail := loop.halt()
	for _, f := range fail {
		t.Errorf("a connection failed while an agent without a working upstream held the socket: %v", f.err)
	}
	t.Logf("%d connections ok, %d failed; the broken agent's readiness: %q", ok, len(fail), body)
	if ok < 50 {
		t.Errorf("only %d connections: the loop did not run", ok)
	}
}
