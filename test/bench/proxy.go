package main

// Suite "proxy": `agent proxy` (the real binary) side by side with the proxies users already run,
// all on loopback, relaying to the same sink, in the same run: on the CONNECT path a minimal Go
// relay written here (the floor of a plain Go implementation), squid and tinyproxy; on the
// transparent path (`--listen-tcp`, the node role) HAProxy (mode tcp) and nginx (stream). Rounds are
// interleaved (every proxy once per metric per round, in a rotating order) and medians reported, so
// the noise of a shared machine hits every column alike.

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/apiproxy/apiproxy/pkg/cmd/agent"
)

const benchChildEnv = "APIPROXY_BENCH_CHILD"

var (
	proxyRounds      = flag.Int("rounds", 3, "proxy suite: interleaved rounds (medians are reported)")
	proxyIdle        = flag.Int("idle", 2000, "proxy suite: idle tunnels opened to measure memory per tunnel")
	proxyProfile     = flag.String("profile", "", "proxy suite: run the agents in-process under pprof and write DIR/agent-{connect,tcp}.{cpu,heap}.pprof")
	proxyOnly        = flag.String("measure", "bulk,setups,rtt,idle", "proxy suite: which measurements to run (for profiling one)")
	proxyAgentEnv    = flag.String("agent-env", "", "proxy suite: extra environment of the agents, comma-separated (e.g. GOMAXPROCS=1, to try runtime settings)")
	proxyCompareArgs = flag.String("compare-args", "", "proxy and api suites: also run this tree's `agent proxy` with these extra flags (space-separated, e.g. --idle-timeout=1h) as extra columns, to compare settings in one run")
	proxyCompare     = flag.String("compare", "", "proxy and api suites: also run `agent proxy` built from this git revision (e.g. HEAD~1) as extra columns, to measure a change")
	proxyPeers       = flag.Bool("peers", true, "proxy suite: start squid, tinyproxy, HAProxy and nginx (installing missing ones with apt-get as root)")
)

