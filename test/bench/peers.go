package main

// The proxies users already run, started from Debian's packages next to `agent proxy` for the
// "proxy" suite: squid and tinyproxy (CONNECT), HAProxy (mode tcp) and nginx (stream module) for
// the transparent path. Each runs as a child process of this one, in the foreground, with its own
// configuration file in a temporary directory, listening on loopback only, and is stopped by PID
// at the end. A peer that cannot be installed or started is skipped with a message.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// proc is a proxy process under test (ours or a peer) and how to reach the sink through it.
type proc struct {
	name    string
	addr    string // where clients connect
	connect string // the CONNECT authority to ask for; "" on the transparent path
	pid     int
	stop    func()
	// profiled: an in-process agent under -profile; SIGUSR1 makes it write a heap profile.
	profiled bool
}

// peerSpec describes one Debian-packaged peer.
type peerSpec struct {
	name    string
	bin     string // absolute path of the executable the package installs
	pkgs    []string
	connect bool // a CONNECT proxy (else transparent TCP)
	version func() string
	// config writes the configuration into dir for a listener on listen relaying to sink, and
	// returns the command line.
	config func(dir, listen, sink string) ([]string, error)
}

var peerSpecs = []peerSpec{
	{
		name: "squid", bin: "/usr/sbin/squid", pkgs: []string{"squid"}, connect: true,
		version: func() string { return firstLine("squid", "-v") },
		config: func(dir, listen, sink string) ([]string, error) {
			_, sinkPort, _ := net.SplitHostPort(sink)
			conf := filepath.Join(dir, "squid.conf")
			// -N: one process in the foreground (no kid, no daemon); nothing cached, nothing logged
			// per request, CONNECT only to the sink's port, from loopback only.
			err := os.WriteFile(conf, []byte(`http_port `+listen+`
visible_hostname bench
acl to_sink port `+sinkPort+`
acl CONNECT method CONNECT
http_access allow localhost CONNECT to_sink
http_access deny all
cache deny all
cache_mem 0 MB
access_log none
cache_store_log none
cache_log `+filepath.Join(dir, "cache.log")+`
pid_filename `+filepath.Join(dir, "squid.pid")+`
coredump_dir `+dir+`
max_filedescriptors 20000
icp_port 0
htcp_port 0
dns_nameservers 127.0.0.1
udp_incoming_address 127.0.0.1
shutdown_lifetime 0 seconds
`), 0o644)
			return []string{"/usr/sbin/squid", "-N", "-f", conf}, err
		},
	},
	{
		name: "tinyproxy", bin: "/usr/bin/tinyproxy", pkgs: []string{"tinyproxy"}, connect: true,
		version: func() string { return firstLine("tinyproxy", "-v") },
		config: func(dir, listen, sink string) ([]string, error) {
			host, port, _ := net.SplitHostPort(listen)
			_, sinkPort, _ := net.SplitHostPort(sink)
			conf := filepath.Join(dir, "tinyproxy.conf")
			err := os.WriteFile(conf, []byte(`User nobody
Group nogroup
Port `+port+`
Listen `+host+`
Timeout 600
MaxClients 9000
Allow 127.0.0.1
ConnectPort `+sinkPort+`
DisableViaHeader Yes
LogLevel Critical
LogFile "`+filepath.Join(dir, "tinyproxy.log")+`"
PidFile "`+filepath.Join(dir, "tinyproxy.pid")+`"
`), 0o644)
			return []string{"/usr/bin/tinyproxy", "-d", "-c", conf}, err
		},
	},
	{
		name: "HAProxy", bin: "/usr/sbin/haproxy", pkgs: []string{"haproxy"},
		version: func() string { return firstLine("haproxy", "-v") },
		config: func(dir, listen, sink string) ([]string, error) {
			conf := filepath.Join(dir, "haproxy.cfg")
			// One thread per core, as the agent's GOMAXPROCS.
			err := os.WriteFile(conf, []byte(`global
    maxconn 9000
    nbthread 2
defaults
    mode tcp
    timeout connect 5s
    timeout client 10m
    timeout server 10m
frontend bench
    bind `+listen+`
    default_backend sink
backend sink
    server sink `+sink+`
`), 0o644)
			return []string{"/usr/sbin/haproxy", "-db", "-f", conf}, err
		},
	},
	{
		name: "nginx", bin: "/usr/sbin/nginx", pkgs: []string{"nginx", "libnginx-mod-stream"},
		version: func() string { return firstLine("nginx", "-v") },
		config: func(dir, listen, sink string) ([]string, error) {
			conf := filepath.Join(dir, "nginx.conf")
			module := "/usr/lib/nginx/modules/ngx_stream_module.so"
			if _, err := os.Stat(module); err != nil {
				return nil, fmt.Errorf("stream module missing (%s): install libnginx-mod-stream", module)
			}
			// One worker per core.
			err := os.WriteFile(conf, []byte(`load_module `+module+`;
daemon off;
worker_processes 2;
worker_rlimit_nofile 20000;
pid `+filepath.Join(dir, "nginx.pid")+`;
error_log `+filepath.Join(dir, "error.log")+` crit;
events { worker_connections 9000; }
stream {
    server {
        listen `+listen+`;
        proxy_pass `+sink+`;
        proxy_timeout 10m;
    }
}
`), 0o644)
			return []string{"/usr/sbin/nginx", "-p", dir, "-e", filepath.Join(dir, "error.log"), "-c", conf}, err
		},
	},
}

