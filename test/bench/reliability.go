package main

// Suite "reliability": the figures issue 13 asks for, measured on the real `agent proxy` binary on
// loopback, bounded in count and time (about a minute):
//   - RSS per idle tunnel with 5,000 open, on the CONNECT and on the transparent (--listen-tcp) path;
//   - RSS per connection that never sends a request head (1,000 open);
//   - SIGTERM under load: tunnels carrying data when the signal comes finish intact within the
//     grace period, new connections are refused, headless connections get 503.
// Run it alone with `go run ./test/bench -suite reliability`.

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const reliabilityTargetEnv = "APIPROXY_BENCH_RELIABILITY_TARGET"

func init() {
	// The echo target runs as a child (this same binary): with 5,000 tunnels, the client ends and the
	// target ends together would exceed what one process may hold open here (about 10,000 files).
	if os.Getenv(reliabilityTargetEnv) == "1" {
		runEchoTarget()
		os.Exit(0)
	}
	register(Suite{Name: "reliability", Run: runReliabilityBench})
}

// runEchoTarget prints its address, then echoes every connection (the first byte too, as target
// does in mode 'E'), until its parent kills it.
func runEchoTarget() {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(l.Addr().String())
	for {
		c, err := l.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) {
				time.Sleep(10 * time.Millisecond) // out of files for a moment: keep serving
				continue
			}
			return
		}
		go func() {
			defer c.Close()
			_, _ = io.Copy(c, c)
		}()
	}
}

const (
	reliabilityIdle     = 5000
	reliabilityHeadless = 1000
	reliabilityBusy     = 100
	reliabilityGrace    = 15 * time.Second
)

// agentProxy is one `agent proxy` child process.
type agentProxy struct {
	cmd               *exec.Cmd
	listen, listenTCP string
	exited            chan error
}

func startAgentProxy(agent, upstream string) (*agentProxy, error) {
	listen, err := freeLoopbackAddr()
	if err != nil {
		return nil, err
	}
	listenTCP, err := freeLoopbackAddr()
	if err != nil {
		return nil, err
	}
	p := &agentProxy{listen: listen, listenTCP: listenTCP, exited: make(chan error, 1)}
	p.cmd = exec.Command(agent, "proxy", "--listen", listen, "--listen-tcp", listenTCP, "--upstream", upstream,
		"--metrics-addr", "", "--max-tunnels", "0", "--header-timeout", "60s", "--shutdown-grace", reliabilityGrace.String())
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	done := make(chan struct{})
	go func() { p.exited <- p.cmd.Wait(); close(done) }()
	if err := waitListening(listen, done, 20*time.Second); err != nil {
		p.stop()
		return nil, err
	}
	return p, nil
}

// stop kills the child by PID (a no-op when it already exited).
func (p *agentProxy) stop() {
	if p.cmd.Process == nil {
		return
	}
	_ = p.cmd.Process.Kill()
	select {
	case err := <-p.exited:
		p.exited <- err
	case <-time.After(10 * time.Second):
	}
}

func runReliabilityBench() ([]Row, error) {
	raiseNoFile(65536)
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	targetCmd := exec.Command(self)
	targetCmd.Env = append(os.Environ(), reliabilityTargetEnv+"=1")
	target, err := startGoChild("echo target", targetCmd, "")
	if err != nil {
		return nil, err
	}
	defer target.stop()
	up := target.addr

	dir, err := os.MkdirTemp("", "apiproxy-bench-reliability-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	agent := filepath.Join(dir, "agent")
	if out, err := exec.Command("go", "build", "-o", agent, "./cmd/agent").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("building agent: %v\n%s", err, out)
	}

	var rows []Row
	// Idle tunnels, each path in a fresh process so that one's heap does not hide the other's.
	for _, path := range []string{"CONNECT", "transparent"} {
		p, err := startAgentProxy(agent, up)
		if err != nil {
			return rows, err
		}
		e := &proc{name: "agent proxy " + path, addr: p.listen, connect: up, pid: p.cmd.Process.Pid}
		if path == "transparent" {
			e.addr, e.connect = p.listenTCP, ""
		}
		kib, err := idleRSS(e, reliabilityIdle)
		p.stop()
		if err != nil {
			return rows, fmt.Errorf("%s: %w", e.name, err)
		}
		rows = append(rows, Row{Metric: fmt.Sprintf("RSS per idle tunnel, %s (%d open)", path, reliabilityIdle), Unit: "KiB", Ours: kib, Target: "<= 8 KiB"})
	}

	p, err := startAgentProxy(agent, up)
	if err != nil {
		return rows, err
	}
	defer p.stop()
	kib, err := headlessRSS(p, reliabilityHeadless)
	if err != nil {
		return rows, err
	}
	rows = append(rows, Row{Metric: fmt.Sprintf("RSS per connection without a head (%d open)", reliabilityHeadless), Unit: "KiB", Ours: kib, Target: "bounded by --max-pending-heads"})

	r, err := sigtermUnderLoad(p)
	if err != nil {
		return rows, err
	}
	rows = append(rows,
		Row{Metric: fmt.Sprintf("SIGTERM: busy tunnels finished intact (of %d)", reliabilityBusy), Unit: "", Ours: float64(r.intact), Target: fmt.Sprint(reliabilityBusy)},
		Row{Metric: "SIGTERM: bytes echoed by the busy tunnels after the signal", Unit: "MiB", Ours: float64(r.bytesAfter) / (1 << 20), Target: "> 0"},
		Row{Metric: "SIGTERM: CONNECTs answered 200 after the signal", Unit: "", Ours: float64(r.newAccepted), Target: "0"},
		Row{Metric: "SIGTERM: new connections refused after the signal", Unit: "", Ours: float64(r.newRefused), Target: "all tried"},
		Row{Metric: "SIGTERM: headless connections answered 503 (of 50)", Unit: "", Ours: float64(r.headless503), Target: "50"},
		Row{Metric: fmt.Sprintf("SIGTERM: exit after the signal (grace %s, last tunnel ends at 3 s)", reliabilityGrace), Unit: "s", Ours: r.exitAfter.Seconds(), Target: "≈ 3 s, < grace"},
	)
	if r.intact != reliabilityBusy || r.newAccepted != 0 || r.headless503 != 50 {
		return rows, fmt.Errorf("SIGTERM under load: %d/%d tunnels intact, %d new CONNECTs accepted, %d/50 headless got 503 (first error: %v)",
			r.intact, reliabilityBusy, r.newAccepted, r.headless503, r.firstErr)
	}
	return rows, nil
}

