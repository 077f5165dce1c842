package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilnet "k8s.io/apimachinery/pkg/util/net"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// kube-load is the client of the rollout tests, run as a pod: with client-go's in-cluster config it
// GETs /version on a new connection (TCP and TLS) every --interval, and keeps one watch of the
// ConfigMaps of its namespace open, reopening it when it ends. It serves what it saw as JSON on
// ADDR/stats, so the test reads counts before and after a disruption. Bounded: it stops loading after
// loadMaxDuration or loadMaxRequests, whichever comes first.
const (
	loadMaxDuration = 15 * time.Minute
	loadMaxRequests = 45000
	// loadMaxFailures bounds the failures kept in detail (all are counted).
	loadMaxFailures = 1000
)

type loadStats struct {
	Requests int64         `json:"requests"`
	Failed   int64         `json:"failed"`
	Failures []loadFailure `json:"failures"`
	// Retried counts the requests whose connection was reset and that succeeded on a second one,
	// as client-go's rest client retries a GET after a reset (Retries keeps the first resets).
	Retried int64         `json:"retried"`
	Retries []loadFailure `json:"retries"`
	// LastRequest is the end of the latest request: the test waits for one after its disruption.
	LastRequest time.Time  `json:"lastRequest"`
	Watch       watchStats `json:"watch"`
	Done        bool       `json:"done"`
}

type loadFailure struct {
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
	Error string    `json:"error"`
}

type watchStats struct {
	// Opened counts the watches opened; EndedClean those that ended without an error (the
	// connection closed: the client reopens, as informers do); Errors the Error events and failed
	// (re)opens, with their times.
	Opened     int64         `json:"opened"`
	EndedClean int64         `json:"endedClean"`
	Errors     []loadFailure `json:"errors"`
	// Open is true while a watch is open now.
	Open bool `json:"open"`
}

type loader struct {
	mu sync.Mutex
	s  loadStats
}

// kubeLoad runs in-cluster, or, with a kubeconfig, as any client (the tests run it on the host
// through `kubectl apiproxy connect`'s listener); the watch is then in namespace default.
func kubeLoad(addr string, interval time.Duration, kubeconfig string) error {
	var cfg *rest.Config
	ns := []byte(metav1.NamespaceDefault)
	var err error
	if kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	} else if cfg, err = rest.InClusterConfig(); err == nil {
		ns, err = os.ReadFile("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "API server: %s\n", cfg.Host)
	l := &loader{}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	mux := http.NewServeMux()
	mux.HandleFunc("/stats", func(w http.ResponseWriter, _ *http.Request) {
		l.mu.Lock()
		b, err := json.Marshal(l.s)
		l.mu.Unlock()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(b)
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	fmt.Printf("stats on %s\n", ln.Addr())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	go l.watch(ctx, cfg, string(ns))
	err = l.requests(ctx, cfg, interval)
	l.mu.Lock()
	l.s.Done = true
	l.mu.Unlock()
	fmt.Fprintln(os.Stderr, "load done")
	<-ctx.Done()
	return err
}

// requests sends one GET /version per interval, each on a connection of its own.
func (l *loader) requests(ctx context.Context, cfg *rest.Config, interval time.Duration) error {
	tlsCfg, err := rest.TLSConfigFor(cfg)
	if err != nil {
		return err
	}
	end := time.Now().Add(loadMaxDuration)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for i := 0; i < loadMaxRequests && time.Now().Before(end); i++ {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		// A transport per request, without keep-alive: a new TCP and TLS connection every time, so
		// every request meets whatever listens on the node IP now.
		rt, err := rest.HTTPWrappersForConfig(cfg, &http.Transport{TLSClientConfig: tlsCfg, DisableKeepAlives: true, ForceAttemptHTTP2: false})
		if err != nil {
			return err
		}
		start := time.Now()
		err = getVersion(ctx, rt, cfg.Host)
		var reset error
		if err != nil && ctx.Err() == nil && utilnet.IsConnectionReset(err) {
			// client-go retries a GET whose connection was reset; so does this client, once, on a
			// new connection, and counts it apart.
			reset = err
			if rt, err = rest.HTTPWrappersForConfig(cfg, &http.Transport{TLSClientConfig: tlsCfg, DisableKeepAlives: true, ForceAttemptHTTP2: false}); err == nil {
				err = getVersion(ctx, rt, cfg.Host)
			}
		}
		now := time.Now()
		l.mu.Lock()
		l.s.Requests++
		l.s.LastRequest = now
		if reset != nil && err == nil {
			l.s.Retried++
			if len(l.s.Retries) < loadMaxFailures {
				l.s.Retries = append(l.s.Retries, loadFailure{Start: start, End: now, Error: reset.Error()})
			}
		}
		if err != nil && ctx.Err() == nil {
			l.s.Failed++
			if len(l.s.Failures) < loadMaxFailures {
				l.s.Failures = append(l.s.Failures, loadFailure{Start: start, End: now, Error: err.Error()})
			}
		}
		l.mu.Unlock()
	}
	return nil
}

func getVersion(ctx context.Context, rt http.RoundTripper, host string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(host, "/")+"/version", nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Transport: rt}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), "gitVersion") {
		return fmt.Errorf("%s: %.200s", resp.Status, b)
	}
	return nil
}

// watch keeps a watch of the namespace's ConfigMaps open, over one long-lived connection, and
// reopens it from the last resource version when it ends, as informers do.
func (l *loader) watch(ctx context.Context, cfg *rest.Config, ns string) {
	cfg = rest.CopyConfig(cfg)
	cfg.Timeout = 0
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		l.watchError(err)
		return
	}
	rv := ""
	for ctx.Err() == nil {
		if rv == "" {
			list, err := cs.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{})
			if err != nil {
				l.watchError(fmt.Errorf("list: %w", err))
				sleep(ctx, time.Second)
				continue
			}
			rv = list.ResourceVersion
		}
		// Long enough to outlive any test scenario: only a disruption ends it.
		timeout := int64(loadMaxDuration.Seconds())
		w, err := cs.CoreV1().ConfigMaps(ns).Watch(ctx, metav1.ListOptions{ResourceVersion: rv, TimeoutSeconds: &timeout, AllowWatchBookmarks: true})
		if err != nil {
			l.watchError(fmt.Errorf("watch: %w", err))
			sleep(ctx, time.Second)
			continue
		}
		l.mu.Lock()
		l.s.Watch.Opened++
		l.s.Watch.Open = true
		l.mu.Unlock()
		clean := true
		for ev := range w.ResultChan() {
			if ev.Type == watch.Error {
				l.watchError(fmt.Errorf("watch event: %v", ev.Object))
				clean = false
				rv = "" // relist
				continue
			}
			if m, ok := ev.Object.(*corev1.ConfigMap); ok {
				rv = m.ResourceVersion
			}
		}
		w.Stop()
		l.mu.Lock()
		l.s.Watch.Open = false
		if clean && ctx.Err() == nil {
			l.s.Watch.EndedClean++
		}
		l.mu.Unlock()
	}
}

func (l *loader) watchError(err error) {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.s.Watch.Errors) < loadMaxFailures {
		l.s.Watch.Errors = append(l.s.Watch.Errors, loadFailure{Start: now, End: now, Error: err.Error()})
	}
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
