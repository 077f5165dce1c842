package main

// Suite "proxy": `agent proxy` (the real binary) against a minimal Go CONNECT relay written here
// (the baseline) and against direct TCP, all on loopback, each figure measured in the same run.

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const benchChildEnv = "APIPROXY_BENCH_CHILD"

func init() {
	// The baseline relay runs as a child process (this same binary), like `agent proxy`, so that
	// the RSS of each is measured alone.
	if os.Getenv(benchChildEnv) == "relay" {
		runMinimalRelay(os.Getenv("APIPROXY_BENCH_UPSTREAM"))
		os.Exit(0)
	}
	register(Suite{Name: "proxy", Run: runProxyBench})
}

// runMinimalRelay is what a straightforward Go CONNECT proxy looks like: http.ReadRequest, dial,
// 200, then io.Copy both ways (which splices TCP to TCP) with half-close.
func runMinimalRelay(upstream string) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(l.Addr().String())
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			br := bufio.NewReader(c)
			req, err := http.ReadRequest(br)
			if err != nil || req.Method != http.MethodConnect {
				return
			}
			up, err := net.Dial("tcp", upstream)
			if err != nil {
				io.WriteString(c, "HTTP/1.1 502 Bad Gateway\r\n\r\n")
				return
			}
			defer up.Close()
			io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n")
			if n := br.Buffered(); n > 0 {
				b, _ := br.Peek(n)
				up.Write(b)
			}
			done := make(chan struct{})
			go func() {
				io.Copy(up, c)
				up.(*net.TCPConn).CloseWrite()
				close(done)
			}()
			io.Copy(c, up)
			c.(*net.TCPConn).CloseWrite()
			<-done
		}()
	}
}

// target is the upstream of every tunnel: mode "sink" streams bytes to the client forever (bulk),
// otherwise it echoes.
type target struct {
	l    net.Listener
	mu   sync.Mutex
	conn []net.Conn
}

func startTarget() (*target, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	t := &target{l: l}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go t.serve(c)
		}
	}()
	return t, nil
}