func firstLine(name string, args ...string) string {
	out, _ := exec.Command(name, args...).CombinedOutput()
	l, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return strings.TrimSpace(l)
}

// installPeers installs the packages of the peers whose executable is missing, with apt-get, without
// letting the packages' maintainer scripts start (or leave running) a system service. It returns a
// message per peer that stays unavailable.
func installPeers() {
	var missing []string
	for _, p := range peerSpecs {
		if _, err := os.Stat(p.bin); err != nil || (p.name == "nginx" && !fileExists("/usr/lib/nginx/modules/ngx_stream_module.so")) {
			missing = append(missing, p.pkgs...)
		}
	}
	if len(missing) == 0 {
		return
	}
	if os.Geteuid() != 0 {
		fmt.Fprintf(os.Stderr, "peers: packages %v missing and not root: those peers are skipped (apt-get install %s)\n", missing, strings.Join(missing, " "))
		return
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		fmt.Fprintf(os.Stderr, "peers: packages %v missing and no apt-get: those peers are skipped\n", missing)
		return
	}
	fmt.Fprintf(os.Stderr, "peers: installing %v with apt-get (services kept stopped)\n", missing)
	// policy-rc.d answering 101 keeps invoke-rc.d (the maintainer scripts) from starting services.
	const policy = "/usr/sbin/policy-rc.d"
	if !fileExists(policy) {
		if err := os.WriteFile(policy, []byte("#!/bin/sh\nexit 101\n"), 0o755); err == nil {
			defer os.Remove(policy)
		}
	}
	before := peerDaemons()
	install := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "apt-get", append([]string{"install", "-y", "--no-install-recommends"}, missing...)...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive", "RUNLEVEL=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, lastLines(string(out), 3))
		}
		return nil
	}
	err := install()
	for try := 0; err != nil && try < 3; try++ {
		if strings.Contains(err.Error(), "lock") {
			time.Sleep(5 * time.Second) // another apt-get holds the dpkg lock
		} else {
			_ = exec.Command("apt-get", "update").Run()
		}
		err = install()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "peers: apt-get install failed, missing peers are skipped: %v\n", err)
	}
	// A maintainer script may still have started a daemon: stop those that were not running before,
	// by PID.
	for pid, exe := range peerDaemons() {
		if _, ok := before[pid]; !ok {
			fmt.Fprintf(os.Stderr, "peers: stopping %s (pid %d) started by its package\n", exe, pid)
			_ = syscall.Kill(pid, syscall.SIGTERM)
		}
	}
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, " | ")
}

// peerDaemons lists running processes whose executable is one of the peers'.
func peerDaemons() map[int]string {
	bins := map[string]bool{}
	for _, p := range peerSpecs {
		bins[p.bin] = true
	}
	found := map[int]string{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil && bins[exe] {
			found[pid] = exe
		}
	}
	return found
}