// headlessRSS opens n connections that send nothing and returns the proxy's RSS growth per
// connection in KiB.
func headlessRSS(p *agentProxy, n int) (float64, error) {
	time.Sleep(500 * time.Millisecond)
	return rssGrowthPerConn(p.cmd.Process.Pid, n, func(int) (net.Conn, error) { return net.Dial("tcp", p.listen) })
}

type sigtermResult struct {
	intact, newAccepted, newRefused, headless503 int
	bytesAfter                                   int64
	exitAfter                                    time.Duration
	firstErr                                     error
}

// sigtermUnderLoad keeps reliabilityBusy tunnels echoing, sends SIGTERM, keeps them echoing for 3
// more seconds, then half-closes each and checks that every byte sent came back.
func sigtermUnderLoad(p *agentProxy) (*sigtermResult, error) {
	e := &proc{name: "agent proxy", addr: p.listen, connect: "kubernetes.default.svc:443"}
	r := &sigtermResult{}
	var mu sync.Mutex
	fail := func(err error) {
		mu.Lock()
		if r.firstErr == nil {
			r.firstErr = err
		}
		mu.Unlock()
	}
	var signalled atomic.Bool
	var intact atomic.Int64
	var bytesAfter atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < reliabilityBusy; i++ {
		c, err := e.open('E')
		if err != nil {
			close(stop)
			wg.Wait()
			return nil, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(60 * time.Second))
			msg := bytes.Repeat([]byte{byte('a' + i%26)}, 4096)
			back := make([]byte, len(msg))
			for {
				select {
				case <-stop:
					if err := c.(*net.TCPConn).CloseWrite(); err != nil {
						fail(err)
						return
					}
					if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
						fail(fmt.Errorf("after half-close: %d bytes, %v", len(rest), err))
						return
					}
					intact.Add(1)
					return
				default:
				}
				if _, err := c.Write(msg); err != nil {
					fail(fmt.Errorf("write: %w", err))
					return
				}
				if _, err := io.ReadFull(c, back); err != nil || !bytes.Equal(back, msg) {
					fail(fmt.Errorf("echo: %v", err))
					return
				}
				if signalled.Load() {
					bytesAfter.Add(int64(len(msg)))
				}
				time.Sleep(10 * time.Millisecond)
			}
		}()
	}
	// Connections accepted but without a head when the signal comes: 503 each.
	headless := make([]net.Conn, 0, 50)
	defer func() {
		for _, c := range headless {
			c.Close()
		}
	}()
	for i := 0; i < 50; i++ {
		c, err := net.Dial("tcp", p.listen)
		if err != nil {
			close(stop)
			wg.Wait()
			return nil, err
		}
		headless = append(headless, c)
	}
	time.Sleep(time.Second)

	sent := time.Now()
	signalled.Store(true)
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		close(stop)
		wg.Wait()
		return nil, err
	}
	for _, c := range headless {
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodConnect})
		if err == nil && resp.StatusCode == http.StatusServiceUnavailable {
			r.headless503++
		}
	}
	// New connections during the drain: none may get a tunnel.
	for time.Since(sent) < 2*time.Second {
		c, err := net.DialTimeout("tcp", p.listen, time.Second)
		if err != nil {
			r.newRefused++
			time.Sleep(50 * time.Millisecond)
			continue
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, "CONNECT kubernetes.default.svc:443 HTTP/1.1\r\n\r\n")
		if resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodConnect}); err == nil && resp.StatusCode == 200 {
			r.newAccepted++
		}
		c.Close()
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(time.Until(sent.Add(3 * time.Second)))
	close(stop)
	wg.Wait()
	select {
	case err := <-p.exited:
		p.exited <- err
		r.exitAfter = time.Since(sent)
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			return nil, err
		}
	case <-time.After(reliabilityGrace + 10*time.Second):
		return nil, errors.New("agent proxy did not exit after SIGTERM")
	}
	r.intact, r.bytesAfter = int(intact.Load()), bytesAfter.Load()
	return r, nil
}
