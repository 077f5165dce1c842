// Package health serves the agents' operational endpoints on their own plain-HTTP port, apart from
// the traffic they carry: /healthz (the process is alive), /readyz (it can do its job now) and
// Prometheus /metrics from the role's own registry.
package health

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Server is the health and metrics endpoint of one agent role.
type Server struct {
	// Registry holds the role's metrics (plus Go and process collectors).
	Registry *prometheus.Registry

	ready    atomic.Pointer[func() error]
	srv      *http.Server
	listener net.Listener
}

// New returns a server with a fresh registry. Until SetReadiness is called, /readyz answers 200.
func New() *Server {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s := &Server{Registry: reg}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if f := s.ready.Load(); f != nil {
			if err := (*f)(); err != nil {
				http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	return s
}

// SetReadiness installs the check behind /readyz: nil error means ready.
func (s *Server) SetReadiness(check func() error) { s.ready.Store(&check) }

// Listen binds addr (":9090", "127.0.0.1:0", "[::1]:0"). An empty addr disables the server.
func (s *Server) Listen(addr string) error {
	if addr == "" {
		return nil
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	s.listener = l
	return nil
}

// Addr is the bound address (useful with port 0), or "" when not listening.
func (s *Server) Addr() string {
	if s.listener == nil {
		return ""
	}
	return s.listener.Addr().String()
}

// Serve serves until ctx is done, then shuts down. It returns at once when Listen was not called
// with an address.
func (s *Server) Serve(ctx context.Context) error {
	if s.listener == nil {
		return nil
	}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = s.srv.Shutdown(sctx)
	}()
	if err := s.srv.Serve(s.listener); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
