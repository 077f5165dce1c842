package proxy

import (
	"bufio"
	"errors"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
)

func parse(s string) (*ConnectRequest, error) {
	return ParseConnectRequest(bufio.NewReader(strings.NewReader(s)))
}

func TestParseConnectRequest(t *testing.T) {
	req, err := parse("CONNECT [::1]:6443 HTTP/1.1\r\nHost: [::1]:6443\r\nUser-Agent: x\r\n\r\nPIPELINED")
	if err != nil {
		t.Fatal(err)
	}
	if req.Host != "::1" || req.Port != 6443 || req.Authority != "[::1]:6443" || req.Header.Get("User-Agent") != "x" {
		t.Fatalf("%+v", req)
	}
	if _, err := parse("CONNECT kubernetes.default.svc:443 HTTP/1.0\n\n"); err != nil {
		t.Fatalf("bare LF and HTTP/1.0 are fine: %v", err)
	}
	for in, status := range map[string]int{
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n":               http.StatusMethodNotAllowed,
		"POST http://x:1/ HTTP/1.1\r\n\r\n":               http.StatusMethodNotAllowed,
		"CONNECT x:443\r\n\r\n":                           http.StatusBadRequest,
		"CONNECT x:443 HTTP/2.0\r\n\r\n":                  http.StatusBadRequest,
		"CONNECT x:443 FOO\r\n\r\n":                       http.StatusBadRequest,
		"CONNECT  x:443 HTTP/1.1\r\n\r\n":                 http.StatusBadRequest,
		"CONNECT x:443 HTTP/1.1 extra\r\n\r\n":            http.StatusBadRequest,
		"CON(NECT x:443 HTTP/1.1\r\n\r\n":                 http.StatusBadRequest,
		"CONNECT x HTTP/1.1\r\n\r\n":                      http.StatusBadRequest,
		"CONNECT x:0 HTTP/1.1\r\n\r\n":                    http.StatusBadRequest,
		"CONNECT x:65536 HTTP/1.1\r\n\r\n":                http.StatusBadRequest,
		"CONNECT x:+80 HTTP/1.1\r\n\r\n":                  http.StatusBadRequest,
		"CONNECT :443 HTTP/1.1\r\n\r\n":                   http.StatusBadRequest,
		"CONNECT ::1:443 HTTP/1.1\r\n\r\n":                http.StatusBadRequest,
		"CONNECT [fe80::1%eth0]:443 HTTP/1.1\r\n\r\n":     http.StatusBadRequest,
		"CONNECT [1.2.3.4]:443 HTTP/1.1\r\n\r\n":          http.StatusBadRequest,
		"CONNECT a/b:443 HTTP/1.1\r\n\r\n":                http.StatusBadRequest,
		"CONNECT http://x:443 HTTP/1.1\r\n\r\n":           http.StatusBadRequest,
		"CONNECT x:443 HTTP/1.1\r\nno colon here\r\n\r\n": http.StatusBadRequest,
		"CONNECT x:443 HTTP/1.1\r\nBad Name: v\r\n\r\n":   http.StatusBadRequest,
	} {
		_, err := parse(in)
		var re *RequestError
		if !errors.As(err, &re) || re.Status != status {
			t.Errorf("%q: want status %d, got %v", in, status, err)
		}
	}
	// A head cut short is not a bad request but a client that went away.
	if _, err := parse("CONNECT x:443 HTTP/1.1\r\nHost: x"); err == nil || errors.As(err, new(*RequestError)) {
		t.Errorf("truncated head: got %v", err)
	}
}

func TestParseConnectRequestLimit(t *testing.T) {
	head := "CONNECT x:443 HTTP/1.1\r\nX-Big: " + strings.Repeat("a", 10000) + "\r\n\r\n"
	br := bufio.NewReaderSize(&limitedReader{r: strings.NewReader(head), n: 8192}, 4096)
	if _, err := ParseConnectRequest(br); !errors.Is(err, errHeadTooLarge) {
		t.Fatalf("want errHeadTooLarge, got %v", err)
	}
}

// FuzzParseConnectRequest: the parser never panics, and whatever it accepts is a CONNECT to a
// well-formed authority that survives a round trip.
func FuzzParseConnectRequest(f *testing.F) {
	for _, s := range []string{
		"CONNECT 127.0.0.1:6443 HTTP/1.1\r\nHost: 127.0.0.1:6443\r\n\r\n",
		"CONNECT [::1]:443 HTTP/1.1\r\n\r\nTLS",
		"CONNECT kubernetes.default.svc:443 HTTP/1.0\n\n",
		"GET / HTTP/1.1\r\n\r\n",
		"CONNECT x:99999 HTTP/1.1\r\n\r\n",
		"CONNECT [fe80::1%25eth0]:443 HTTP/1.1\r\n\r\n",
		"CONNECT x:443 HTTP/1.1\r\nA: b\r\n c\r\n\r\n",
		"\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		req, err := ParseConnectRequest(bufio.NewReader(strings.NewReader(string(data))))
		if err != nil {
			return
		}
		if req.Method != http.MethodConnect {
			t.Fatalf("accepted method %q", req.Method)
		}
		host, port, err := ParseAuthority(req.Authority)
		if err != nil || host != req.Host || port != req.Port || port == 0 {
			t.Fatalf("accepted authority %q does not reparse: %v", req.Authority, err)
		}
		again, err := parse("CONNECT " + req.Authority + " " + req.Proto + "\r\n\r\n")
		if err != nil || again.Authority != req.Authority {
			t.Fatalf("round trip of %q: %v", req.Authority, err)
		}
	})
}

// FuzzParseAuthority: the authority parser never panics, and what it accepts is a host name (no
// brackets, no colon) or a bracketed IPv6 address without zone, with a port 1-65535, and reparses
// to the same result.
func FuzzParseAuthority(f *testing.F) {
	f.Fuzz(func(t *testing.T, authority string) {
		host, port, err := ParseAuthority(authority)
		if err != nil {
			return
		}
		if port == 0 || host == "" || len(host) > 253 {
			t.Fatalf("%q accepted as %q port %d", authority, host, port)
		}
		if strings.Contains(host, ":") {
			if !strings.HasPrefix(authority, "["+host+"]:") || strings.Contains(host, "%") {
				t.Fatalf("%q: IPv6 host %q not bracketed or with a zone", authority, host)
			}
		} else if !isHostname(host) {
			t.Fatalf("%q: host %q is not a host name", authority, host)
		}
		h2, p2, err := ParseAuthority(net.JoinHostPort(host, strconv.Itoa(int(port))))
		if err != nil || h2 != host || p2 != port {
			t.Fatalf("%q does not round-trip: %q %d %v", authority, h2, p2, err)
		}
	})
}
