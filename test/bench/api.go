package main

// Suite "api": the cost of the proxy in a user's terms. A real kube-apiserver (test/harness), and
// client-go clients doing small GETs and watching, once directly and once through `agent proxy`
// (CONNECT, TLS end to end), in interleaved rounds.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/apiproxy/apiproxy/test/harness"
)

var (
	apiClients = flag.Int("api-clients", 16, "api suite: concurrent client-go clients (one connection each)")
	apiEvents  = flag.Int("api-events", 100, "api suite: watch events timed")
)

func init() { register(Suite{Name: "api", RunTables: runAPIBench}) }

func apiAssets() (string, error) {
	dir := os.Getenv("KUBEBUILDER_ASSETS")
	if dir == "" {
		out, err := exec.Command("bash", "hack/test-assets.sh", "--dir").Output()
		if err != nil {
			return "", fmt.Errorf("hack/test-assets.sh --dir: %v", err)
		}
		dir = strings.TrimSpace(string(out))
	}
	for _, b := range []string{"kube-apiserver", "etcd"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			return "", fmt.Errorf("%s missing in %s: run `make test-assets` (make bench does)", b, dir)
		}
	}
	return dir, nil
}

// apiClientsFor makes n clientsets, each with its own transport (so its own connection), direct
// or through proxy. Both kinds set Proxy, which also keeps client-go from sharing one cached
// transport among the direct ones: the two sides differ only in the hop.
func apiClientsFor(cfg *rest.Config, proxy *url.URL, n int) ([]kubernetes.Interface, error) {
	var out []kubernetes.Interface
	for i := 0; i < n; i++ {
		c := rest.CopyConfig(cfg)
		c.QPS, c.Burst = -1, 0 // no client-side rate limit: measure the path, not the limiter
		c.Proxy = func(*http.Request) (*url.URL, error) { return proxy, nil }
		cs, err := kubernetes.NewForConfig(c)
		if err != nil {
			return nil, err
		}
		out = append(out, cs)
	}
	return out, nil
}

// apiClientsVia makes n clientsets that connect to addr (a transparent TCP hop) as if it were the
// server, verifying the server's certificate for serverName.
func apiClientsVia(cfg *rest.Config, addr, serverName string, n int) ([]kubernetes.Interface, error) {
	c := rest.CopyConfig(cfg)
	c.Host = "https://" + addr
	c.TLSClientConfig.ServerName = serverName
	return apiClientsFor(c, nil, n)
}

// apiGets runs one GET loop per client for d (at most 100,000 requests in all): requests/s and the
// latencies in ms.
func apiGets(clients []kubernetes.Interface, d time.Duration) (float64, []float64, error) {
	var mu sync.Mutex
	var lat []float64
	var firstErr error
	var wg sync.WaitGroup
	start := time.Now()
	for _, cs := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []float64
			for time.Since(start) < d && len(mine) < 100000/len(clients) {
				t0 := time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, err := cs.CoreV1().ConfigMaps("default").Get(ctx, "bench-get", metav1.GetOptions{})
				cancel()
				if err != nil {
					mu.Lock()
					firstErr = errors.Join(firstErr, err)
					mu.Unlock()
					break
				}
				mine = append(mine, float64(time.Since(t0).Microseconds())/1e3)
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return 0, nil, firstErr
	}
	return float64(len(lat)) / time.Since(start).Seconds(), lat, nil
}

