package health

import (
	"context"
	"errors"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestEndpoints(t *testing.T) {
	s := New()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "apiproxy_test_total", Help: "test"})
	s.Registry.MustRegister(c)
	c.Add(3)
	if err := s.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "health.sock")
	if err := s.ListenSocket(sock); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	defer func() { cancel(); <-done }()

	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + s.Addr() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Errorf("/healthz = %d", code)
	}
	if code, _ := get("/readyz"); code != 200 {
		t.Errorf("/readyz before a check = %d", code)
	}
	var upstream error
	s.AddReadyCheck("address", func() error { return nil })
	s.AddReadyCheck("upstream", func() error { return upstream })
	if code, body := get("/readyz"); code != 200 || body != "ok\n" {
		t.Errorf("/readyz with passing checks = %d %q", code, body)
	}
	if code, body := get("/readyz?verbose"); code != 200 || body != "[+]address ok\n[+]upstream ok\nreadyz check passed\n" {
		t.Errorf("/readyz?verbose with passing checks = %d %q", code, body)
	}
	// A failure names its check, always (the probe's output is the kubelet's event), on one line.
	upstream = errors.Join(errors.New("no dial to 10.96.0.1:443 succeeded in the last 30s"), errors.New("connection refused"))
	want := "[+]address ok\n[-]upstream failed: no dial to 10.96.0.1:443 succeeded in the last 30s; connection refused\nreadyz check failed\n"
	for _, path := range []string{"/readyz", "/readyz?verbose"} {
		if code, body := get(path); code != 503 || body != want {
			t.Errorf("%s with a failing check = %d %q, want 503 %q", path, code, body, want)
		}
	}
	if err := s.Ready(); err == nil || !strings.HasPrefix(err.Error(), "upstream: no dial") {
		t.Errorf("Ready() = %v", err)
	}
	if _, body := get("/metrics"); !strings.Contains(body, "apiproxy_test_total 3") || !strings.Contains(body, "go_goroutines") {
		t.Errorf("/metrics lacks the role's or Go's metrics:\n%.400s", body)
	}

	// The Unix socket serves the same, and Probe (agent probe) reads it.
	body, ok, err := Probe(context.Background(), "unix:"+sock, "/readyz?verbose")
	if err != nil || ok || body != want {
		t.Errorf("Probe over the socket = %q, ok=%v, err=%v; want %q, not ok", body, ok, err, want)
	}
	upstream = nil
	if body, ok, err := Probe(context.Background(), s.Addr(), "/readyz"); err != nil || !ok || body != "ok\n" {
		t.Errorf("Probe over TCP = %q, ok=%v, err=%v", body, ok, err)
	}
	if _, _, err := Probe(context.Background(), "unix:"+filepath.Join(t.TempDir(), "none.sock"), "/readyz"); err == nil || !strings.Contains(err.Error(), "no answer from unix:") {
		t.Errorf("Probe of a missing socket: err = %v", err)
	}
}
