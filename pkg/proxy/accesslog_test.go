package proxy

import (
	"bytes"
	"errors"
	"regexp"
	"strings"
	"testing"
	"time"

	"k8s.io/klog/v2/textlogger"

	"github.com/apiproxy/apiproxy/test/testnet"
)

// The access line must read exactly like the line klog wrote before through the agent's logger
// named "proxy" (tools and people grep it):
// same header shape, same message, keys, order and quoting.
func TestAccessLineIsKlogText(t *testing.T) {
	tl := &tunnelLog{kind: KindConnect, source: "127.0.0.1:5555", authority: "kubernetes.default.svc:443",
		dialed: "10.0.0.1:6443", result: ResultRelayError, id: "abcd-7", up: 1234, down: 56789,
		identity: &Identity{User: "system:serviceaccount:ns:sa"}, err: errors.New(`read: "connection" reset`)}
	d := 1234567 * time.Nanosecond
	var ours testnet.SyncBuffer
	s := &Server{cfg: Config{AccessLog: &ours}}
	now := time.Date(2026, 3, 4, 5, 6, 7, 890123456, time.Local)
	s.writeAccessLine(tl, now, d)

	var theirs bytes.Buffer
	kl := textlogger.NewLogger(textlogger.NewConfig(textlogger.Output(&theirs))).WithName("proxy")
	kl.Info("tunnel", "id", tl.id, "listener", tl.kind, "peer", tl.source, "authority", tl.authority,
		"dialed", tl.dialed, "bytesUp", tl.up, "bytesDown", tl.down, "duration", d.Round(time.Microsecond),
		"result", tl.result, "user", tl.identity.User, "error", tl.err.Error())

	line := ours.String()
	if strings.Count(line, "\n") != 1 || !strings.HasSuffix(line, "\n") {
		t.Fatalf("not one line: %q", line)
	}
	header := regexp.MustCompile(`^I0304 05:06:07\.890123 +[0-9]+ accesslog\.go:[0-9]+\] `)
	if !header.MatchString(line) {
		t.Fatalf("header of %q is not klog's", line)
	}
	body := func(l string) string { return l[strings.Index(l, "] ")+2:] }
	if got, want := body(line), body(theirs.String()); got != want {
		t.Fatalf("access line differs from klog's:\n ours:  %q\n klog:  %q", got, want)
	}
}

func TestTunnelLineGoesToTheAccessLog(t *testing.T) {
	up := echoServer(t, "tcp", "127.0.0.1:0")
	var access testnet.SyncBuffer
	tp := startProxy(t, Config{Upstream: up, AccessLog: &access})
	c, br, resp := connect(t, tp.addr, connectHead("kubernetes.default.svc:443"))
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	assertEchoed(t, c, br, "hello")
	waitFor(t, func() bool { return strings.Contains(access.String(), "\n") })
	line := access.String()
	for _, want := range []string{`"tunnel" logger="proxy" id=`, `authority="kubernetes.default.svc:443"`, `dialed="` + up + `"`,
		"bytesUp=5", "bytesDown=9", `result="ok"`} {
		if !strings.Contains(line, want) {
			t.Errorf("access line %q lacks %s", line, want)
		}
	}
	for _, l := range tp.logs.all() {
		if strings.Contains(l, "kubernetes.default.svc:443") {
			t.Errorf("the tunnel line also went to the logger: %q", l)
		}
	}
}