func init() {
	// The baseline relay runs as a child process (this same binary), like `agent proxy`, so that
	// the RSS and CPU of each is measured alone.
	switch os.Getenv(benchChildEnv) {
	case "relay":
		runMinimalRelay(os.Getenv("APIPROXY_BENCH_UPSTREAM"))
		os.Exit(0)
	case "agent":
		os.Exit(runProfiledAgent())
	}
	register(Suite{Name: "proxy", RunTables: runProxyBench})
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

// runProfiledAgent is `agent` (the same command tree as the binary) under a CPU profile, for -profile:
// the arguments come separated by \x1f (unit separator) in APIPROXY_BENCH_ARGS; SIGTERM ends it (the proxy drains) and
// the profiles are written.
func runProfiledAgent() int {
	prefix := os.Getenv("APIPROXY_BENCH_PROFILE")
	runtime.MemProfileRate = 256 // fine enough to see what one idle tunnel holds
	cpu, err := os.Create(prefix + ".cpu.pprof")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer cpu.Close()
	if err := pprof.StartCPUProfile(cpu); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	cmd := agent.NewRootCommand(os.Stdout, os.Stderr)
	cmd.SetArgs(strings.Split(os.Getenv("APIPROXY_BENCH_ARGS"), "\x1f"))
	// The proxy role handles SIGTERM itself (drain); hold the heap snapshot until then.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGUSR1)
	go func() {
		for range sig {
			if f, err := os.Create(prefix + ".heap.pprof"); err == nil {
				runtime.GC() // the profile shows the heap as of the last GC: make that now
				_ = pprof.WriteHeapProfile(f)
				f.Close()
			}
		}
	}()
	err = cmd.Execute()
	pprof.StopCPUProfile()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// target is the upstream of every tunnel: mode "sink" streams bytes to the client forever (bulk),
// otherwise it echoes.
type target struct {
	l net.Listener
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

// open connects to the sink through p (CONNECT first on the CONNECT path); mode is the first byte
// ('S' sink, 'E' echo, which is answered before open returns).
func (p *proc) open(mode byte) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", p.addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if p.connect != "" {
		if _, err := io.WriteString(c, "CONNECT "+p.connect+" HTTP/1.1\r\nHost: "+p.connect+"\r\n\r\n"); err != nil {
			c.Close()
			return nil, err
		}
		// Read the whole answer head (squid, tinyproxy and the agent word it differently); nothing
		// follows it until the first byte is sent.
		var buf [512]byte
		n := 0
		for !bytes.Contains(buf[:n], []byte("\r\n\r\n")) {
			m, err := c.Read(buf[n:])
			n += m
			if err != nil || n == len(buf) {
				c.Close()
				return nil, fmt.Errorf("%s: CONNECT answered %q: %v", p.name, buf[:n], err)
			}
		}
		head := string(buf[:n])
		if !strings.HasPrefix(head, "HTTP/1.1 200") && !strings.HasPrefix(head, "HTTP/1.0 200") || !strings.HasSuffix(head, "\r\n\r\n") {
			c.Close()
			return nil, fmt.Errorf("%s: CONNECT answered %q", p.name, head)
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
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

// bulk streams from the sink over n tunnels for d: Gbit/s, and the proxy's CPU seconds per GiB.
func bulk(p *proc, n int, d time.Duration) (gbps, cpuPerGiB float64, err error) {
	var total atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, n)
	cpu0 := cpuSeconds(p.pid)
	start := time.Now()
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := p.open('S')
			if err != nil {
				errc <- err
				return
			}
			defer c.Close()
			c.SetReadDeadline(start.Add(d))
			buf := make([]byte, 256<<10)
			for {
				m, err := c.Read(buf)
				total.Add(int64(m))
				if err != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	el := time.Since(start).Seconds()
	cpu := cpuSeconds(p.pid) - cpu0
	select {
	case err := <-errc:
		return 0, 0, err
	default:
	}
	b := float64(total.Load())
	return b * 8 / el / 1e9, cpu / (b / (1 << 30)), nil
}

// setups opens and closes echo tunnels (each carries one byte both ways) from workers goroutines
// for d, at most 200,000 in all: setups/s and the proxy's CPU µs per setup.
func setups(p *proc, workers int, d time.Duration) (float64, float64, error) {
	var n atomic.Int64
	var firstErr atomic.Pointer[error]
	var wg sync.WaitGroup
	cpu0 := cpuSeconds(p.pid)
	start := time.Now()
	for i := 0; i < workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Since(start) < d && n.Load() < 200000 {
				c, err := p.open('E')
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
	el := time.Since(start).Seconds()
	cpu := cpuSeconds(p.pid) - cpu0
	if e := firstErr.Load(); e != nil {
		return 0, 0, *e
	}
	return float64(n.Load()) / el, cpu * 1e6 / float64(max(n.Load(), 1)), nil
}

// rtt sends 64-byte messages back to back through one tunnel and times each echo: p50 and p99 in
// µs. The proxy stays hot (its threads never go idle between messages).
func rtt(p *proc, rounds int) (p50, p99 float64, err error) {
	c, err := p.open('E')
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
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
		lat = append(lat, float64(time.Since(t0).Nanoseconds())/1e3)
	}
	sort.Float64s(lat)
	return lat[len(lat)/2], lat[len(lat)*99/100], nil
}

// rttConcurrent runs n tunnels through one proxy at once, each exchanging 64-byte messages back to
// back for rounds messages (bounded by 30 s), and times every echo: p50 and p99 in µs over all of
// them. With several tunnels busy, each message also costs the proxy's wake-ups of the others' work
// (goroutines through netpoll, or an event loop's turns), which the single-tunnel row does not show.
func rttConcurrent(p *proc, n, rounds int) (p50, p99 float64, err error) {
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	deadline := time.Now().Add(30 * time.Second)
	for i := 0; i < n; i++ {
		c, err := p.open('E')
		if err != nil {
			return 0, 0, err
		}
		_ = c.SetDeadline(deadline)
		conns = append(conns, c)
	}
	lat := make([][]float64, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg, back := make([]byte, 64), make([]byte, 64)
			own := make([]float64, 0, rounds)
			<-start
			for r := 0; r < rounds; r++ {
				t0 := time.Now()
				if _, err := c.Write(msg); err != nil {
					errs[i] = err
					return
				}
				if _, err := io.ReadFull(c, back); err != nil {
					errs[i] = err
					return
				}
				own = append(own, float64(time.Since(t0).Nanoseconds())/1e3)
			}
			lat[i] = own
		}()
	}
	close(start)
	wg.Wait()
	var all []float64
	for i := range lat {
		if errs[i] != nil {
			return 0, 0, fmt.Errorf("tunnel %d of %d: %w", i, n, errs[i])
		}
		all = append(all, lat[i]...)
	}
	sort.Float64s(all)
	return all[len(all)/2], all[len(all)*99/100], nil
}

// rttAll times 64-byte echoes through one tunnel per proxy, interleaved message by message (one
// echo through each proxy in turn), so that every proxy sees the same moments of a shared
// machine's load, and each message finds its proxy idle, as a request after a pause does (the
// wake-up is part of the time): per proxy p50 and p99 in µs.
func rttAll(ps []*proc, rounds int) (map[string][2]float64, error) {
	conns := make([]net.Conn, len(ps))
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	for i, p := range ps {
		c, err := p.open('E')
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p.name, err)
		}
		_ = c.SetDeadline(time.Now().Add(60 * time.Second))
		conns[i] = c
	}
	msg := make([]byte, 64)
	back := make([]byte, 64)
	lat := make([][]float64, len(ps))
	for r := 0; r < rounds; r++ {
		for i, c := range conns {
			t0 := time.Now()
			if _, err := c.Write(msg); err != nil {
				return nil, fmt.Errorf("%s: %w", ps[i].name, err)
			}
			if _, err := io.ReadFull(c, back); err != nil {
				return nil, fmt.Errorf("%s: %w", ps[i].name, err)
			}
			lat[i] = append(lat[i], float64(time.Since(t0).Nanoseconds())/1e3)
		}
	}
	out := map[string][2]float64{}
	for i, p := range ps {
		sort.Float64s(lat[i])
		out[p.name] = [2]float64{lat[i][len(lat[i])/2], lat[i][len(lat[i])*99/100]}
	}
	return out, nil
}

// idleRSS opens n idle tunnels (each has carried one echo byte) and returns the proxy's RSS growth
// per tunnel in KiB (the whole process tree: nginx's workers, squid's helpers).
func idleRSS(p *proc, n int) (float64, error) {
	// Warm up: the first tunnels allocate the runtime's pools and grow the heap arena.
	for i := 0; i < 50; i++ {
		c, err := p.open('E')
		if err != nil {
			return 0, err
		}
		c.Close()
	}
	time.Sleep(time.Second)
	return rssGrowthPerConn(p.pid, n, func(i int) (net.Conn, error) {
		c, err := p.open('E')
		if err != nil {
			return nil, fmt.Errorf("tunnel %d: %w", i, err)
		}
		return c, nil
	})
}

// rssGrowthPerConn holds n connections from open and returns the RSS growth of pid's process tree
// per connection in KiB, sampled after the process settled (the runtime returns what the setup burst
// used; the last of a few samples counts).
func rssGrowthPerConn(pid, n int, open func(i int) (net.Conn, error)) (float64, error) {
	before, err := rssKiB(pid)
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
		c, err := open(i)
		if err != nil {
			return 0, err
		}
		conns = append(conns, c)
	}
	var after float64
	for i := 0; i < 3; i++ {
		time.Sleep(time.Second)
		if after, err = rssKiB(pid); err != nil {
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

// startGoChild starts cmd (the agent, or this binary as the minimal relay) in its own process group
// with stderr to /dev/null (the agent logs a line per tunnel, as to a container log) and waits
// until it listens: on listen, or on the address it prints first when listen is "".
func startGoChild(name string, cmd *exec.Cmd, listen string) (*proc, error) {
	devNull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		return nil, err
	}
	defer devNull.Close()
	cmd.Stderr = devNull
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var out io.ReadCloser
	if listen == "" {
		if out, err = cmd.StdoutPipe(); err != nil {
			return nil, err
		}
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	exited := make(chan struct{})
	p := &proc{name: name, pid: cmd.Process.Pid, stop: func() { stopByPID(cmd.Process.Pid, exited) }}
	if listen == "" {
		line, err := bufio.NewReader(out).ReadString('\n')
		go func() { _ = cmd.Wait(); close(exited) }()
		if err != nil {
			p.stop()
			return nil, fmt.Errorf("%s gave no address: %v", name, err)
		}
		p.addr = strings.TrimSpace(line)
		return p, nil
	}
	go func() { _ = cmd.Wait(); close(exited) }()
	p.addr = listen
	if err := waitListening(listen, exited, 20*time.Second); err != nil {
		p.stop()
		return nil, fmt.Errorf("%s: %v", name, err)
	}
	return p, nil
}

// startAgent runs `agent proxy` with args (the built binary, or in-process under pprof with
// -profile).
func startAgent(bin, name, profileName, listen string, args ...string) (*proc, error) {
	var env []string
	if *proxyAgentEnv != "" {
		env = strings.Split(*proxyAgentEnv, ",")
	}
	if *proxyProfile == "" {
		cmd := exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), env...)
		return startGoChild(name, cmd, listen)
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), benchChildEnv+"=agent", "APIPROXY_BENCH_ARGS="+strings.Join(args, "\x1f"),
		"APIPROXY_BENCH_PROFILE="+filepath.Join(*proxyProfile, profileName))
	cmd.Env = append(cmd.Env, env...)
	p, err := startGoChild(name, cmd, listen)
	if p != nil {
		p.profiled = true
	}
	return p, err
}

