// Package aggregated runs a small aggregated API server for tests: it serves the group
// demo.apiproxy.io/v1 with one read-only resource, `whoamis`, whose single item is named after the
// user the kube-apiserver forwarded. It trusts only the aggregation layer's front proxy, through
// k8s.io/apiserver's request-header authenticator (client certificate signed by the front-proxy CA,
// with an allowed CN; the user taken from X-Remote-User), exactly as a real aggregated server does.
//
// Tests use it to prove that everything behind a kube-apiserver, aggregated APIs included, works
// through the project's tunnels unchanged and with the tunnelled user's identity.
package aggregated

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apiserver/pkg/authentication/authenticator"
	"k8s.io/apiserver/pkg/authentication/request/headerrequest"

	"github.com/apiproxy/apiproxy/pkg/certs"
	"github.com/apiproxy/apiproxy/test/harness"
)

const (
	Group    = "demo.apiproxy.io"
	Version  = "v1"
	Resource = "whoamis"
	Kind     = "WhoAmI"
)

// Server is a running aggregated API server.
type Server struct {
	// Addr is the loopback address it listens on.
	Addr string
	// ServiceNamespace and ServiceName name the ExternalName Service the APIService points at.
	ServiceNamespace, ServiceName string
	caBundle                      []byte
}

// Start serves the aggregated API on loopback for the cluster's front proxy and registers it with
// the cluster (an ExternalName Service "localhost" and an APIService), waiting until the
// kube-apiserver reports the APIService Available. The cluster must have been started with
// harness.Options{Aggregation: true}.
func Start(t testing.TB, c *harness.Cluster) *Server {
	t.Helper()
	if c.FrontProxy == nil {
		t.Fatalf("cluster %s has no aggregation layer: start it with harness.Options{Aggregation: true}", c.Name)
	}
	s := &Server{ServiceNamespace: "default", ServiceName: "demo-aggregated"}

	// The kube-apiserver verifies our serving certificate for the Service's DNS name.
	ca, err := certs.NewCA("demo-aggregated-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	serving, err := ca.Issue(certs.Request{
		CommonName: s.ServiceName,
		DNSNames:   []string{s.ServiceName + "." + s.ServiceNamespace + ".svc", "localhost"},
		Server:     true, Validity: time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	s.caBundle = ca.CertPEM
	keyPair, err := tls.X509KeyPair(serving.CertPEM, serving.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}

	auth, err := frontProxyAuthenticator(c.FrontProxy)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.Addr = l.Addr().String()
	srv := &http.Server{
		Handler: s.handler(auth),
		TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{keyPair},
			// The authenticator verifies the chain and the CN; the handshake only asks for it.
			ClientAuth: tls.RequestClientCert,
			MinVersion: tls.VersionTLS12,
		},
		ReadHeaderTimeout: 5 * time.Second,
	}
	go func() { _ = srv.ServeTLS(l, "", "") }()
	t.Cleanup(func() { _ = srv.Close() })

	s.register(t, c)
	return s
}

type requestAuthenticator = authenticator.Request

func (s *Server) handler(auth requestAuthenticator) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		resp, ok, err := auth.AuthenticateRequest(r)
		if err != nil || !ok {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			_ = json.NewEncoder(w).Encode(metav1.Status{
				TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
				Status:   metav1.StatusFailure, Code: http.StatusUnauthorized, Reason: metav1.StatusReasonUnauthorized,
				Message: fmt.Sprintf("only the aggregation layer's front proxy may call this server (%v)", err),
			})
			return
		}
		user := resp.User
		gv := Group + "/" + Version
		switch strings.TrimSuffix(r.URL.Path, "/") {
		case "/apis":
			writeJSON(w, metav1.APIGroupList{
				TypeMeta: metav1.TypeMeta{Kind: "APIGroupList", APIVersion: "v1"},
				Groups:   []metav1.APIGroup{apiGroup()},
			})
		case "/apis/" + Group:
			g := apiGroup()
			g.TypeMeta = metav1.TypeMeta{Kind: "APIGroup", APIVersion: "v1"}
			writeJSON(w, g)
		case "/apis/" + gv:
			writeJSON(w, metav1.APIResourceList{
				TypeMeta:     metav1.TypeMeta{Kind: "APIResourceList", APIVersion: "v1"},
				GroupVersion: gv,
				APIResources: []metav1.APIResource{{Name: Resource, SingularName: "whoami", Kind: Kind, Verbs: []string{"get", "list"}}},
			})
		case "/apis/" + gv + "/" + Resource:
			item := map[string]any{
				"apiVersion": gv, "kind": Kind,
				"metadata": map[string]any{"name": user.GetName(), "creationTimestamp": time.Now().UTC().Format(time.RFC3339)},
				"groups":   user.GetGroups(),
			}
			writeJSON(w, map[string]any{"apiVersion": gv, "kind": Kind + "List", "metadata": map[string]any{}, "items": []any{item}})
		case "/healthz", "/readyz", "/livez":
			_, _ = w.Write([]byte("ok"))
		default:
			http.NotFound(w, r)
		}
	})
}

