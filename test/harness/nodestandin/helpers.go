package nodestandin

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/apiproxy/apiproxy/test/testnet"
)

// EchoServer listens on 127.0.0.1 and answers every connection with prefix followed by what it
// receives, until the client half-closes; a pod port mapped to it proves data flows both ways.
func EchoServer(t testing.TB, prefix string) string {
	t.Helper()
	return testnet.Serve(t, "tcp", "127.0.0.1:0", func(c net.Conn) {
		_, _ = io.WriteString(c, prefix)
		_, _ = io.Copy(c, c)
	})
}

// UpperExec is an ExecFunc: `echo ARGS...` prints its arguments; any other command copies stdin to
// stdout in upper case and writes "done" to stderr; `exit N` exits with status N.
func UpperExec(_ context.Context, cmd []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(cmd) == 0 {
		return ExitCode(127)
	}
	switch cmd[0] {
	case "echo":
		_, err := fmt.Fprintln(stdout, strings.Join(cmd[1:], " "))
		return err
	case "exit":
		code := 1
		if len(cmd) > 1 {
			_, _ = fmt.Sscan(cmd[1], &code)
		}
		return ExitCode(code)
	}
	b, err := io.ReadAll(stdin)
	if err != nil {
		return err
	}
	if _, err := stdout.Write(bytes.ToUpper(b)); err != nil {
		return err
	}
	_, err = io.WriteString(stderr, "done\n")
	return err
}

var forwardingFrom = regexp.MustCompile(`Forwarding from (127\.0\.0\.1:\d+) ->`)

// PortForward runs `kubectl ARGS...` (a `port-forward` with a local port of 0 or ":P"), with env
// added to the environment, and returns the local address it listens on. The process is stopped,
// by its PID, when the test ends.
func PortForward(t testing.TB, kubectl string, env []string, args ...string) string {
	t.Helper()
	cmd := exec.Command(kubectl, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr testnet.SyncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if m := forwardingFrom.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case found <- m[1]:
				default:
				}
			}
		}
		_ = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	select {
	case addr := <-found:
		return addr
	case <-exited:
		t.Fatalf("kubectl %v exited: %s", args, stderr.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("kubectl %v printed no forwarding address in 60s: %s", args, stderr.String())
	}
	return ""
}

// RoundTrip connects to addr, expects the echo server's prefix then msg back, and returns what it
// read; it fails the test otherwise.
func RoundTrip(t testing.TB, addr, prefix, msg string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	_ = c.(*net.TCPConn).CloseWrite()
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading from %s: %v (got %q)", addr, err, b)
	}
	if string(b) != prefix+msg {
		t.Fatalf("through %s: got %q, want %q", addr, b, prefix+msg)
	}
}

// Exec runs `kubectl ARGS...` with stdin and env added to the environment, bounded by ctx.
func Exec(ctx context.Context, kubectl string, env []string, stdin string, args ...string) (stdout, stderr string, err error) {
	cmd := exec.CommandContext(ctx, kubectl, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = strings.NewReader(stdin)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}