func (t *target) serve(c net.Conn) {
	defer c.Close()
	var mode [1]byte
	if _, err := io.ReadFull(c, mode[:]); err != nil {
		return
	}
	if mode[0] == 'S' {
		buf := make([]byte, 64<<10)
		for {
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	}
	c.Write(mode[:])
	io.Copy(c, c)
}

type endpoint struct {
	name  string
	addr  string
	proxy bool // CONNECT first
	pid   int
}

// open connects to the target through e; mode is the first byte ('S' sink, 'E' echo).
func (e endpoint) open(mode byte) (net.Conn, error) {
	c, err := net.Dial("tcp", e.addr)
	if err != nil {
		return nil, err
	}
	if e.proxy {
		if _, err := io.WriteString(c, "CONNECT kubernetes.default.svc:443 HTTP/1.1\r\nHost: kubernetes.default.svc:443\r\n\r\n"); err != nil {
			c.Close()
			return nil, err
		}
		// Read exactly the 39-byte answer both proxies give, so no bytes are left in a buffer.
		want := "HTTP/1.1 200 Connection established\r\n\r\n"
		got := make([]byte, len(want))
		if _, err := io.ReadFull(c, got); err != nil || string(got) != want {
			c.Close()
			return nil, fmt.Errorf("%s: CONNECT answered %q: %v", e.name, got, err)
		}
	}
	if _, err := c.Write([]byte{mode}); err != nil {
		c.Close()
		return nil, err
	}
	if mode == 'E' {
		var b [1]byte
		if _, err := io.ReadFull(c, b[:]); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

func bulk(e endpoint, tunnels int, d time.Duration) (float64, error) {
	var total atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, tunnels)
	start := time.Now()
	for i := 0; i < tunnels; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := e.open('S')
			if err != nil {
				errc <- err
				return
			}
			defer c.Close()
			c.SetReadDeadline(start.Add(d))
			buf := make([]byte, 256<<10)
			for {
				n, err := c.Read(buf)
				total.Add(int64(n))
				if err != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errc:
		return 0, err
	default:
	}
	return float64(total.Load()) / time.Since(start).Seconds() / (1 << 20), nil
}

func setups(e endpoint, workers int, d time.Duration) (float64, error) {
	var n atomic.Int64
	var firstErr atomic.Pointer[error]
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Since(start) < d {
				c, err := e.open('E')
				if err != nil {
					firstErr.CompareAndSwap(nil, &err)
					return
				}
				c.Close()
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	if p := firstErr.Load(); p != nil {
		return 0, *p
	}
	return float64(n.Load()) / time.Since(start).Seconds(), nil
}

func rtt(e endpoint, rounds int) (p50, p99 float64, err error) {
	c, err := e.open('E')
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	msg := make([]byte, 64)
	back := make([]byte, 64)
	lat := make([]float64, 0, rounds)
	for i := 0; i < rounds; i++ {
		t0 := time.Now()
		if _, err := c.Write(msg); err != nil {
			return 0, 0, err
		}
		if _, err := io.ReadFull(c, back); err != nil {
			return 0, 0, err
		}
		lat = append(lat, float64(time.Since(t0).Microseconds()))
	}
	sort.Float64s(lat)
	return lat[len(lat)/2], lat[len(lat)*99/100], nil
}

func vmRSSKiB(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			f := strings.Fields(l)
			return strconv.ParseFloat(f[1], 64)
		}
	}
	return 0, errors.New("no VmRSS")
}

// idleRSS opens n idle tunnels (each has carried one echo byte) and returns the proxy's RSS growth
// per tunnel in KiB.
func idleRSS(e endpoint, n int) (float64, error) {
	// Warm up: the first tunnels allocate the runtime's pools and grow the heap arena.
	for i := 0; i < 50; i++ {
		c, err := e.open('E')
		if err != nil {
			return 0, err
		}
		c.Close()
	}
	time.Sleep(time.Second)
	before, err := vmRSSKiB(e.pid)
	if err != nil {
		return 0, err
	}
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < n; i++ {
		c, err := e.open('E')
		if err != nil {
			return 0, fmt.Errorf("tunnel %d: %w", i, err)
		}
		conns = append(conns, c)
	}
	// Let the process settle (the runtime returns what the setup burst used); take the last of a few
	// samples.
	var after float64
	for i := 0; i < 5; i++ {
		time.Sleep(time.Second)
		if after, err = vmRSSKiB(e.pid); err != nil {
			return 0, err
		}
	}
	return (after - before) / float64(n), nil
}

func raiseNoFile(n uint64) {
	var rl syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl) != nil {
		return
	}
	if rl.Max < n {
		rl.Max = n // needs root or CAP_SYS_RESOURCE; otherwise stay at the hard limit
	}
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
	}
	if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl) != nil {
		_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl)
		rl.Cur = rl.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
	}
}