// buildAgentAt builds cmd/agent as it was at git revision rev, into dir.
func buildAgentAt(rev, dir string) (string, error) {
	src := filepath.Join(dir, "src-"+strings.NewReplacer("/", "_", "~", "_", "^", "_").Replace(rev))
	if err := os.MkdirAll(src, 0o755); err != nil {
		return "", err
	}
	archive := exec.Command("bash", "-c", `git archive "$1" | tar -x -C "$2"`, "archive", rev, src)
	if out, err := archive.CombinedOutput(); err != nil {
		return "", fmt.Errorf("git archive %s: %v\n%s", rev, err, out)
	}
	bin := filepath.Join(dir, "agent-old")
	build := exec.Command("go", "build", "-o", bin, "./cmd/agent")
	build.Dir = src
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building agent at %s: %v\n%s", rev, err, out)
	}
	return bin, nil
}

// metric is one row of a path's table.
type metric struct {
	name   string
	higher bool   // higher is better
	target string // issue 14's target for agent ÷ best peer
	ok     func(ratio, agent float64) bool
	format string
}

const (
	mBulk    = "bulk Gbit/s (4 tunnels)"
	mSetup   = "setups/s (8 workers)"
	mP50     = "echo RTT p50 µs (64 B, back to back)"
	mP99     = "echo RTT p99 µs (back to back)"
	mColdP50 = "echo RTT p50 µs (64 B, proxy woken from idle)"
	mColdP99 = "echo RTT p99 µs (woken from idle)"
	mC4P50   = "echo RTT p50 µs (64 B, 4 tunnels at once)"
	mC4P99   = "echo RTT p99 µs (4 tunnels at once)"
	mC16P50  = "echo RTT p50 µs (64 B, 16 tunnels at once)"
	mC16P99  = "echo RTT p99 µs (16 tunnels at once)"
	mRSS     = "RSS per idle tunnel KiB"
	mCPU     = "CPU s per GiB relayed"
	// The proxy's CPU per setup: on a machine where clients, sink and proxy share 2 cores, it is
	// what bounds setups/s.
	mSetupCPU = "CPU µs per setup"
)

