package hops

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"strings"
	"syscall"
	"testing"

	"github.com/apiproxy/apiproxy/pkg/tunnel"
)

func TestConnectAnswersExplained(t *testing.T) {
	for code, want := range map[int]string{
		407: "--auth tokenreview",
		403: "tunnels.apiproxy.io",
		502: "refused the proxy's connection",
		504: "timed out",
		503: "--max-tunnels",
		405: "not an apiproxy CONNECT proxy",
	} {
		f := DialError(fmt.Errorf("wrapped: %w", &tunnel.ConnectError{Proxy: "p:1", StatusCode: code, Status: fmt.Sprint(code, " X")}), "http://p:1")
		if f.Hop != Connect || !strings.Contains(f.Error(), want) || !strings.Contains(f.Error(), "http://p:1") {
			t.Errorf("%d: %+v, want hop connect and %q", code, f, want)
		}
	}
}

func TestDialAndTLSFailures(t *testing.T) {
	if f := DialError(context.DeadlineExceeded, "p:1"); f.Hop != TCP || !strings.Contains(f.Error(), "did not answer in time") {
		t.Errorf("timeout: %+v", f)
	}
	if f := DialError(errors.New("connection refused"), "p:1"); f.Hop != TCP || !strings.Contains(f.Error(), "cannot reach proxy p:1") {
		t.Errorf("refused: %+v", f)
	}
	if f := TLSError(x509.HostnameError{Certificate: &x509.Certificate{}, Host: "x"}, "p:1", "x", "cl02"); f.Hop != TLS || !strings.Contains(f.Fix, "--tls-server-name") {
		t.Errorf("hostname: %+v", f)
	}
	if f := TLSError(x509.UnknownAuthorityError{}, "p:1", "x", "cl02"); !strings.Contains(f.Error(), `context "cl02"'s certificate authority`) {
		t.Errorf("unknown authority: %+v", f)
	}
}

// A proxy that accepts TCP and closes before answering (agent proxy --allow-source refusing this
// source) is a connect-hop failure naming --allow-source, not "cannot reach".
func TestClosedWithoutAnswer(t *testing.T) {
	for _, err := range []error{syscall.ECONNRESET, io.EOF, io.ErrUnexpectedEOF} {
		f := DialError(fmt.Errorf("CONNECT a:443 via proxy p:1: %w", err), "http://p:1")
		if f.Hop != Connect || !strings.Contains(f.Error(), "--allow-source") || !strings.Contains(f.Error(), "closed the connection") {
			t.Errorf("%v: %+v", err, f)
		}
	}
}

func TestResetAtTCP(t *testing.T) {
	if f := TCPError(fmt.Errorf("dial tcp p:1: connect: %w", syscall.ECONNRESET), "p:1"); f.Hop != TCP || !strings.Contains(f.Fix, "--allow-source") {
		t.Errorf("reset: %+v", f)
	}
}
