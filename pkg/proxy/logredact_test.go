package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// redactProbe is a proxy whose every output a client's bytes can reach is captured: the access
// log (or, on the second server, the logger's tunnel line) and the audit log.
type redactProbe struct {
	servers []*testProxy
	outputs []*syncBuf
}

// newRedactProbe starts two proxies that check a token (the access-log one and the logger one),
// both refusing it without dialing anything.
func newRedactProbe(t testing.TB) *redactProbe {
	p := &redactProbe{}
	for _, accessLog := range []bool{true, false} {
		var access, audit syncBuf
		cfg := Config{Upstream: "127.0.0.1:6443", Auth: denyAll{}, Audit: NewAuditLog(&audit),
			HeaderTimeout: 2 * time.Second, Dialer: &recordingDialer{fail: errors.New("not dialed")}}
		if accessLog {
			cfg.AccessLog = &access
		}
		p.servers = append(p.servers, startProxy(t, cfg))
		p.outputs = append(p.outputs, &access, &audit)
	}
	return p
}

// send gives head to each server (then half-closes), reads the answer and waits for the
// connection to be settled (its line written), and returns the status lines answered.
func (p *redactProbe) send(t testing.TB, head []byte) []string {
	var statuses []string
	for _, tp := range p.servers {
		before := tp.settled()
		c, err := net.Dial("tcp", tp.addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write(head)
		c.(*net.TCPConn).CloseWrite()
		answer, _ := io.ReadAll(c)
		c.Close()
		status, _, _ := strings.Cut(string(answer), "\r\n")
		statuses = append(statuses, status)
		waitFor(t, func() bool { return tp.settled() > before })
	}
	return statuses
}

// outputs returns every output's text so far: access logs, audit logs, logger lines.
func (p *redactProbe) texts() []string {
	var out []string
	for _, o := range p.outputs {
		out = append(out, o.String())
	}
	for _, tp := range p.servers {
		out = append(out, strings.Join(tp.logs.all(), "\n"))
	}
	return out
}

// since returns what was written after before (an earlier texts()), all outputs together.
func (p *redactProbe) since(before []string) string {
	var b strings.Builder
	for i, t := range p.texts() {
		b.WriteString(t[len(before[i]):])
		b.WriteString("\n")
	}
	return b.String()
}

// settled counts the connections done with (their line and audit record written).
func (tp *testProxy) settled() float64 {
	var n float64
	mfs, _ := tp.reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == "apiproxy_proxy_tunnels_total" {
			for _, m := range mf.GetMetric() {
				n += m.GetCounter().GetValue()
			}
		}
	}
	return n
}

const secretToken = "eyJhbGciOiJSUzI1NiJ9.c2VjcmV0LXRva2Vu.Zq7XvW3kP9mT2rYc"

// Issue 24 item 2: a malformed Proxy-Authorization line (no colon, a control byte in the value, a
// space before the colon, the token folded onto a line of its own) is refused with 400, and no log
// quotes the line: the error names the header line and what is wrong with it.
func TestMalformedHeadersNeverReachTheLogs(t *testing.T) {
	p := newRedactProbe(t)
	const connect = "CONNECT kubernetes.default.svc:443 HTTP/1.1\r\nHost: kubernetes.default.svc:443\r\n"
	for _, c := range []struct{ lines, want string }{
		{"Proxy-Authorization Bearer " + secretToken + "\r\n", "malformed header line 2 (Proxy-Authorization): no colon"},
		{"Proxy-Authorization: Bearer " + secretToken + "\x01\r\n", "malformed header line 2 (Proxy-Authorization): a control character in the value"},
		{"Proxy-Authorization: Bearer " + secretToken + "\rX\r\n", "malformed header line 2 (Proxy-Authorization): a control character"},
		{"Proxy-Authorization : Bearer " + secretToken + "\r\n", "malformed header line 2 (Proxy-Authorization): a character not allowed in a header name"},
		{"Proxy-Authorization: Bearer\r\n" + secretToken + "\r\n", "malformed header line 3: no colon"},
		{"Proxy-Authorization: Bearer\r\n \x00" + secretToken + "\r\n", "malformed header line 3 (Proxy-Authorization): a control character"},
		{"X-" + secretToken + " Bearer\r\n", "malformed header line 2: no colon"},
	} {
		before := p.texts()
		statuses := p.send(t, []byte(connect+c.lines+"\r\n"))
		for _, s := range statuses {
			if !strings.HasPrefix(s, "HTTP/1.1 400 ") {
				t.Errorf("%q: answered %q, want 400", c.lines, s)
			}
		}
		logs := p.since(before)
		if strings.Count(logs, c.want) < 4 { // two servers, each a tunnel line and an audit record
			t.Errorf("%q: the logs don't say %q:\n%s", c.lines, c.want, logs)
		}
		for i := 0; i+8 <= len(secretToken); i++ {
			if strings.Contains(logs, secretToken[i:i+8]) {
				t.Fatalf("%q: the logs contain %q of the token:\n%s", c.lines, secretToken[i:i+8], logs)
			}
		}
	}
}

// FuzzLogsNeverShowHeaderText: whatever the head, a token placed anywhere after its request line
// (in a header's value, name, or a line of its own) never appears, even in part, in the access log,
// the logger's line or the audit log.
func FuzzLogsNeverShowHeaderText(f *testing.F) {
	for _, s := range []string{
		"CONNECT x:443 HTTP/1.1\r\nProxy-Authorization Bearer \r\n\r\n",
		"CONNECT x:443 HTTP/1.1\r\nProxy-Authorization: Bearer \x01\r\n\r\n",
		"CONNECT x:443 HTTP/1.1\r\nProxy-Authorization: Bearer \r\n\r\n",
		"CONNECT x:443 HTTP/1.1\r\nA: b\r\n c\r\n\r\n",
		"GET / HTTP/1.1\r\nAuthorization: Basic \r\n\r\n",
		"CONNECT x:443 HTTP/1.1\nHost: x\n: \n\n",
		"CONNECT x:443 HTTP/1.1\r\n\r\n",
	} {
		f.Add([]byte(s), uint16(len(s)-4))
	}
	p := newRedactProbe(f)
	f.Fuzz(func(t *testing.T, head []byte, at uint16) {
		nl := bytes.IndexByte(head, '\n')
		if nl < 0 || len(head) > 4096 {
			return
		}
		// The token goes somewhere after the request line's end.
		pos := nl + 1 + int(at)%(len(head)-nl)
		input := append(append(append([]byte{}, head[:pos]...), secretToken...), head[pos:]...)
		before := p.texts()
		p.send(t, input)
		logs := p.since(before)
		requestLine := string(head[:nl])
		for i := 0; i+8 <= len(secretToken); i++ {
			piece := secretToken[i : i+8]
			if strings.Contains(logs, piece) && !strings.Contains(requestLine, piece) {
				t.Fatalf("the logs contain %q of a token sent after the request line:\n%s", piece, logs)
			}
		}
	})
}
