package health

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// Probe GETs path (e.g. "/readyz?verbose") from an agent's health endpoint at target, a Unix
// socket ("unix:/run/apiproxy/health/proxy.sock") or "HOST:PORT". It returns the body (at most
// 64 KiB) and whether the answer was 2xx; err is set when there was no answer at all.
func Probe(ctx context.Context, target, path string) (body string, ok bool, err error) {
	dial := func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		if sock, isUnix := strings.CutPrefix(target, "unix:"); isUnix {
			return d.DialContext(ctx, "unix", sock)
		}
		return d.DialContext(ctx, "tcp", target)
	}
	c := &http.Client{Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}}
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	// The host part only fills the request line: dial decides where it goes.
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://agent"+path, nil)
	if err != nil {
		return "", false, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", false, fmt.Errorf("no answer from %s: %w", target, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return string(b), false, fmt.Errorf("reading the answer of %s: %w", target, err)
	}
	return string(b), resp.StatusCode/100 == 2, nil
}

// DefaultProbeTimeout bounds one probe, below the kubelet's timeoutSeconds of the manifests.
const DefaultProbeTimeout = 4 * time.Second
