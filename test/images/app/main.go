// Command app is the real-node tests' workload image: one static binary with no shell, so `kubectl
// exec` runs it directly.
//
//	app serve ADDR     HTTP server answering "hello from <hostname>" on /, and /env with its environment
//	app echo WORDS...  prints the words (exec checks)
//	app get URL        GETs the URL and prints "<status> <body>"; exit 1 unless 2xx
//	app kube-get PATH  GETs PATH from the API server with client-go's in-cluster config and prints
//	                   "<status> <body>"; exit 1 unless 2xx
//	app kube-load ADDR [INTERVAL [KUBECONFIG]]
//	                   GETs /version on a new connection every INTERVAL (default 20ms) and keeps a
//	                   watch open, in-cluster (or with KUBECONFIG); serves the counts on ADDR/stats
//	                   (load.go)
package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/rest"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: app serve ADDR | echo WORDS... | get URL | kube-get PATH | kube-load ADDR [INTERVAL [KUBECONFIG]]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(arg(2))
	case "echo":
		fmt.Println(strings.Join(os.Args[2:], " "))
	case "get":
		err = get(http.DefaultClient, arg(2), "")
	case "kube-get":
		err = kubeGet(arg(2))
	case "kube-load":
		interval, kubeconfig := 20*time.Millisecond, ""
		if len(os.Args) > 3 {
			if interval, err = time.ParseDuration(os.Args[3]); err != nil {
				break
			}
		}
		if len(os.Args) > 4 {
			kubeconfig = os.Args[4]
		}
		err = kubeLoad(arg(2), interval, kubeconfig)
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "app:", err)
		os.Exit(1)
	}
}

func arg(i int) string {
	if len(os.Args) <= i {
		fmt.Fprintf(os.Stderr, "app %s: missing argument\n", os.Args[1])
		os.Exit(2)
	}
	return os.Args[i]
}

func serve(addr string) error {
	host, _ := os.Hostname()
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintf(w, "hello from %s\n", host) })
	mux.HandleFunc("/env", func(w http.ResponseWriter, _ *http.Request) {
		env := os.Environ()
		sort.Strings(env)
		fmt.Fprintln(w, strings.Join(env, "\n"))
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	fmt.Printf("serving on %s\n", ln.Addr())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
		<-sigs
		_ = srv.Close()
	}()
	if err := srv.Serve(ln); err != http.ErrServerClosed {
		return err
	}
	return nil
}

func get(c *http.Client, url, token string) error {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	c.Timeout = 10 * time.Second
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	fmt.Printf("%d %s", resp.StatusCode, body)
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("status %s", resp.Status)
	}
	return nil
}

// kubeGet reaches the API server the way in-cluster clients do: client-go's InClusterConfig
// (KUBERNETES_SERVICE_HOST/PORT, the service-account CA and token).
func kubeGet(path string) error {
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return err
	}
	c, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "in-cluster API server: %s\n", cfg.Host)
	return get(c, strings.TrimSuffix(cfg.Host, "/")+path, "")
}
