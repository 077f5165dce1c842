package pathcheck

import (
	"bufio"
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/apiproxy/apiproxy/pkg/connect"
	"github.com/apiproxy/apiproxy/test/testnet"
)

func target(t *testing.T) *connect.Target {
	t.Helper()
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["c"] = &clientcmdapi.Cluster{Server: "https://127.0.0.1:6443", InsecureSkipTLSVerify: true}
	cfg.AuthInfos["u"] = &clientcmdapi.AuthInfo{}
	cfg.Contexts["c"] = &clientcmdapi.Context{Cluster: "c", AuthInfo: "u"}
	cfg.CurrentContext = "c"
	tg, err := connect.NewTarget(*cfg, "c")
	if err != nil {
		t.Fatal(err)
	}
	return tg
}

// With --proxy-url the Liqo hops are skipped (not failures); a proxy answering 407 fails the
// connect hop with the explanation, and every later hop is SKIP, not tried.
func TestRunStopsAtTheFailingHop(t *testing.T) {
	addr := testnet.Serve(t, "tcp", "127.0.0.1:0", func(c net.Conn) {
		_, _ = bufio.NewReader(c).ReadString('\n')
		_, _ = c.Write([]byte("HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Bearer\r\nContent-Length: 0\r\n\r\n"))
	})
	in := Input{ProxyURL: "http://" + addr, Target: target(t), REST: &rest.Config{Host: "https://127.0.0.1:6443"}, DialTimeout: 5 * time.Second}
	r := Run(context.Background(), in)
	if r.OK {
		t.Fatalf("report OK with a 407: %+v", r.Hops)
	}
	want := map[string]Status{"liqo": Skip, "ip": Skip, "configuration": Skip, "condition": Skip, "address": OK, "tcp": OK, "connect": Fail, "tls": Skip, "readyz": Skip, "access": Skip}
	if len(r.Hops) != len(want) {
		t.Fatalf("%d hops: %+v", len(r.Hops), r.Hops)
	}
	for _, h := range r.Hops {
		if h.Status != want[h.Hop] {
			t.Errorf("hop %s: %s, want %s", h.Hop, h.Status, want[h.Hop])
		}
		if h.Hop == "connect" && (!strings.Contains(h.Detail, "407") || !strings.Contains(h.Fix, "--auth tokenreview")) {
			t.Errorf("connect hop %+v: want the 407 explained", h)
		}
		if h.Hop == "tls" && !strings.HasPrefix(h.Detail, "not tried") {
			t.Errorf("tls hop %+v: want not tried", h)
		}
	}
}

// check answers a 407 as connect does: a user without a token gets the --proxy-token advice, and a
// token that the proxy rejects is named (never shown) in the connect hop.
func TestConnectHopWithProxyCredentials(t *testing.T) {
	var mu sync.Mutex
	var heads []string
	addr := testnet.Serve(t, "tcp", "127.0.0.1:0", func(c net.Conn) {
		head := ""
		br := bufio.NewReader(c)
		for {
			line, err := br.ReadString('\n')
			if err != nil || line == "\r\n" {
				break
			}
			head += line
		}
		mu.Lock()
		heads = append(heads, head)
		mu.Unlock()
		_, _ = c.Write([]byte("HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Bearer\r\nContent-Length: 0\r\n\r\n"))
	})
	connectHop := func(r *Report) Hop {
		for _, h := range r.Hops {
			if h.Hop == "connect" {
				return h
			}
		}
		t.Fatalf("no connect hop: %+v", r.Hops)
		return Hop{}
	}
	in := Input{ProxyURL: "http://" + addr, Target: target(t), REST: &rest.Config{Host: "https://127.0.0.1:6443"}, DialTimeout: 5 * time.Second,
		Creds: &connect.ProxyCredentials{Config: &rest.Config{Host: "https://127.0.0.1:6443"}, Context: "c"}}
	if h := connectHop(Run(context.Background(), in)); h.Status != Fail || !strings.Contains(h.Fix, "--proxy-token") || !strings.Contains(h.Detail, "client certificate") {
		t.Errorf("no token: %+v", h)
	}
	in.Creds = &connect.ProxyCredentials{Override: "s3cret-token", Context: "c"}
	h := connectHop(Run(context.Background(), in))
	if h.Status != Fail || !strings.Contains(h.Detail, "407") || !strings.Contains(h.Detail, "--proxy-token") || strings.Contains(h.Detail+h.Fix, "s3cret") {
		t.Errorf("rejected token: %+v", h)
	}
	mu.Lock()
	defer mu.Unlock()
	if last := heads[len(heads)-1]; !strings.Contains(last, "Proxy-Authorization: Bearer s3cret-token") {
		t.Errorf("the CONNECT did not carry --proxy-token: %q", last)
	}
}
