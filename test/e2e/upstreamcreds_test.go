package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/apiproxy/apiproxy/test/scenario"
)

// testNodeForwarderCredentials: the node role installed with --upstream-proxy carrying the peer's
// token reaches cl02's API server through cl02's `agent proxy --auth tokenreview`. install puts the
// token into a Secret and the forwarder's args name only the file it is mounted at; the forwarder
// runs here with exactly those --upstream, --upstream-proxy and --upstream-proxy-credentials-file
// values (the file holding the Secret's content, as the kubelet mounts it), and a client-go client
// GETs /version through its transparent listener. A wrong token in the file (a rotation to a bad
// Secret) is picked up without a restart and fails the next connection.
func testNodeForwarderCredentials(t *testing.T, e *securedEnv, apiAuthority string) {
	proxyURL := "http://token:" + e.token + "@" + e.ProxyAddr
	r := e.plugin(t, e.certKC, "--context", "cl01", "install", "--roles", "node", "--upstream", apiAuthority,
		"--upstream-proxy", proxyURL, "--dry-run=client", "-o", "json")
	if r.err != nil {
		t.Fatalf("install --roles node --upstream-proxy http://token:TOKEN@…: %v\n%s", r.err, r.stderr)
	}
	var list struct{ Items []map[string]any }
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil {
		t.Fatal(err)
	}
	var secret corev1.Secret
	var ds appsv1.DaemonSet
	for _, item := range list.Items {
		u := &unstructured.Unstructured{Object: item}
		var into any
		switch u.GetKind() {
		case "Secret":
			into = &secret
		case "DaemonSet":
			into = &ds
		default:
			continue
		}
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(item, into); err != nil {
			t.Fatal(err)
		}
	}
	if secret.Name == "" || len(ds.Spec.Template.Spec.Containers) == 0 {
		t.Fatalf("install rendered no Secret or no DaemonSet:\n%s", strings.ReplaceAll(r.stdout, e.token, "TOKEN"))
	}
	var fwd *corev1.Container
	for i, c := range ds.Spec.Template.Spec.Containers {
		if strings.Contains(strings.Join(c.Args, " "), e.token) {
			t.Errorf("container %s carries the token in its args", c.Name)
		}
		if c.Name == "proxy" {
			fwd = &ds.Spec.Template.Spec.Containers[i]
		}
	}
	if fwd == nil {
		t.Fatal("no forwarder container proxy in the DaemonSet")
	}
	arg := func(name string) string {
		i := slices.Index(fwd.Args, name)
		if i < 0 || i+1 >= len(fwd.Args) {
			t.Fatalf("forwarder args have no %s: %v", name, fwd.Args)
		}
		return fwd.Args[i+1]
	}
	mount := arg("--upstream-proxy-credentials-file")
	if !slices.ContainsFunc(fwd.VolumeMounts, func(m corev1.VolumeMount) bool { return strings.HasPrefix(mount, m.MountPath+"/") }) {
		t.Fatalf("the forwarder reads %s, which no volume of it holds: %+v", mount, fwd.VolumeMounts)
	}
	// The kubelet writes each key of the Secret as a file of the volume.
	credsFile := filepath.Join(t.TempDir(), filepath.Base(mount))
	content, ok := secret.StringData[filepath.Base(mount)]
	if !ok {
		t.Fatalf("secret %s has no key %s", secret.Name, filepath.Base(mount))
	}
	if err := os.WriteFile(credsFile, []byte(content), 0o400); err != nil {
		t.Fatal(err)
	}

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	forwardAddr := l.Addr().String()
	l.Close()
	connectL, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	connectAddr := connectL.Addr().String()
	connectL.Close()
	p, err := scenario.RunAgentProxy(t, agentBin(t), connectAddr, "https://"+arg("--upstream"), filepath.Join(e.dir, "node-forwarder.log"),
		"--listen-tcp", forwardAddr, "--upstream-proxy", arg("--upstream-proxy"), "--upstream-proxy-credentials-file", credsFile)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop()

	// cl02's API server through the forwarder's transparent listener (TLS end to end).
	cfg := rest.CopyConfig(e.CL02.Config)
	u, _ := url.Parse(e.CL02.Server)
	cfg.Host = "https://" + forwardAddr
	cfg.TLSClientConfig.ServerName = u.Hostname()
	cfg.Timeout = 20 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cs := kubernetes.NewForConfigOrDie(cfg)
	if _, err := cs.Discovery().ServerVersion(); err != nil {
		b, _ := os.ReadFile(p.Log)
		t.Fatalf("GET /version through the node forwarder and cl02's authenticating proxy: %v\nforwarder log:\n%s", err, strings.ReplaceAll(string(b), e.token, "TOKEN"))
	}
	// A rotation to a bad token is read at the next dial: the next connection fails.
	if err := os.Remove(credsFile); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(credsFile, []byte("token:not-a-valid-token"), 0o400); err != nil {
		t.Fatal(err)
	}
	// A new connection through the forwarder: its CONNECT to cl02's proxy gets 407, so the TLS
	// handshake with the API server never completes.
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(e.CL02.Config.CAData)
	d := &tls.Dialer{Config: &tls.Config{ServerName: u.Hostname(), RootCAs: pool}}
	if c, err := d.DialContext(ctx, "tcp", forwardAddr); err == nil {
		c.Close()
		t.Errorf("a TLS handshake with cl02's API server succeeded with a bad token in the credentials file: the file is not read per dial")
	}
	b, _ := os.ReadFile(p.Log)
	if strings.Contains(string(b), e.token) {
		t.Errorf("the forwarder's log holds the token")
	}
}
