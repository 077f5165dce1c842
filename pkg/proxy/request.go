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
//
// Errors never quote the head's text, only the authority: they reach the access and audit logs,
// and a header line is where a client's credentials are (a malformed Proxy-Authorization line
// would otherwise put its token in the logs). A header is named only when its name is a common
// one (headerLabel).
func ParseConnectRequest(br *bufio.Reader) (*ConnectRequest, error) {
	tp := textproto.NewReader(br)
	line, err := tp.ReadLine()
	if err != nil {
		return nil, readErr("request line", err)
	}
	method, rest, ok1 := strings.Cut(line, " ")
	target, proto, ok2 := strings.Cut(rest, " ")
	if !ok1 || !ok2 || method == "" || target == "" || strings.ContainsAny(proto, " \t") {
		return nil, badRequest("malformed request line: want CONNECT HOST:PORT HTTP/1.1")
	}
	if !isToken(method) {
		return nil, badRequest("malformed method in the request line")
	}
	if _, _, ok := http.ParseHTTPVersion(proto); !ok || !strings.HasPrefix(proto, "HTTP/1.") {
		return nil, badRequest("unsupported protocol in the request line, want HTTP/1.x")
	}
	hdr, err := readHeaders(tp)
	if err != nil {
		return nil, err
	}
	if method != http.MethodConnect {
		reason := "this method is not allowed, only CONNECT"
		if knownMethods[method] {
			reason = fmt.Sprintf("method %s is not allowed, only CONNECT", method)
		}
		return nil, &RequestError{Status: http.StatusMethodNotAllowed, Reason: reason}
	}
	host, port, err := ParseAuthority(target)
	if err != nil {
		return nil, badRequest("%v", err)
	}
	return &ConnectRequest{Method: method, Authority: target, Host: host, Port: port, Proto: proto, Header: hdr}, nil
}

var knownMethods = map[string]bool{"GET": true, "HEAD": true, "POST": true, "PUT": true, "DELETE": true,
	"OPTIONS": true, "TRACE": true, "PATCH": true, "PRI": true}

// readHeaders reads the header lines up to the empty line, as textproto.Reader.ReadMIMEHeader
// does (obsolete line folding included), with errors that say which line and what is wrong with it
// but never quote it.
func readHeaders(tp *textproto.Reader) (textproto.MIMEHeader, error) {
	hdr := textproto.MIMEHeader{}
	last := "" // the canonical name of the previous header, for continuation lines
	for n := 1; ; n++ {
		line, err := tp.ReadLine()
		if err != nil {
			return nil, readErr("headers", err)
		}
		if line == "" {
			return hdr, nil
		}
		if line[0] == ' ' || line[0] == '\t' {
			// Obsolete line folding: the value goes on, after one space.
			if last == "" {
				return nil, headerError(n, "", "a continuation line (starting with a space) with no header before it")
			}
			value := strings.Trim(line, " \t")
			if !validHeaderValue(value) {
				return nil, headerError(n, last, "a control character in the value")
			}
			vs := hdr[last]
			vs[len(vs)-1] += " " + value
			continue
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok {
			first, _, _ := strings.Cut(line, " ")
			return nil, headerError(n, first, "no colon after the name")
		}
		if !isToken(name) {
			return nil, headerError(n, strings.TrimRight(name, " \t"), "a character not allowed in a header name (a space before the colon?)")
		}
		key := textproto.CanonicalMIMEHeaderKey(name)
		value = strings.Trim(value, " \t")
		if !validHeaderValue(value) {
			return nil, headerError(n, key, "a control character in the value")
		}
		hdr[key] = append(hdr[key], value)
		last = key
	}
}

// headerError is a 400 for header line n (1 is the line after the request line).
func headerError(n int, name, reason string) error {
	return badRequest("malformed header line %d%s: %s", n, headerLabel(name), reason)
}

// headerLabel names a header in an error, " (Proxy-Authorization)", when name is a common header
// name; any other text could be a credential (a token on a line of its own, a value split from
// its name), so it is left out.
func headerLabel(name string) string {
	if !isToken(name) {
		return ""
	}
	key := textproto.CanonicalMIMEHeaderKey(name)
	if !commonHeaders[key] {
		return ""
	}
	return " (" + key + ")"
}

var commonHeaders = map[string]bool{"Host": true, "Proxy-Authorization": true, "Authorization": true,
	"Proxy-Connection": true, "Connection": true, "User-Agent": true, "Content-Length": true,
	"Transfer-Encoding": true, "Keep-Alive": true, "Accept": true, "Accept-Encoding": true, "Te": true,
	"Upgrade": true, "Via": true, "Forwarded": true, "X-Forwarded-For": true, "Cookie": true}

// validHeaderValue reports whether v has no control character other than a tab (RFC 9110 field
// values; textproto refuses the same bytes).
func validHeaderValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; (c < ' ' && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
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
	// textproto's errors quote the line: say only what was being read.
	return badRequest("malformed %s", what)
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
