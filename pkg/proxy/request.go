package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/textproto"
	"strconv"
	"strings"
)

// ConnectRequest is a parsed CONNECT request head.
type ConnectRequest struct {
	Method    string
	Authority string // "host:port" as sent, IPv6 hosts in brackets
	Host      string // the host part, without brackets
	Port      uint16
	Proto     string
	Header    textproto.MIMEHeader
}

// RequestError is a request the proxy refuses, with the HTTP status to answer.
type RequestError struct {
	Status int
	Reason string
}

func (e *RequestError) Error() string {
	return fmt.Sprintf("%d %s: %s", e.Status, http.StatusText(e.Status), e.Reason)
}

func badRequest(format string, args ...any) error {
	return &RequestError{Status: http.StatusBadRequest, Reason: fmt.Sprintf(format, args...)}
}

// ParseConnectRequest reads one request head (request line and headers, up to the empty line) from
// br. Bytes after the head stay buffered in br. The caller bounds the size (by limiting the reader
// under br) and the time (by a read deadline). A well-formed request with another method gives a
// *RequestError with status 405; anything malformed gives status 400.
func ParseConnectRequest(br *bufio.Reader) (*ConnectRequest, error) {
	tp := textproto.NewReader(br)
	line, err := tp.ReadLine()
	if err != nil {
		return nil, readErr("request line", err)
	}
	method, rest, ok1 := strings.Cut(line, " ")
	target, proto, ok2 := strings.Cut(rest, " ")
	if !ok1 || !ok2 || method == "" || target == "" || strings.ContainsAny(proto, " \t") {
		return nil, badRequest("malformed request line %q", truncate(line))
	}
	if !isToken(method) {
		return nil, badRequest("malformed method %q", truncate(method))
	}
	if _, _, ok := http.ParseHTTPVersion(proto); !ok || !strings.HasPrefix(proto, "HTTP/1.") {
		return nil, badRequest("unsupported protocol %q, want HTTP/1.x", truncate(proto))
	}
	hdr, err := tp.ReadMIMEHeader()
	if err != nil {
		return nil, readErr("headers", err)
	}
	for name := range hdr {
		if !isToken(name) {
			return nil, badRequest("malformed header name %q", truncate(name))
		}
	}
	if method != http.MethodConnect {
		return nil, &RequestError{Status: http.StatusMethodNotAllowed, Reason: fmt.Sprintf("method %s is not allowed, only CONNECT", method)}
	}
	host, port, err := ParseAuthority(target)
	if err != nil {
		return nil, badRequest("%v", err)
	}
	return &ConnectRequest{Method: method, Authority: target, Host: host, Port: port, Proto: proto, Header: hdr}, nil
}

// ParseAuthority checks a CONNECT authority "host:port" (IPv6 in brackets) and splits it.
func ParseAuthority(authority string) (host string, port uint16, err error) {
	h, p, err := net.SplitHostPort(authority)
	if err != nil {
		return "", 0, fmt.Errorf("malformed authority %q: want HOST:PORT", truncate(authority))
	}
	n, err := strconv.ParseUint(p, 10, 16)
	if err != nil || n == 0 || p[0] == '+' {
		return "", 0, fmt.Errorf("malformed authority %q: port must be 1-65535", truncate(authority))
	}
	if h == "" || len(h) > 253 {
		return "", 0, fmt.Errorf("malformed authority %q: empty or too long host", truncate(authority))
	}
	bracketed := strings.HasPrefix(authority, "[")
	if strings.Contains(h, ":") || bracketed {
		a, err := netip.ParseAddr(h)
		if err != nil || !a.Is6() || a.Zone() != "" || !bracketed {
			return "", 0, fmt.Errorf("malformed authority %q: bad IPv6 address", truncate(authority))
		}
	} else if !isHostname(h) {
		return "", 0, fmt.Errorf("malformed authority %q: bad host name", truncate(authority))
	}
	return h, uint16(n), nil
}

func readErr(what string, err error) error {
	var re *RequestError
	if errors.As(err, &re) {
		return err
	}
	var ne net.Error
	if errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, errHeadTooLarge) {
		return fmt.Errorf("reading %s: %w", what, err)
	}
	return badRequest("malformed %s: %v", what, err)
}

// errHeadTooLarge is returned by the size-limiting reader under the parser.
var errHeadTooLarge = errors.New("request head too large")

// limitedReader is io.LimitedReader with an error of its own when the limit is hit, so a head that
// is too large is told apart from a client that went away.
type limitedReader struct {
	r io.Reader
	n int64
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errHeadTooLarge
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	return n, err
}

func isToken(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`()<>@,;:\"/[]?={}`, c) >= 0 {
			return false
		}
	}
	return s != ""
}

func isHostname(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '.', c == '_':
		default:
			return false
		}
	}
	return true
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