func startChild(cmd *exec.Cmd, readAddr bool, listen string) (string, error) {
	// A file, not a Writer: no copying goroutine in this process. `agent proxy` logs a line per
	// tunnel there, as it would to a container log.
	devNull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		return "", err
	}
	defer devNull.Close()
	cmd.Stderr = devNull
	var out io.ReadCloser
	if readAddr {
		if out, err = cmd.StdoutPipe(); err != nil {
			return "", err
		}
	}
	if err := cmd.Start(); err != nil {
		return "", err
	}
	if readAddr {
		line, err := bufio.NewReader(out).ReadString('\n')
		if err != nil {
			return "", fmt.Errorf("child gave no address: %v", err)
		}
		return strings.TrimSpace(line), nil
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", listen, time.Second)
		if err == nil {
			c.Close()
			return listen, nil
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("agent proxy not listening on %s: %v", listen, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func runProxyBench() ([]Row, error) {
	raiseNoFile(65536)
	tg, err := startTarget()
	if err != nil {
		return nil, err
	}
	defer tg.l.Close()
	up := tg.l.Addr().String()

	// Baseline relay: this binary as a child.
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	relayCmd := exec.Command(self)
	relayCmd.Env = append(os.Environ(), benchChildEnv+"=relay", "APIPROXY_BENCH_UPSTREAM="+up)
	relayAddr, err := startChild(relayCmd, true, "")
	if err != nil {
		return nil, err
	}
	defer func() { relayCmd.Process.Kill(); relayCmd.Wait() }()

	// Ours: the real `agent proxy` binary.
	dir, err := os.MkdirTemp("", "apiproxy-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	agent := filepath.Join(dir, "agent")
	build := exec.Command("go", "build", "-o", agent, "./cmd/agent")
	if out, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("building agent: %v\n%s", err, out)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	listen := l.Addr().String()
	l.Close()
	agentCmd := exec.Command(agent, "proxy", "--listen", listen, "--upstream", up, "--metrics-addr", "", "--max-tunnels", "0")
	if _, err := startChild(agentCmd, false, listen); err != nil {
		return nil, err
	}
	defer func() { agentCmd.Process.Kill(); agentCmd.Wait() }()

	direct := endpoint{name: "direct", addr: up}
	relay := endpoint{name: "minimal relay", addr: relayAddr, proxy: true, pid: relayCmd.Process.Pid}
	ours := endpoint{name: "agent proxy", addr: listen, proxy: true, pid: agentCmd.Process.Pid}

	var rows []Row
	pair := func(metric, unit string, higher bool, target string, f func(endpoint) (float64, error)) error {
		// Interleave runs (relay, ours, direct, twice) and keep the best of each, to damp the noise of
		// a shared machine.
		best := map[string]float64{}
		for round := 0; round < 2; round++ {
			for _, e := range []endpoint{relay, ours, direct} {
				v, err := f(e)
				if err != nil {
					return fmt.Errorf("%s via %s: %w", metric, e.name, err)
				}
				if b, ok := best[e.name]; !ok || (higher && v > b) || (!higher && v < b) {
					best[e.name] = v
				}
			}
		}
		rows = append(rows,
			Row{Metric: metric, Unit: unit, Baseline: "minimal relay", Base: best[relay.name], Ours: best[ours.name], HigherIsBetter: higher, Target: target},
			Row{Metric: metric, Unit: unit, Baseline: "direct TCP", Base: best[direct.name], Ours: best[ours.name], HigherIsBetter: higher, Target: "(reference)"})
		return nil
	}
	for _, n := range []int{4, 8} {
		if err := pair(fmt.Sprintf("bulk download, %d tunnels", n), "MiB/s", true, ">= 1.0x", func(e endpoint) (float64, error) { return bulk(e, n, 2*time.Second) }); err != nil {
			return rows, err
		}
	}
	if err := pair("tunnel setups (8 workers)", "/s", true, ">= 1.0x", func(e endpoint) (float64, error) { return setups(e, 8, 2*time.Second) }); err != nil {
		return rows, err
	}
	p99s := map[string]float64{}
	if err := pair("echo RTT p50 (64 B)", "us", false, "", func(e endpoint) (float64, error) {
		p50, p99, err := rtt(e, 3000)
		if old, ok := p99s[e.name]; !ok || p99 < old {
			p99s[e.name] = p99
		}
		return p50, err
	}); err != nil {
		return rows, err
	}
	rows = append(rows,
		Row{Metric: "echo RTT p99 (64 B)", Unit: "us", Baseline: "minimal relay", Base: p99s[relay.name], Ours: p99s[ours.name], Target: ""},
		Row{Metric: "echo RTT p99 (64 B)", Unit: "us", Baseline: "direct TCP", Base: p99s[direct.name], Ours: p99s[ours.name], Target: "(reference)"})

	const idle = 3000
	rb, err := idleRSS(relay, idle)
	if err != nil {
		return rows, err
	}
	ro, err := idleRSS(ours, idle)
	if err != nil {
		return rows, err
	}
	rows = append(rows, Row{Metric: fmt.Sprintf("RSS per idle tunnel (%d open)", idle), Unit: "KiB", Baseline: "minimal relay", Base: rb, Ours: ro, Target: "<= 8 KiB"})
	return rows, nil
}