// startPeer configures and starts p for sink; the returned proc's stop ends it (and its children)
// by PID.
func startPeer(p peerSpec, sink string) (*proc, string, error) {
	if !fileExists(p.bin) {
		return nil, "", fmt.Errorf("%s not installed (%s)", p.bin, strings.Join(p.pkgs, ", "))
	}
	dir, err := os.MkdirTemp("", "apiproxy-bench-"+strings.ToLower(p.name)+"-")
	if err != nil {
		return nil, "", err
	}
	// squid and tinyproxy drop privileges to proxy/nobody and must still write their logs here.
	_ = os.Chmod(dir, 0o777)
	listen, err := freeLoopbackAddr()
	if err != nil {
		os.RemoveAll(dir)
		return nil, "", err
	}
	argv, err := p.config(dir, listen, sink)
	if err != nil {
		os.RemoveAll(dir)
		return nil, "", err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	// Own process group: nginx's workers and squid's helpers are stopped with their parent.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	logf, err := os.Create(filepath.Join(dir, "stderr.log"))
	if err != nil {
		os.RemoveAll(dir)
		return nil, "", err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		os.RemoveAll(dir)
		return nil, "", err
	}
	logf.Close()
	pr := &proc{name: p.name, addr: listen, pid: cmd.Process.Pid}
	if p.connect {
		pr.connect = sink
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	pr.stop = func() {
		stopByPID(cmd.Process.Pid, exited)
		os.RemoveAll(dir)
	}
	if err := waitListening(listen, exited, 20*time.Second); err != nil {
		log, _ := os.ReadFile(filepath.Join(dir, "stderr.log"))
		pr.stop()
		return nil, "", fmt.Errorf("%v: %s", err, lastLines(string(log), 3))
	}
	if err := loopbackOnly(pr.pid); err != nil {
		pr.stop()
		return nil, "", err
	}
	return pr, p.version(), nil
}

// stopByPID ends pid (SIGTERM, then SIGKILL after 5 s) and whatever is left of its process group.
func stopByPID(pid int, exited <-chan struct{}) {
	_ = syscall.Kill(pid, syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		_ = syscall.Kill(pid, syscall.SIGKILL)
		<-exited
	}
	// Children (nginx workers) that outlived their parent: the group is ours alone (Setpgid).
	_ = syscall.Kill(-pid, syscall.SIGKILL)
}

func freeLoopbackAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func waitListening(addr string, exited <-chan struct{}, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-exited:
			return errors.New("exited at start")
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not listening on %s: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// processTree returns pid and its descendants.
func processTree(pid int) []int {
	children := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if f := procStatFields(p); len(f) > 1 {
			if pp, err := strconv.Atoi(f[1]); err == nil {
				children[pp] = append(children[pp], p)
			}
		}
	}
	tree := []int{pid}
	for i := 0; i < len(tree); i++ {
		tree = append(tree, children[tree[i]]...)
	}
	return tree
}

// procStatFields returns the fields of /proc/PID/stat after the command name: [0] is the state,
// [1] the parent, [11] utime, [12] stime.
func procStatFields(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(string(b[i+1:]))
}

// cpuSeconds is the user+system CPU time of pid and its descendants.
func cpuSeconds(pid int) float64 {
	var ticks float64
	for _, p := range processTree(pid) {
		if f := procStatFields(p); len(f) > 12 {
			u, _ := strconv.ParseFloat(f[11], 64)
			s, _ := strconv.ParseFloat(f[12], 64)
			ticks += u + s
		}
	}
	return ticks / 100 // USER_HZ is 100 on Linux
}

// rssKiB is the resident memory of pid and its descendants.
func rssKiB(pid int) (float64, error) {
	var total float64
	for _, p := range processTree(pid) {
		f, err := os.Open(fmt.Sprintf("/proc/%d/status", p))
		if err != nil {
			continue
		}
		s := bufio.NewScanner(f)
		for s.Scan() {
			if strings.HasPrefix(s.Text(), "VmRSS:") {
				if fs := strings.Fields(s.Text()); len(fs) > 1 {
					v, _ := strconv.ParseFloat(fs[1], 64)
					total += v
				}
			}
		}
		f.Close()
	}
	if total == 0 {
		return 0, fmt.Errorf("no RSS for pid %d", pid)
	}
	return total, nil
}

// loopbackOnly fails when any process of pid's tree listens on a non-loopback TCP address.
func loopbackOnly(pid int) error {
	inodes := map[string]bool{}
	for _, p := range processTree(pid) {
		fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p))
		for _, fd := range fds {
			if l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", p, fd.Name())); err == nil && strings.HasPrefix(l, "socket:[") {
				inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
			}
		}
	}
	for _, file := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(file)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) < 10 || f[3] != "0A" || !inodes[f[9]] { // 0A: LISTEN
				continue
			}
			host, _, _ := strings.Cut(f[1], ":")
			loop := false
			switch len(host) {
			case 8: // IPv4, little-endian: 127.x.x.x ends in 7F
				loop = strings.HasSuffix(host, "7F")
			case 32: // ::1, or ::ffff:127.x.x.x
				loop = host == "00000000000000000000000001000000" ||
					(strings.HasPrefix(host, "0000000000000000FFFF0000") && strings.HasSuffix(host, "7F"))
			}
			if !loop {
				return fmt.Errorf("pid %d listens on a non-loopback address (%s in %s): stopped", pid, f[1], file)
			}
		}
	}
	return nil
}
