package tunnel

import (
	"context"
	"errors"
	"io"
	"testing"
)

// Any 2xx answer to CONNECT establishes the tunnel (RFC 9110); a 403 stays a 403 in the error.
func TestDialConnectAny2xxIsATunnel(t *testing.T) {
	for _, answer := range []string{"HTTP/1.1 200 OK\r\n\r\n", "HTTP/1.1 201 Created\r\n\r\n", "HTTP/1.0 299 Whatever\r\n\r\n"} {
		c, err := DialConnect(context.Background(), fakeProxy(t, answer, nil), "10.1.2.3:443")
		if err != nil {
			t.Fatalf("%q: %v", answer, err)
		}
		io.WriteString(c, "ping")
		buf := make([]byte, 4)
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
			t.Fatalf("%q: echo %q %v", answer, buf, err)
		}
		c.Close()
	}
	for answer, status := range map[string]int{
		"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n": 403,
		"HTTP/1.1 199 Odd\r\n\r\n":                            199,
		"HTTP/1.1 302 Found\r\nContent-Length: 0\r\n\r\n":     302,
	} {
		_, err := DialConnect(context.Background(), fakeProxy(t, answer, nil), "10.1.2.3:443")
		var ce *ConnectError
		if !errors.As(err, &ce) || ce.StatusCode != status {
			t.Errorf("%q: got %v, want a ConnectError with %d", answer, err, status)
		}
	}
}