func runProxyBench() ([]Table, error) {
	raiseNoFile(65536)
	if *proxyProfile != "" {
		if err := os.MkdirAll(*proxyProfile, 0o755); err != nil {
			return nil, err
		}
	}
	tg, err := startTarget()
	if err != nil {
		return nil, err
	}
	defer tg.l.Close()
	sink := tg.l.Addr().String()

	dir, err := os.MkdirTemp("", "apiproxy-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "agent")
	if out, err := exec.Command("go", "build", "-o", bin, "./cmd/agent").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("building agent: %v\n%s", err, out)
	}

	var all []*proc
	defer func() {
		for _, p := range all {
			p.stop()
		}
	}()
	versions := map[string]string{}

	// CONNECT path.
	connectProcs := []*proc{}
	listen, err := freeLoopbackAddr()
	if err != nil {
		return nil, err
	}
	ag, err := startAgent(bin, "agent", "agent-connect", listen, "proxy", "--listen", listen, "--upstream", sink,
		"--metrics-addr", "", "--max-tunnels", "0", "--shutdown-grace", "1s")
	if err != nil {
		return nil, err
	}
	ag.connect = sink
	all = append(all, ag)
	connectProcs = append(connectProcs, ag)
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	relayCmd := exec.Command(self)
	relayCmd.Env = append(os.Environ(), benchChildEnv+"=relay", "APIPROXY_BENCH_UPSTREAM="+sink)
	relay, err := startGoChild("minimal Go relay", relayCmd, "")
	if err != nil {
		return nil, err
	}
	relay.connect = sink
	all = append(all, relay)
	connectProcs = append(connectProcs, relay)

	// Transparent path.
	listenTCP, err := freeLoopbackAddr()
	if err != nil {
		return nil, err
	}
	agTCP, err := startAgent(bin, "agent --listen-tcp", "agent-tcp", listenTCP, "proxy", "--listen", "", "--listen-tcp", listenTCP,
		"--upstream", sink, "--metrics-addr", "", "--max-tunnels", "0", "--shutdown-grace", "1s")
	if err != nil {
		return nil, err
	}
	all = append(all, agTCP)
	tcpProcs := []*proc{agTCP}

	if *proxyCompare != "" {
		old, err := buildAgentAt(*proxyCompare, dir)
		if err != nil {
			return nil, err
		}
		name := "agent@" + *proxyCompare
		l1, _ := freeLoopbackAddr()
		o1, err := startGoChild(name, exec.Command(old, "proxy", "--listen", l1, "--upstream", sink, "--metrics-addr", "", "--max-tunnels", "0"), l1)
		if err != nil {
			return nil, err
		}
		o1.connect = sink
		l2, _ := freeLoopbackAddr()
		o2, err := startGoChild(name+" --listen-tcp", exec.Command(old, "proxy", "--listen", "", "--listen-tcp", l2, "--upstream", sink, "--metrics-addr", "", "--max-tunnels", "0"), l2)
		if err != nil {
			o1.stop()
			return nil, err
		}
		all = append(all, o1, o2)
		connectProcs = append(connectProcs, o1)
		tcpProcs = append(tcpProcs, o2)
	}

	if *proxyCompareArgs != "" {
		extra := strings.Fields(*proxyCompareArgs)
		name := "agent " + *proxyCompareArgs
		l1, _ := freeLoopbackAddr()
		o1, err := startGoChild(name, exec.Command(bin, append([]string{"proxy", "--listen", l1, "--upstream", sink, "--metrics-addr", "", "--max-tunnels", "0", "--shutdown-grace", "1s"}, extra...)...), l1)
		if err != nil {
			return nil, err
		}
		o1.connect = sink
		l2, _ := freeLoopbackAddr()
		o2, err := startGoChild(name+" --listen-tcp", exec.Command(bin, append([]string{"proxy", "--listen", "", "--listen-tcp", l2, "--upstream", sink, "--metrics-addr", "", "--max-tunnels", "0", "--shutdown-grace", "1s"}, extra...)...), l2)
		if err != nil {
			o1.stop()
			return nil, err
		}
		all = append(all, o1, o2)
		connectProcs = append(connectProcs, o1)
		tcpProcs = append(tcpProcs, o2)
	}

	var skipped []string
	if *proxyPeers {
		installPeers()
		for _, spec := range peerSpecs {
			p, v, err := startPeer(spec, sink)
			if err != nil {
				msg := fmt.Sprintf("%s skipped: %v", spec.name, err)
				fmt.Fprintln(os.Stderr, "peers: "+msg)
				skipped = append(skipped, msg)
				continue
			}
			versions[p.name] = v
			all = append(all, p)
			if spec.connect {
				connectProcs = append(connectProcs, p)
			} else {
				tcpProcs = append(tcpProcs, p)
			}
		}
	}

	// name → metric → values over rounds
	res := map[string]map[string][]float64{}
	add := func(p *proc, m string, v float64) {
		if res[p.name] == nil {
			res[p.name] = map[string][]float64{}
		}
		res[p.name][m] = append(res[p.name][m], v)
	}
	everyone := append(append([]*proc{}, connectProcs...), tcpProcs...)
	rotate := func(round int) []*proc {
		o := make([]*proc, 0, len(everyone))
		for i := range everyone {
			o = append(o, everyone[(i+round)%len(everyone)])
		}
		return o
	}
	for round := 0; round < *proxyRounds; round++ {
		fmt.Fprintf(os.Stderr, "proxy: round %d/%d\n", round+1, *proxyRounds)
		for _, p := range rotate(round) {
			if !measure("bulk") {
				break
			}
			g, cpu, err := bulk(p, 4, 1500*time.Millisecond)
			if err != nil {
				return nil, fmt.Errorf("bulk via %s: %w", p.name, err)
			}
			add(p, mBulk, g)
			add(p, mCPU, cpu)
		}
		for _, p := range rotate(round) {
			if !measure("setups") {
				break
			}
			s, cpu, err := setups(p, 8, 1500*time.Millisecond)
			if err != nil {
				return nil, fmt.Errorf("setups via %s: %w", p.name, err)
			}
			add(p, mSetup, s)
			add(p, mSetupCPU, cpu)
		}
		for _, p := range rotate(round) {
			if !measure("rtt") {
				break
			}
			p50, p99, err := rtt(p, 3000)
			if err != nil {
				return nil, fmt.Errorf("RTT via %s: %w", p.name, err)
			}
			add(p, mP50, p50)
			add(p, mP99, p99)
		}
		for _, p := range rotate(round) {
			if !measure("rtt") {
				break
			}
			for _, c := range []struct {
				n        int
				p50, p99 string
			}{{4, mC4P50, mC4P99}, {16, mC16P50, mC16P99}} {
				p50, p99, err := rttConcurrent(p, c.n, 12000/c.n)
				if err != nil {
					return nil, fmt.Errorf("RTT via %s, %d tunnels at once: %w", p.name, c.n, err)
				}
				add(p, c.p50, p50)
				add(p, c.p99, p99)
			}
		}
		if measure("rtt") {
			r, err := rttAll(rotate(round), 1000)
			if err != nil {
				return nil, fmt.Errorf("RTT: %w", err)
			}
			for _, p := range everyone {
				add(p, mColdP50, r[p.name][0])
				add(p, mColdP99, r[p.name][1])
			}
		}
	}
	fmt.Fprintf(os.Stderr, "proxy: memory with %d idle tunnels each\n", *proxyIdle)
	for _, p := range everyone {
		if !measure("idle") {
			break
		}
		v, err := idleRSS(p, *proxyIdle)
		if err != nil {
			return nil, fmt.Errorf("idle RSS via %s: %w", p.name, err)
		}
		add(p, mRSS, v)
	}

	atLeast := func(x float64) func(r, a float64) bool { return func(r, _ float64) bool { return r >= x } }
	atMost := func(x float64) func(r, a float64) bool { return func(r, _ float64) bool { return r <= x } }
	rssOK := func(_, a float64) bool { return a <= 4 }
	connectMetrics := []metric{
		{mBulk, true, "≥ 1.3", atLeast(1.3), "%.2f"},
		{mSetup, true, "≥ 1.0", atLeast(1.0), "%.0f"},
		{mP50, false, "≤ 1.25 (goal 1.0)", atMost(1.25), "%.0f"},
		{mP99, false, "", nil, "%.0f"},
		{mColdP50, false, "≤ 1.25 (goal 1.0)", atMost(1.25), "%.0f"},
		{mColdP99, false, "", nil, "%.0f"},
		{mC4P50, false, "≤ 1.0", atMost(1.0), "%.0f"},
		{mC4P99, false, "", nil, "%.0f"},
		{mC16P50, false, "≤ 1.0", atMost(1.0), "%.0f"},
		{mC16P99, false, "", nil, "%.0f"},
		{mRSS, false, "agent ≤ 4 KiB", rssOK, "%.1f"},
		{mCPU, false, "", nil, "%.2f"},
		{mSetupCPU, false, "", nil, "%.0f"},
	}
	tcpMetrics := []metric{
		{mBulk, true, "≥ 1.0", atLeast(1.0), "%.2f"},
		{mSetup, true, "≥ 1.0", atLeast(1.0), "%.0f"},
		{mP50, false, "≤ 1.0", atMost(1.0), "%.0f"},
		{mP99, false, "", nil, "%.0f"},
		{mColdP50, false, "≤ 1.0", atMost(1.0), "%.0f"},
		{mColdP99, false, "", nil, "%.0f"},
		{mC4P50, false, "≤ 1.0", atMost(1.0), "%.0f"},
		{mC4P99, false, "", nil, "%.0f"},
		{mC16P50, false, "≤ 1.0", atMost(1.0), "%.0f"},
		{mC16P99, false, "", nil, "%.0f"},
		{mRSS, false, "agent ≤ 4 KiB", rssOK, "%.1f"},
		{mCPU, false, "", nil, "%.2f"},
		{mSetupCPU, false, "", nil, "%.0f"},
	}
	notes := []string{fmt.Sprintf("medians of %d interleaved rounds (woken from idle: interleaved message by message); memory: %d idle tunnels each; the minimal Go relay is a reference, not a peer", *proxyRounds, *proxyIdle)}
	for _, p := range everyone {
		if v := versions[p.name]; v != "" {
			notes = append(notes, p.name+": "+v)
		}
	}
	notes = append(notes, skipped...)
	tables := []Table{
		pathTable("CONNECT path", ag, connectProcs[1:], connectMetrics, res, notes),
		pathTable("transparent TCP path", agTCP, tcpProcs[1:], tcpMetrics, res, nil),
	}
	return tables, nil
}

