package realnode

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// procs starts the components, each with a pid file (pid and kernel start time) in StateDir/pids,
// so that this run's teardown, or the next run's after a kill, stops exactly these processes.
type procs struct{}

func pidDir() string { return filepath.Join(StateDir, "pids") }

func (p *procs) start(name string, cmd *exec.Cmd) error {
	if err := os.MkdirAll(filepath.Join(StateDir, "logs"), 0o700); err != nil {
		return err
	}
	if err := os.MkdirAll(pidDir(), 0o700); err != nil {
		return err
	}
	log, err := os.OpenFile(filepath.Join(StateDir, "logs", name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer log.Close()
	cmd.Stdout, cmd.Stderr = log, log
	// Own process group: a Ctrl-C of `go test` reaches the test binary, whose teardown stops these.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", name, err)
	}
	pid := cmd.Process.Pid
	st, err := startTime(pid)
	if err != nil {
		return fmt.Errorf("starting %s: %w", name, err)
	}
	// Reap it when it exits so it does not linger as a zombie that still "exists".
	go func() { _ = cmd.Wait() }()
	return os.WriteFile(filepath.Join(pidDir(), name+".pid"), fmt.Appendf(nil, "%d %d\n", pid, st), 0o600)
}

// startTime is the process's start time in clock ticks since boot (/proc/PID/stat field 22), which
// tells a reused PID from ours.
func startTime(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	fields := strings.Fields(s[i+1:])
	if len(fields) < 20 {
		return 0, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	return strconv.ParseUint(fields[19], 10, 64)
}

// stopRecorded stops the process named in the pid file, if it is still the one we started: SIGTERM,
// then SIGKILL after grace. The pid file goes.
func stopRecorded(name string, grace time.Duration) error {
	f := filepath.Join(pidDir(), name+".pid")
	b, err := os.ReadFile(f)
	if os.IsNotExist(err) {
		return nil
	} else if err != nil {
		return err
	}
	var pid int
	var st uint64
	if _, err := fmt.Sscanf(string(b), "%d %d", &pid, &st); err == nil && pid > 1 {
		if cur, err := startTime(pid); err == nil && cur == st {
			stopPID(pid, grace)
		}
	}
	return os.Remove(f)
}

// stopPID sends SIGTERM, waits up to grace for the process to go, then SIGKILLs it.
func stopPID(pid int, grace time.Duration) {
	_ = syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		if !alive(pid) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	for range 100 {
		if !alive(pid) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || len(s) < i+3 || s[i+2] != 'Z'
}

// cmdlines lists every process's PID and argv.
func cmdlines() map[int][]string {
	out := map[int][]string{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(b) == 0 {
			continue
		}
		out[pid] = strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
	}
	return out
}
