package health

import (
	"context"
	"errors"
	"io"
	"net/http"
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
	s.SetReadiness(func() error { return errors.New("upstream unreachable") })
	if code, body := get("/readyz"); code != 503 || !strings.Contains(body, "upstream unreachable") {
		t.Errorf("/readyz with failing check = %d %q", code, body)
	}
	if _, body := get("/metrics"); !strings.Contains(body, "apiproxy_test_total 3") || !strings.Contains(body, "go_goroutines") {
		t.Errorf("/metrics lacks the role's or Go's metrics:\n%.400s", body)
	}
}