func percentile(v []float64, p float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

// apiWatchLatency watches one ConfigMap directly and through the tunnel at the same time, updates
// it n times (the update carries its send time), and returns each side's delivery latencies (ms,
// from the update's start, so with etcd's write) and, per event, how much later it reached the
// tunnel's watcher than the direct one ("extra").
func apiWatchLatency(admin, direct, tunneled kubernetes.Interface, n int) (map[string][]float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cms := admin.CoreV1().ConfigMaps("default")
	cm, err := cms.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "bench-watch"}, Data: map[string]string{"t": "0"}}, metav1.CreateOptions{})
	if err != nil {
		return nil, err
	}
	out := map[string][]float64{}
	arrived := map[string]map[int64]int64{"direct": {}, "tunnel": {}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	ready := make(chan struct{}, 2)
	for name, cs := range map[string]kubernetes.Interface{"direct": direct, "tunnel": tunneled} {
		w, err := cs.CoreV1().ConfigMaps("default").Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=bench-watch", ResourceVersion: cm.ResourceVersion})
		if err != nil {
			return nil, fmt.Errorf("watch %s: %w", name, err)
		}
		defer w.Stop()
		wg.Add(1)
		go func() {
			defer wg.Done()
			ready <- struct{}{}
			got := 0
			for ev := range w.ResultChan() {
				if ev.Type != watch.Modified {
					continue
				}
				now := time.Now().UnixNano()
				sent, _ := strconv.ParseInt(ev.Object.(*corev1.ConfigMap).Data["t"], 10, 64)
				mu.Lock()
				out[name] = append(out[name], float64(now-sent)/1e6)
				arrived[name][sent] = now
				mu.Unlock()
				if got++; got == n {
					return
				}
			}
		}()
	}
	<-ready
	<-ready
	for i := 0; i < n; i++ {
		cm.Data["t"] = strconv.FormatInt(time.Now().UnixNano(), 10)
		if cm, err = cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
			return nil, err
		}
		time.Sleep(10 * time.Millisecond)
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		return nil, errors.New("watch events missing after 30s")
	}
	for sent, d := range arrived["direct"] {
		if t, ok := arrived["tunnel"][sent]; ok {
			out["extra"] = append(out["extra"], float64(t-d)/1e6)
		}
	}
	return out, nil
}