func apiGroup() metav1.APIGroup {
	gvd := metav1.GroupVersionForDiscovery{GroupVersion: Group + "/" + Version, Version: Version}
	return metav1.APIGroup{Name: Group, Versions: []metav1.GroupVersionForDiscovery{gvd}, PreferredVersion: gvd}
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// frontProxyAuthenticator is k8s.io/apiserver's request-header authenticator configured from the
// cluster's --requestheader-* settings.
func frontProxyAuthenticator(fp *harness.FrontProxy) (requestAuthenticator, error) {
	caPEM, err := os.ReadFile(fp.CAFile)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("no certificate in %s", fp.CAFile)
	}
	opts := x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	return headerrequest.NewDynamicVerifyOptionsSecure(
		func() (x509.VerifyOptions, bool) { return opts, true },
		headerrequest.StaticStringSlice(fp.AllowedNames),
		headerrequest.StaticStringSlice{fp.UsernameHeader},
		headerrequest.StaticStringSlice{},
		headerrequest.StaticStringSlice{fp.GroupHeader},
		headerrequest.StaticStringSlice{fp.ExtraHeaderPrefix},
	), nil
}

var apiServiceGVR = schema.GroupVersionResource{Group: "apiregistration.k8s.io", Version: "v1", Resource: "apiservices"}

func (s *Server) register(t testing.TB, c *harness.Cluster) {
	t.Helper()
	ctx := context.Background()
	_, port, _ := net.SplitHostPort(s.Addr)
	var portNum int32
	fmt.Sscan(port, &portNum)
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: s.ServiceName, Namespace: s.ServiceNamespace},
		Spec: corev1.ServiceSpec{
			Type:         corev1.ServiceTypeExternalName,
			ExternalName: "localhost",
			Ports:        []corev1.ServicePort{{Name: "https", Port: portNum}},
		},
	}
	if _, err := c.Clientset(t).CoreV1().Services(s.ServiceNamespace).Create(ctx, svc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("service for the aggregated server: %v", err)
	}
	apiService := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
		"metadata": map[string]any{"name": Version + "." + Group},
		"spec": map[string]any{
			"group": Group, "version": Version,
			"service":              map[string]any{"namespace": s.ServiceNamespace, "name": s.ServiceName, "port": int64(portNum)},
			"caBundle":             s.caBundle,
			"groupPriorityMinimum": int64(1000), "versionPriority": int64(15),
		},
	}}
	dc := c.Dynamic(t)
	if _, err := dc.Resource(apiServiceGVR).Create(ctx, apiService, metav1.CreateOptions{}); err != nil {
		t.Fatalf("APIService: %v", err)
	}
	t.Cleanup(func() {
		_ = dc.Resource(apiServiceGVR).Delete(context.Background(), Version+"."+Group, metav1.DeleteOptions{})
	})
	var last string
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		u, err := dc.Resource(apiServiceGVR).Get(ctx, Version+"."+Group, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
		for _, cnd := range conds {
			m, _ := cnd.(map[string]any)
			if m["type"] == "Available" {
				last = fmt.Sprintf("%v: %v", m["reason"], m["message"])
				return m["status"] == "True", nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("APIService %s.%s not Available: %v (last condition: %s)", Version, Group, err, last)
	}
}