// pathTable is one path's table: the agent, the others, and agent ÷ best peer (the minimal relay
// is shown but not a peer).
func pathTable(title string, ag *proc, others []*proc, ms []metric, res map[string]map[string][]float64, notes []string) Table {
	t := Table{Title: title, Notes: notes}
	t.Header = []string{"metric", ag.name}
	for _, p := range others {
		t.Header = append(t.Header, p.name)
	}
	t.Header = append(t.Header, "agent ÷ best peer", "target", "holds")
	for _, m := range ms {
		if len(res[ag.name][m.name]) == 0 {
			continue // not measured (-measure)
		}
		row := []string{m.name, fmt.Sprintf(m.format, median(res[ag.name][m.name]))}
		a := median(res[ag.name][m.name])
		best, bestName := 0.0, ""
		for _, p := range others {
			v := median(res[p.name][m.name])
			row = append(row, fmt.Sprintf(m.format, v))
			if p.name == "minimal Go relay" || strings.HasPrefix(p.name, "agent") {
				continue
			}
			if bestName == "" || (m.higher && v > best) || (!m.higher && v < best) {
				best, bestName = v, p.name
			}
		}
		ratio := "-"
		holds := ""
		if bestName != "" && best > 0 {
			r := a / best
			ratio = fmt.Sprintf("%.2fx (%s)", r, bestName)
			if m.ok != nil {
				holds = "no"
				if m.ok(r, a) {
					holds = "yes"
				}
			}
		} else if m.ok != nil && m.name == mRSS {
			holds = "no"
			if m.ok(0, a) {
				holds = "yes"
			}
		}
		row = append(row, ratio, m.target, holds)
		t.Rows = append(t.Rows, row)
	}
	return t
}

func measure(what string) bool {
	for _, m := range strings.Split(*proxyOnly, ",") {
		if m == what {
			return true
		}
	}
	return false
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
