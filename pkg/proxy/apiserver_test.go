package proxy

import (
	"context"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/apiproxy/apiproxy/test/harness"
)

// Through the proxy, against a real kube-apiserver: client-go (rest.Config.Proxy) lists and watches,
// and the harness kubectl with `proxy-url` in its kubeconfig runs `get ns`. TLS stays end to end.
func TestRealAPIServerThroughProxy(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a kube-apiserver")
	}
	c := harness.Start(t, harness.Options{Name: "proxy"})
	u, err := url.Parse(c.Server)
	if err != nil {
		t.Fatal(err)
	}
	d := &recordingDialer{}
	tp := startProxy(t, Config{Upstream: u.Host, Dialer: d})
	proxyURL := &url.URL{Scheme: "http", Host: tp.addr}

	// client-go: a server name that only exists behind the proxy, as a consumer cluster sees it.
	cfg := rest.CopyConfig(c.Config)
	cfg.Host = "https://kubernetes.default.svc:443"
	cfg.TLSClientConfig.ServerName = "localhost"
	cfg.Proxy = http.ProxyURL(proxyURL)
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	nss, err := cs.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("list namespaces through the proxy: %v", err)
	}
	if len(nss.Items) == 0 {
		t.Fatal("no namespaces")
	}
	w, err := cs.CoreV1().Namespaces().Watch(ctx, metav1.ListOptions{ResourceVersion: nss.ResourceVersion})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	if _, err := c.Clientset(t).CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "through-proxy"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	gotEvent := false
	for !gotEvent {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				t.Fatal("watch closed before the event")
			}
			if ns, isNS := ev.Object.(*corev1.Namespace); isNS && ev.Type == watch.Added && ns.Name == "through-proxy" {
				gotEvent = true
			}
		case <-ctx.Done():
			t.Fatal("no watch event through the proxy")
		}
	}
	for _, a := range d.addrs() {
		if a != u.Host {
			t.Fatalf("proxy dialed %s, not the API server %s", a, u.Host)
		}
	}
	if total(tp, KindConnect, ResultOK)+float64(tp.Active()) == 0 || len(d.addrs()) == 0 {
		t.Fatal("client-go did not go through the proxy")
	}

	// kubectl with proxy-url in the kubeconfig.
	kc, err := clientcmd.LoadFromFile(c.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	for _, cl := range kc.Clusters {
		cl.ProxyURL = proxyURL.String()
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
	before := len(d.addrs())
	out, errOut, err := harness.RunKubectl(ctx, t, path, "get", "ns", "through-proxy", "-o", "name")
	if err != nil {
		t.Fatalf("kubectl through the proxy: %v\n%s", err, errOut)
	}
	if strings.TrimSpace(out) != "namespace/through-proxy" {
		t.Fatalf("kubectl printed %q", out)
	}
	if len(d.addrs()) == before {
		t.Fatal("kubectl did not go through the proxy")
	}
}
