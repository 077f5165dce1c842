package connect

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/apiproxy/apiproxy/pkg/tunnel"
	"github.com/apiproxy/apiproxy/test/testnet"
)

func rawConfig() clientcmdapi.Config {
	c := clientcmdapi.NewConfig()
	c.Clusters["c1"] = &clientcmdapi.Cluster{Server: "https://api.cl02.example:6443", CertificateAuthorityData: []byte("ca")}
	c.Clusters["c2"] = &clientcmdapi.Cluster{Server: "https://other:443"}
	c.AuthInfos["u1"] = &clientcmdapi.AuthInfo{Token: "secret"}
	c.AuthInfos["u2"] = &clientcmdapi.AuthInfo{Token: "other"}
	c.Contexts["cl02"] = &clientcmdapi.Context{Cluster: "c1", AuthInfo: "u1", Namespace: "team"}
	c.Contexts["cl01"] = &clientcmdapi.Context{Cluster: "c2", AuthInfo: "u2"}
	c.CurrentContext = "cl01"
	return *c
}

func TestTargetKubeconfigs(t *testing.T) {
	tg, err := NewTarget(rawConfig(), "cl02")
	if err != nil {
		t.Fatal(err)
	}
	if len(tg.Config.Contexts) != 1 || len(tg.Config.AuthInfos) != 1 {
		t.Fatalf("target keeps other contexts or users (credentials must not leak): %+v", tg.Config.Contexts)
	}
	if a, _ := tg.Authority(); a != "api.cl02.example:6443" {
		t.Errorf("authority = %q", a)
	}

	p := tg.WithProxyURL("http://10.81.0.3:8118")
	if got := p.Clusters["c1"].ProxyURL; got != "http://10.81.0.3:8118" {
		t.Errorf("proxy-url = %q", got)
	}
	if p.Clusters["c1"].Server != "https://api.cl02.example:6443" {
		t.Errorf("proxy-url kubeconfig changed the server: %q", p.Clusters["c1"].Server)
	}

	l := tg.WithListener("127.0.0.1:4321", "")
	c := l.Clusters["c1"]
	if c.Server != "https://127.0.0.1:4321" || c.TLSServerName != "api.cl02.example" || c.ProxyURL != "" {
		t.Errorf("listener kubeconfig: server %q tls-server-name %q proxy-url %q", c.Server, c.TLSServerName, c.ProxyURL)
	}
	if tg.Config.Clusters["c1"].Server != "https://api.cl02.example:6443" {
		t.Error("WithListener modified the target")
	}
	if l := tg.WithListener("127.0.0.1:1", "override"); l.Clusters["c1"].TLSServerName != "override" {
		t.Error("explicit --tls-server-name ignored")
	}

	dst := rawConfig()
	MergeInto(&dst, p, "cl02", "cl02-via-apiproxy")
	m := dst.Contexts["cl02-via-apiproxy"]
	if m == nil || dst.Clusters[m.Cluster].ProxyURL != "http://10.81.0.3:8118" || dst.AuthInfos[m.AuthInfo].Token != "secret" || m.Namespace != "team" {
		t.Fatalf("merged context: %+v", m)
	}
	if dst.CurrentContext != "cl01" || dst.Clusters["c1"].ProxyURL != "" {
		t.Error("merge changed the current context or the original cluster")
	}
}

func TestTargetErrors(t *testing.T) {
	if _, err := NewTarget(rawConfig(), "nope"); err == nil || !strings.Contains(err.Error(), `"nope"`) {
		t.Errorf("unknown context: %v", err)
	}
	empty := rawConfig()
	empty.CurrentContext = ""
	if _, err := NewTarget(empty, ""); err == nil || !strings.Contains(err.Error(), "--context") {
		t.Errorf("no current context: %v", err)
	}
}

func TestDescribeDialError(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{&tunnel.ConnectError{Proxy: "p:1", Target: "t:2", StatusCode: 502, Status: "502 Bad Gateway"}, "502 Bad Gateway"},
		{context.DeadlineExceeded, "did not answer in time"},
		{errors.New("connection refused"), "cannot reach proxy http://p:1"},
	} {
		got := DescribeDialError(tc.err, "http://p:1").Error()
		if !strings.Contains(got, tc.want) || !strings.Contains(got, "p:1") {
			t.Errorf("DescribeDialError(%v) = %q, want it to name the proxy and contain %q", tc.err, got, tc.want)
		}
	}
}

// The forwarder relays bytes both ways, and a failed tunnel closes the local connection and is reported.
func TestForwarder(t *testing.T) {
	echo := testnet.Serve(t, "tcp", "127.0.0.1:0", func(c net.Conn) { _, _ = io.Copy(c, c) })
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fail := make(chan struct{}, 1)
	reported := make(chan error, 1)
	f := &Forwarder{
		Listener: l, DialTimeout: 5 * time.Second,
		Dial: func(ctx context.Context) (net.Conn, error) {
			select {
			case <-fail:
				return nil, errors.New("refused")
			default:
				return (&net.Dialer{}).DialContext(ctx, "tcp", echo)
			}
		},
		OnError: func(err error) { reported <- err },
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Serve(ctx) }()

	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo through forwarder: %q %v", buf, err)
	}
	c.Close()

	fail <- struct{}{}
	c2, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	_ = c2.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c2.Read(buf); err == nil {
		t.Fatal("local connection stayed open although the tunnel failed")
	}
	select {
	case err := <-reported:
		if !strings.Contains(err.Error(), "refused") {
			t.Errorf("reported %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("failed tunnel not reported")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
}