func runAPIBench() ([]Table, error) {
	assets, err := apiAssets()
	if err != nil {
		fmt.Fprintf(os.Stderr, "suite api skipped: %v\n", err)
		return nil, nil
	}
	td := &harness.Teardown{}
	defer td.Run()
	cl, err := harness.StartWith(td, assets, harness.Options{Name: "bench"})
	if err != nil {
		return nil, err
	}
	admin, err := kubernetes.NewForConfig(cl.Config)
	if err != nil {
		return nil, err
	}
	ctx := context.Background()
	if _, err := admin.CoreV1().ConfigMaps("default").Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "bench-get"}, Data: map[string]string{"k": "small value"}}, metav1.CreateOptions{}); err != nil {
		return nil, err
	}

	dir, err := os.MkdirTemp("", "apiproxy-bench-api-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "agent")
	if out, err := exec.Command("go", "build", "-o", bin, "./cmd/agent").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("building agent: %v\n%s", err, out)
	}
	u, err := url.Parse(cl.Server)
	if err != nil {
		return nil, err
	}

	// The hops: the agent on its CONNECT listener (how `connect` and peers use it), the agent on a
	// transparent listener (the node IP), and HAProxy (mode tcp) as the reference of what any TCP
	// hop costs on this machine. client-go reaches a transparent hop as if it were the server,
	// with the server's name for TLS.
	type side struct {
		name    string
		clients []kubernetes.Interface
		hop     *proc // nil: direct
	}
	var sides []*side
	var stops []func()
	defer func() {
		for _, stop := range stops {
			stop()
		}
	}()
	direct, err := apiClientsFor(cl.Config, nil, *apiClients)
	if err != nil {
		return nil, err
	}
	sides = append(sides, &side{name: "direct", clients: direct})
	listen, err := freeLoopbackAddr()
	if err != nil {
		return nil, err
	}
	ag, err := startGoChild("agent", exec.Command(bin, "proxy", "--listen", listen, "--upstream", u.Host,
		"--metrics-addr", "", "--shutdown-grace", "1s"), listen)
	if err != nil {
		return nil, err
	}
	stops = append(stops, ag.stop)
	tunneled, err := apiClientsFor(cl.Config, &url.URL{Scheme: "http", Host: listen}, *apiClients)
	if err != nil {
		return nil, err
	}
	sides = append(sides, &side{name: "agent proxy (CONNECT)", clients: tunneled, hop: ag})
	listenTCP, err := freeLoopbackAddr()
	if err != nil {
		return nil, err
	}
	agTCP, err := startGoChild("agent --listen-tcp", exec.Command(bin, "proxy", "--listen", "", "--listen-tcp", listenTCP,
		"--upstream", u.Host, "--metrics-addr", "", "--shutdown-grace", "1s"), listenTCP)
	if err != nil {
		return nil, err
	}
	stops = append(stops, agTCP.stop)
	viaTCP, err := apiClientsVia(cl.Config, listenTCP, u.Hostname(), *apiClients)
	if err != nil {
		return nil, err
	}
	sides = append(sides, &side{name: "agent --listen-tcp", clients: viaTCP, hop: agTCP})
	var notes []string
	if *proxyPeers {
		installPeers()
		for _, spec := range peerSpecs {
			if spec.name != "HAProxy" {
				continue
			}
			hp, _, err := startPeer(spec, u.Host)
			if err != nil {
				notes = append(notes, "HAProxy skipped: "+err.Error())
				fmt.Fprintln(os.Stderr, "api: HAProxy skipped: "+err.Error())
				continue
			}
			stops = append(stops, hp.stop)
			viaHAProxy, err := apiClientsVia(cl.Config, hp.addr, u.Hostname(), *apiClients)
			if err != nil {
				return nil, err
			}
			sides = append(sides, &side{name: "HAProxy (tcp)", clients: viaHAProxy, hop: hp})
		}
	}

	// -compare and -compare-args (see the proxy suite): another build of the agent, or this one with
	// other flags, as extra sides after HAProxy.
	type variant struct {
		label, bin string
		extra      []string
	}
	var variants []variant
	if *proxyCompare != "" {
		old, err := buildAgentAt(*proxyCompare, dir)
		if err != nil {
			return nil, err
		}
		variants = append(variants, variant{"agent@" + *proxyCompare, old, nil})
	}
	if *proxyCompareArgs != "" {
		variants = append(variants, variant{"agent " + *proxyCompareArgs, bin, strings.Fields(*proxyCompareArgs)})
	}
	for _, v := range variants {
		l1, err := freeLoopbackAddr()
		if err != nil {
			return nil, err
		}
		p1, err := startGoChild(v.label, exec.Command(v.bin, append([]string{"proxy", "--listen", l1, "--upstream", u.Host,
			"--metrics-addr", "", "--shutdown-grace", "1s"}, v.extra...)...), l1)
		if err != nil {
			return nil, err
		}
		stops = append(stops, p1.stop)
		c1, err := apiClientsFor(cl.Config, &url.URL{Scheme: "http", Host: l1}, *apiClients)
		if err != nil {
			return nil, err
		}
		sides = append(sides, &side{name: v.label + " (CONNECT)", clients: c1, hop: p1})
		l2, err := freeLoopbackAddr()
		if err != nil {
			return nil, err
		}
		p2, err := startGoChild(v.label+" --listen-tcp", exec.Command(v.bin, append([]string{"proxy", "--listen", "", "--listen-tcp", l2,
			"--upstream", u.Host, "--metrics-addr", "", "--shutdown-grace", "1s"}, v.extra...)...), l2)
		if err != nil {
			return nil, err
		}
		stops = append(stops, p2.stop)
		c2, err := apiClientsVia(cl.Config, l2, u.Hostname(), *apiClients)
		if err != nil {
			return nil, err
		}
		sides = append(sides, &side{name: v.label + " --listen-tcp", clients: c2, hop: p2})
	}

	// Warm up every side: connections, TLS, HTTP/2, the server's caches.
	for _, sd := range sides {
		if _, _, err := apiGets(sd.clients, 300*time.Millisecond); err != nil {
			return nil, fmt.Errorf("GETs %s: %w", sd.name, err)
		}
	}
	rps := map[string][]float64{}
	lat := map[string][]float64{}
	hopCPU := map[string][]float64{} // µs of the hop's CPU per GET
	for round := 0; round < *proxyRounds; round++ {
		fmt.Fprintf(os.Stderr, "api: round %d/%d\n", round+1, *proxyRounds)
		for i := range sides {
			sd := sides[(i+round)%len(sides)] // rotate the order: every side runs first once
			var cpu0 float64
			if sd.hop != nil {
				cpu0 = cpuSeconds(sd.hop.pid)
			}
			r, l, err := apiGets(sd.clients, 2*time.Second)
			if err != nil {
				return nil, fmt.Errorf("GETs %s: %w", sd.name, err)
			}
			if sd.hop != nil {
				hopCPU[sd.name] = append(hopCPU[sd.name], (cpuSeconds(sd.hop.pid)-cpu0)*1e6/float64(len(l)))
			}
			rps[sd.name] = append(rps[sd.name], r)
			lat[sd.name+" p50"] = append(lat[sd.name+" p50"], percentile(l, 0.5))
			lat[sd.name+" p99"] = append(lat[sd.name+" p99"], percentile(l, 0.99))
		}
	}
	fmt.Fprintf(os.Stderr, "api: watch, %d events\n", *apiEvents)
	wl, err := apiWatchLatency(admin, direct[0], tunneled[0], *apiEvents)
	if err != nil {
		return nil, fmt.Errorf("watch: %w", err)
	}

	header := []string{"metric"}
	for _, sd := range sides {
		header = append(header, sd.name)
	}
	header = append(header, "agent (CONNECT) ÷ direct")
	peer := slices.IndexFunc(sides, func(sd *side) bool { return sd.name == "HAProxy (tcp)" })
	hasPeer := peer >= 0
	if hasPeer {
		header = append(header, "HAProxy ÷ direct")
	}
	header = append(header, "target", "holds")
	t := Table{Title: fmt.Sprintf("client-go against a real kube-apiserver, %d clients", *apiClients), Header: header}
	row := func(name, format, target string, ok func(r float64) bool, vals func(sd *side) float64) {
		cells := []string{name}
		for _, sd := range sides {
			v := vals(sd)
			if v == 0 && sd.hop == nil && strings.Contains(name, "CPU") {
				cells = append(cells, "")
				continue
			}
			cells = append(cells, fmt.Sprintf(format, v))
		}
		d := vals(sides[0])
		r := vals(sides[1]) / d
		ratio := func(v float64) string {
			if d == 0 {
				return ""
			}
			return fmt.Sprintf("%.2fx", v/d)
		}
		cells = append(cells, ratio(vals(sides[1])))
		if hasPeer {
			cells = append(cells, ratio(vals(sides[peer])))
		}
		holds := ""
		if ok != nil {
			holds = "no"
			if ok(r) {
				holds = "yes"
			}
		}
		t.Rows = append(t.Rows, append(cells, target, holds))
	}
	row("GET requests/s", "%.0f", "≥ 0.95", func(r float64) bool { return r >= 0.95 }, func(sd *side) float64 { return median(rps[sd.name]) })
	row("GET p50 ms", "%.2f", "", nil, func(sd *side) float64 { return median(lat[sd.name+" p50"]) })
	row("GET p99 ms", "%.2f", "≤ 1.1", func(r float64) bool { return r <= 1.1 }, func(sd *side) float64 { return median(lat[sd.name+" p99"]) })
	row("hop CPU µs per GET", "%.1f", "", nil, func(sd *side) float64 { return median(hopCPU[sd.name]) })
	wrow := func(name string, p float64) {
		cells := []string{name, fmt.Sprintf("%.2f", percentile(wl["direct"], p)), fmt.Sprintf("%.2f", percentile(wl["tunnel"], p))}
		for range sides[2:] {
			cells = append(cells, "")
		}
		cells = append(cells, fmt.Sprintf("%.2fx", percentile(wl["tunnel"], p)/percentile(wl["direct"], p)))
		if hasPeer {
			cells = append(cells, "")
		}
		t.Rows = append(t.Rows, append(cells, "", ""))
	}
	wrow("watch event p50 ms", 0.5)
	wrow("watch event p99 ms", 0.99)
	extra := []string{"watch: tunnel's extra delay p50 / p99 ms", "", fmt.Sprintf("%.3f / %.3f", percentile(wl["extra"], 0.5), percentile(wl["extra"], 0.99))}
	for len(extra) < len(header) {
		extra = append(extra, "")
	}
	t.Rows = append(t.Rows, extra)
	t.Notes = append([]string{fmt.Sprintf("medians of %d rounds of 2 s, every side once per round in rotating order; "+
		"hop CPU is the proxy process's CPU time over the requests it carried; both watches receive the same %d "+
		"updates at once; a watch event's latency counts from the update's start (etcd's write included)", *proxyRounds, *apiEvents)}, notes...)
	return []Table{t}, nil
}
