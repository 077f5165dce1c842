// Package health serves the agents' operational endpoints on their own plain-HTTP port, apart from
// the traffic they carry: /healthz (the process is alive), /readyz (it can do its job now: every
// named readiness check passes; ?verbose lists them, Kubernetes style) and Prometheus /metrics from
// the role's own registry. The same endpoints can also be served on a Unix socket, which is how the
// kubelet's exec probes (`agent probe`) reach the one process they mean in a hostNetwork pod, where
// a TCP port on the node is shared by the old and the new pod of a rolling update.
package health

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Server is the health and metrics endpoint of one agent role.
type Server struct {
	// Registry holds the role's metrics (plus Go and process collectors).
	Registry *prometheus.Registry

	mu        sync.Mutex
	checks    []check
	srv       *http.Server
	listeners []net.Listener
	tcpAddr   string
}

type check struct {
	name string
	fn   func() error
}

// New returns a server with a fresh registry. Until a readiness check is added, /readyz answers 200.
func New() *Server {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s := &Server{Registry: reg}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", s.readyz)
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	return s
}

// AddReadyCheck adds a named check behind /readyz: nil means this part is ready. Checks run in the
// order they were added, on every request; keep them cheap or cache inside.
func (s *Server) AddReadyCheck(name string, fn func() error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.checks = append(s.checks, check{name, fn})
}

// Ready runs every check and returns the failures joined, each prefixed by its name.
func (s *Server) Ready() error {
	var errs []error
	for _, r := range s.results() {
		if r.err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", r.name, r.err))
		}
	}
	return errors.Join(errs...)
}

type result struct {
	name string
	err  error
}

func (s *Server) results() []result {
	s.mu.Lock()
	checks := append([]check(nil), s.checks...)
	s.mu.Unlock()
	out := make([]result, len(checks))
	for i, c := range checks {
		out[i] = result{c.name, c.fn()}
	}
	return out
}

// readyz answers as the Kubernetes components do: "ok" when every check passes; with ?verbose, or
// when one fails (503), a line per check, [+] passed or [-] failed with the reason, so a probe's
// output (and the kubelet's "Readiness probe failed: ..." event) names what is wrong.
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	results := s.results()
	failed := false
	for _, res := range results {
		failed = failed || res.err != nil
	}
	_, verbose := r.URL.Query()["verbose"]
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if !failed && !verbose {
		_, _ = w.Write([]byte("ok\n"))
		return
	}
	var b strings.Builder
	for _, res := range results {
		if res.err != nil {
			fmt.Fprintf(&b, "[-]%s failed: %s\n", res.name, oneLine(res.err.Error()))
		} else {
			fmt.Fprintf(&b, "[+]%s ok\n", res.name)
		}
	}
	if failed {
		b.WriteString("readyz check failed\n")
		w.WriteHeader(http.StatusServiceUnavailable)
	} else {
		b.WriteString("readyz check passed\n")
	}
	_, _ = w.Write([]byte(b.String()))
}

// oneLine keeps a multi-line error (errors.Join) on its check's line.
func oneLine(s string) string { return strings.ReplaceAll(strings.TrimSpace(s), "\n", "; ") }

// Listen binds addr (":9090", "127.0.0.1:0", "[::1]:0"). An empty addr disables it.
func (s *Server) Listen(addr string) error {
	if addr == "" {
		return nil
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	s.Use(l)
	return nil
}

// Use serves on a listener bound elsewhere (e.g. one handed over by the previous agent).
func (s *Server) Use(l net.Listener) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.listeners = append(s.listeners, l)
	if _, ok := l.Addr().(*net.TCPAddr); ok && s.tcpAddr == "" {
		s.tcpAddr = l.Addr().String()
	}
}

// ListenSocket also serves on the Unix socket path (replacing a stale socket file left by an
// earlier run of the same container). An empty path disables it.
func (s *Server) ListenSocket(path string) error {
	if path == "" {
		return nil
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return err
	}
	s.Use(l)
	return nil
}

// Addr is the bound TCP address (useful with port 0), or "" when not listening on TCP.
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tcpAddr
}

// Serve serves until ctx is done, then shuts down. It returns at once when there is no listener.
func (s *Server) Serve(ctx context.Context) error {
	s.mu.Lock()
	ls := append([]net.Listener(nil), s.listeners...)
	s.mu.Unlock()
	if len(ls) == 0 {
		return nil
	}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = s.srv.Shutdown(sctx)
	}()
	errc := make(chan error, len(ls))
	for _, l := range ls {
		go func() { errc <- s.srv.Serve(l) }()
	}
	var first error
	for range ls {
		if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) && first == nil {
			first = err
			_ = s.srv.Close()
		}
	}
	return first
}
