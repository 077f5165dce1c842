package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/apiproxy/apiproxy/pkg/pathcheck"
	"github.com/apiproxy/apiproxy/test/fixtures/liqo"
	"github.com/apiproxy/apiproxy/test/harness"
	"github.com/apiproxy/apiproxy/test/scenario"
	"github.com/apiproxy/apiproxy/test/testnet"
)

// TestCheck runs `kubectl apiproxy check` on the seed's scenario (a real agent proxy between two
// real API servers): every hop OK, then each hop broken in turn, where the failing hop must be the
// one named, with its fix, and the exit status non-zero. Once per pinned Liqo release's CRDs.
func TestCheck(t *testing.T) {
	for _, v := range liqo.Versions {
		t.Run("liqo-"+v, func(t *testing.T) { testCheck(t, v) })
	}
}

func testCheck(t *testing.T, version string) {
	assets := harness.AssetsDir(t)
	sc, err := scenario.Up(t, assets, scenario.Options{AgentBinary: agentBin(t), Dir: t.TempDir(), LiqoVersion: version})
	if err != nil {
		t.Fatal(err)
	}
	s := &env{Scenario: sc}
	ctx := context.Background()
	cl01, cl02 := sc.CL01.Dynamic(t), sc.CL02.Dynamic(t)
	check := []string{"check", "--remote", "cl01", "--dial-timeout", "5s"}

	// hopLines parses the table: hop name -> its line.
	hopLines := func(t *testing.T, out string) map[string]string {
		t.Helper()
		lines := map[string]string{}
		sc := bufio.NewScanner(strings.NewReader(out))
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) >= 2 {
				lines[f[1]] = sc.Text()
			}
		}
		return lines
	}
	hopOrder := []string{"liqo", "ip", "configuration", "condition", "address", "tcp", "connect", "tls", "readyz", "access"}
	// broken asserts a non-zero exit, hop FAIL with every want in its line, the earlier hops OK
	// and the later ones SKIP.
	broken := func(t *testing.T, r result, hop string, want ...string) {
		t.Helper()
		var exit *exec.ExitError
		if !errors.As(r.err, &exit) || exit.ExitCode() == 0 {
			t.Fatalf("exit: %v, want non-zero\n%s%s", r.err, r.stdout, r.stderr)
		}
		lines := hopLines(t, r.stdout)
		before := true
		for _, h := range hopOrder {
			line := lines[h]
			switch {
			case h == hop:
				if !strings.HasPrefix(line, "FAIL") {
					t.Errorf("hop %s: %q, want FAIL\n%s", h, line, r.stdout)
				}
				for _, w := range append(want, "fix:") {
					if !strings.Contains(line, w) {
						t.Errorf("hop %s line %q lacks %q", h, line, w)
					}
				}
				before = false
			case before:
				if !strings.HasPrefix(line, "OK") {
					t.Errorf("hop %s before the broken one: %q, want OK\n%s", h, line, r.stdout)
				}
			default:
				if !strings.HasPrefix(line, "SKIP") {
					t.Errorf("hop %s after the broken one: %q, want SKIP", h, line)
				}
			}
		}
	}

	t.Run("working path: exit 0, every hop OK", func(t *testing.T) {
		r := s.plugin(t, check...)
		if r.err != nil {
			t.Fatalf("check: %v\n%s%s", r.err, r.stdout, r.stderr)
		}
		t.Logf("check:\n%s", r.stdout)
		lines := hopLines(t, r.stdout)
		for _, h := range hopOrder {
			if !strings.HasPrefix(lines[h], "OK") {
				t.Errorf("hop %s: %q, want OK", h, lines[h])
			}
		}
		for h, w := range map[string]string{"ip": "IP liqo/api-server-proxy in cl02", "address": "http://" + s.ProxyAddr,
			"tcp": s.ProxyAddr, "configuration": "Configuration liqo/cl02 in cl01", "condition": map[string]string{
				liqo.V1_2_0: "True, observed at the current generation 1", liqo.V1_0_0: "no NetworkCIDRsConfigured condition (Liqo before v1.2.0"}[version]} {
			if !strings.Contains(lines[h], w) {
				t.Errorf("hop %s: %q lacks %q", h, lines[h], w)
			}
		}
		if !strings.Contains(lines["access"], "user admin-cl02 may list namespaces") {
			t.Errorf("access hop does not name the user: %q", lines["access"])
		}
		// connect says which IP object and proxy it used, like get-ip.
		if r := s.plugin(t, "connect", "--remote", "cl01", "--print-kubeconfig"); r.err != nil ||
			!strings.Contains(r.stderr, "using IP liqo/api-server-proxy in cl02") || !strings.Contains(r.stderr, "Liqo's own API server proxy") {
			t.Errorf("connect stderr %q (err %v): want the IP object and proxy used", r.stderr, r.err)
		}
		r = s.plugin(t, append(check, "-o", "json")...)
		var rep pathcheck.Report
		if r.err != nil || json.Unmarshal([]byte(r.stdout), &rep) != nil || !rep.OK || len(rep.Hops) != len(hopOrder) || rep.ProxyURL != "http://"+s.ProxyAddr {
			t.Errorf("-o json: %v %+v\n%s", r.err, rep, r.stdout)
		}
	})

	conf := liqo.Configuration("liqo", "cl02", scenario.ProviderClusterID,
		liqo.CIDRs{Pod: []string{"127.90.0.0/16"}, External: []string{scenario.ProviderExternalCIDR}},
		&liqo.CIDRs{Pod: []string{"127.91.0.0/16"}, External: []string{scenario.ConsumerRemappedCIDR}})
	t.Run("no Configuration", func(t *testing.T) {
		liqo.Delete(ctx, t, cl01, conf)
		r := s.plugin(t, check...)
		broken(t, r, "configuration", "liqo.io/remote-cluster-id="+scenario.ProviderClusterID, "--remote-cidr")
	})
	t.Run("Configuration status not yet set", func(t *testing.T) {
		pending := conf.DeepCopy()
		delete(pending.Object, "status")
		liqo.Create(ctx, t, cl01, pending)
		r := s.plugin(t, check...)
		broken(t, r, "configuration", "no status.remote.cidr yet", "wait")
		liqo.Delete(ctx, t, cl01, pending)
		liqo.Create(ctx, t, cl01, conf)
	})
	t.Run("NetworkCIDRsConfigured False", func(t *testing.T) {
		// Liqo v1.2.0 is still remapping the peering: liqoctl would wait. v1.0.0's CRD has no
		// conditions: the condition is dropped, and the Configuration used as it is.
		liqo.Delete(ctx, t, cl01, conf)
		remapping := liqo.NetworkCIDRsConfigured(conf.DeepCopy(), "False", "Remapping", 1, time.Now().Add(-time.Minute))
		liqo.Create(ctx, t, cl01, remapping)
		defer func() { liqo.Delete(ctx, t, cl01, remapping); liqo.Create(ctx, t, cl01, conf) }()
		r := s.plugin(t, check...)
		if version == liqo.V1_0_0 {
			if line := hopLines(t, r.stdout)["condition"]; r.err != nil || !strings.HasPrefix(line, "OK") || !strings.Contains(line, "no NetworkCIDRsConfigured condition") {
				t.Errorf("Liqo v1.0.0: %v, condition hop %q\n%s", r.err, line, r.stdout)
			}
			return
		}
		broken(t, r, "condition", "Configuration liqo/cl02 in cl01 is not ready", "NetworkCIDRsConfigured is False (reason Remapping)", "--ignore-liqo-conditions")
		r = s.plugin(t, append(check, "--ignore-liqo-conditions")...)
		if line := hopLines(t, r.stdout)["condition"]; r.err != nil || !strings.HasPrefix(line, "OK") || !strings.Contains(line, "WARNING") {
			t.Errorf("--ignore-liqo-conditions: %v, condition hop %q\n%s", r.err, line, r.stdout)
		}
	})
	t.Run("IP status not yet set", func(t *testing.T) {
		liqo.Create(ctx, t, cl02, liqo.IP("liqo", "pending", "10.0.0.11", nil))
		r := s.plugin(t, append(check, "--name", "pending")...)
		broken(t, r, "ip", "IP liqo/pending", "no remapped address yet")
	})
	t.Run("proxy not listening", func(t *testing.T) {
		r := s.plugin(t, append(check, "--proxy-port", "8119")...)
		broken(t, r, "tcp", "127.81.0.3:8119", "cannot reach proxy", "--proxy-port")
	})
	t.Run("proxy answering 403", func(t *testing.T) {
		// Another proxy address, 127.81.0.4, where a stand-in answers every CONNECT with 403.
		testnet.Serve(t, "tcp", "127.81.0.4:8118", func(c net.Conn) {
			_, _ = bufio.NewReader(c).ReadString('\n')
			_, _ = c.Write([]byte("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"))
		})
		liqo.Create(ctx, t, cl02, liqo.IP("liqo", "forbidding", "10.0.0.12", liqo.IPStatus("127.70.0.4", scenario.ProviderExternalCIDR)))
		r := s.plugin(t, append(check, "--name", "forbidding")...)
		broken(t, r, "connect", "403 Forbidden", "tunnels.apiproxy.io", "--clusterrole=apiproxy-tunnel")
	})
	t.Run("wrong TLS name", func(t *testing.T) {
		r := s.plugin(t, append(check, "--tls-server-name", "wrong.example")...)
		broken(t, r, "tls", `not valid for "wrong.example"`, "--tls-server-name")
	})
	t.Run("RBAC missing", func(t *testing.T) {
		// User "nobody" may read the Liqo objects in cl02 (so the address is computed) but has no
		// right to list namespaces.
		cs := sc.CL02.Clientset(t)
		rules := []rbacv1.PolicyRule{{APIGroups: []string{"ipam.liqo.io"}, Resources: []string{"ips"}, Verbs: []string{"get", "list"}},
			{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"get", "list"}}}
		if _, err := cs.RbacV1().Roles("liqo").Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "liqo-reader"}, Rules: rules}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := cs.RbacV1().RoleBindings("liqo").Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "liqo-reader"},
			RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "liqo-reader"},
			Subjects: []rbacv1.Subject{{Kind: "User", APIGroup: "rbac.authorization.k8s.io", Name: "nobody"}}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		r := s.plugin(t, append([]string{"--as", "nobody"}, check...)...)
		broken(t, r, "access", "user nobody (impersonated) may not list namespaces", "clusterrolebinding")
	})
}
