package aggregated_test

import (
	"context"
	"crypto/tls"
	"net/http"
	"strings"
	"testing"

	"github.com/apiproxy/apiproxy/test/aggregated"
	"github.com/apiproxy/apiproxy/test/harness"
)

// The aggregated server is reachable through the kube-apiserver with the caller's identity, and
// refuses anyone who is not the front proxy.
func TestAggregatedThroughAPIServer(t *testing.T) {
	c := harness.Start(t, harness.Options{Name: "agg", Aggregation: true})
	s := aggregated.Start(t, c)
	ctx := context.Background()

	out, stderr, err := harness.RunKubectl(ctx, t, c.Kubeconfig, "get", aggregated.Resource+"."+aggregated.Group, "-o", "name")
	if err != nil {
		t.Fatalf("kubectl get whoamis: %v\n%s", err, stderr)
	}
	if want := "whoami.demo.apiproxy.io/admin-agg"; strings.TrimSpace(out) != want {
		t.Fatalf("kubectl get whoamis = %q, want %q (the user forwarded by the aggregation layer)", out, want)
	}

	// Direct call without the front-proxy certificate, claiming to be an admin: refused.
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	req, _ := http.NewRequest("GET", "https://"+s.Addr+"/apis/demo.apiproxy.io/v1/whoamis", nil)
	req.Header.Set("X-Remote-User", "system:admin")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("direct call with a forged X-Remote-User: status %d, want 401", resp.StatusCode)
	}
}
