package webhook

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// mapReader serves ConfigMaps from memory: "ns/name" → data; names in broken fail like a timeout.
type mapReader struct {
	maps   map[string]map[string]string
	broken map[string]bool
	reads  atomic.Int32
}

func (r *mapReader) ConfigMapData(_ context.Context, ns, name string) (map[string]string, error) {
	r.reads.Add(1)
	if r.broken[name] {
		return nil, errors.New("context deadline exceeded")
	}
	if d, ok := r.maps[ns+"/"+name]; ok {
		return d, nil
	}
	return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "configmaps"}, name)
}

func nsPodReview(ns, op, subresource, pod, old string) []byte {
	return []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u-1",` +
		`"kind":{"group":"","version":"v1","kind":"Pod"},"namespace":"` + ns + `","subResource":"` + subresource + `",` +
		`"operation":"` + op + `","object":` + pod + `,"oldObject":` + old + `}}`)
}

// A value from envFrom counts as set: ConfigMaps are read (prefix and optional honoured), Secrets
// never are, and what cannot be known leaves the container alone with a warning.
func TestEnvFrom(t *testing.T) {
	const hostVar = `{"name":"KUBERNETES_SERVICE_HOST","value":"api.example.com."}`
	reader := &mapReader{
		maps: map[string]map[string]string{
			"app/sets-host":   {EnvHost: "mine.example", "OTHER": "x"},
			"app/prefixed":    {"SERVICE_HOST": "mine.example"},
			"app/unrelated":   {"FOO": "1"},
			"app/sets-port":   {"KUBERNETES_SERVICE_PORT": "1"},
			"other/elsewhere": {EnvHost: "elsewhere"},
		},
		broken: map[string]bool{"slow": true},
	}
	plain := Config{FQDN: "api.example.com.", ConfigMaps: reader}
	withPort := Config{FQDN: "api.example.com.", Port: 6443, ConfigMaps: reader}
	container := func(envFrom string) string {
		return `{"spec":{"containers":[{"name":"a","envFrom":[` + envFrom + `]}]}}`
	}
	injected := `[{"op":"add","path":"/spec/containers/0/env","value":[` + hostVar + `]}]`
	cases := []struct {
		name, pod string
		cfg       Config
		want      string // "" = no patch
		warning   string // "" = none
	}{
		{"ConfigMap that sets the host: left alone", container(`{"configMapRef":{"name":"sets-host"}}`), plain, "", ""},
		{"prefix + key sets the host", container(`{"prefix":"KUBERNETES_","configMapRef":{"name":"prefixed"}}`), plain, "", ""},
		{"prefix that does not produce the name", container(`{"prefix":"X_","configMapRef":{"name":"sets-host"}}`), plain, injected, ""},
		{"ConfigMap without the variable", container(`{"configMapRef":{"name":"unrelated"}}`), plain, injected, ""},
		{"ConfigMap of another namespace is not this one", container(`{"configMapRef":{"name":"elsewhere"}}`), plain, "", `ConfigMap "elsewhere" could not be read`},
		{"optional and missing sets nothing", container(`{"configMapRef":{"name":"nowhere","optional":true}}`), plain, injected, ""},
		{"missing, not optional: unknown", container(`{"configMapRef":{"name":"nowhere","optional":false}}`), plain, "", "not found"},
		{"unreadable: left alone", container(`{"configMapRef":{"name":"slow"}}`), plain, "", `container "a" left unchanged: envFrom ConfigMap "slow" could not be read`},
		{"Secret that could set it: left alone", container(`{"secretRef":{"name":"s"}}`), plain, "", `envFrom Secret "s" may set`},
		{"Secret whose prefix cannot produce it", container(`{"prefix":"APP_","secretRef":{"name":"s"}}`), plain, injected, ""},
		{"Secret prefix equal to the whole name cannot produce it", container(`{"prefix":"KUBERNETES_SERVICE_HOST","secretRef":{"name":"s"}}`), plain, injected, ""},
		{"Secret prefix that could produce the port family", container(`{"prefix":"KUBERNETES_PORT","secretRef":{"name":"s"}}`), withPort, "", "may set"},
		{"unknown source kind", container(`{"prefix":"A"}`), plain, "", "unknown kind"},
		{"ConfigMap sets the port only: the rest is added", container(`{"configMapRef":{"name":"sets-port"}}`), Config{FQDN: "api.example.com.", Port: 6443, ConfigMaps: reader},
			"", ""}, // checked below
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, _, err := newTestHandler(t, tc.cfg).Review(nsPodReview("app", "CREATE", "", tc.pod, "null"))
			if err != nil {
				t.Fatal(err)
			}
			d := decodeResponse(t, out)
			if !d.Response.Allowed {
				t.Fatalf("denied: %s", out)
			}
			if tc.name == "ConfigMap sets the port only: the rest is added" {
				p := string(d.Response.Patch)
				if !strings.Contains(p, EnvHost) || strings.Contains(p, `"KUBERNETES_SERVICE_PORT"`) || !strings.Contains(p, "KUBERNETES_SERVICE_PORT_HTTPS") {
					t.Fatalf("patch %s: want the host and the family without KUBERNETES_SERVICE_PORT", p)
				}
				return
			}
			if tc.want == "" && d.Response.Patch != nil {
				t.Fatalf("want no patch, got %s", d.Response.Patch)
			}
			if tc.want != "" {
				jsonEqual(t, d.Response.Patch, tc.want)
			}
			joined := strings.Join(d.Response.Warnings, "\n")
			if tc.warning == "" && joined != "" {
				t.Fatalf("unexpected warnings %q", joined)
			}
			if !strings.Contains(joined, tc.warning) {
				t.Fatalf("warnings %q lack %q", joined, tc.warning)
			}
		})
	}

	t.Run("without API access every configMapRef is left alone, with a warning", func(t *testing.T) {
		out, _, err := newTestHandler(t, Config{FQDN: "x."}).Review(nsPodReview("app", "CREATE", "", container(`{"configMapRef":{"name":"unrelated"}}`), "null"))
		if err != nil {
			t.Fatal(err)
		}
		d := decodeResponse(t, out)
		if d.Response.Patch != nil || len(d.Response.Warnings) != 1 || !strings.Contains(d.Response.Warnings[0], "no API access") {
			t.Fatalf("patch %s warnings %q", d.Response.Patch, d.Response.Warnings)
		}
	})

	t.Run("one read per ConfigMap per review, none without envFrom", func(t *testing.T) {
		before := reader.reads.Load()
		pod := `{"spec":{"initContainers":[{"name":"i","envFrom":[{"configMapRef":{"name":"unrelated"}}]}],"containers":[{"name":"a","envFrom":[{"configMapRef":{"name":"unrelated"}}]},{"name":"b"}]}}`
		if _, _, err := newTestHandler(t, plain).Review(nsPodReview("app", "CREATE", "", pod, "null")); err != nil {
			t.Fatal(err)
		}
		if n := reader.reads.Load() - before; n != 1 {
			t.Fatalf("%d reads, want 1", n)
		}
		before = reader.reads.Load()
		if _, _, err := newTestHandler(t, plain).Review(nsPodReview("app", "CREATE", "", `{"spec":{"containers":[{"name":"a"}]}}`, "null")); err != nil {
			t.Fatal(err)
		}
		if n := reader.reads.Load() - before; n != 0 {
			t.Fatalf("%d reads for a pod without envFrom", n)
		}
	})
}

// kubectl debug adds ephemeral containers through pods/ephemeralcontainers: the new ones get the
// variables; the existing ones (immutable) and the regular containers are not touched.
func TestEphemeralContainers(t *testing.T) {
	h := newTestHandler(t, Config{FQDN: "api.example.com.", Port: 6443})
	old := `{"spec":{"containers":[{"name":"a"}],"ephemeralContainers":[{"name":"debugger-1"}]}}`
	pod := `{"spec":{"containers":[{"name":"a"}],"ephemeralContainers":[{"name":"debugger-1"},{"name":"debugger-2","env":[{"name":"FOO","value":"1"}]}]}}`
	out, result, err := h.Review(nsPodReview("app", "UPDATE", "ephemeralcontainers", pod, old))
	if err != nil {
		t.Fatal(err)
	}
	d := decodeResponse(t, out)
	p := string(d.Response.Patch)
	if result != "patched" || !strings.Contains(p, `"/spec/ephemeralContainers/1/env/-"`) || strings.Contains(p, "/spec/ephemeralContainers/0/") || strings.Contains(p, "/spec/containers/") {
		t.Fatalf("result %s, patch %s: want only ephemeral container 1", result, p)
	}
	if !strings.Contains(p, `"KUBERNETES_SERVICE_PORT_HTTPS"`) {
		t.Fatalf("patch %s lacks KUBERNETES_SERVICE_PORT_HTTPS", p)
	}
	// Other pod updates are still skipped.
	if _, result, _ := h.Review(nsPodReview("app", "UPDATE", "", pod, old)); result != "skipped" {
		t.Fatalf("a plain pod update: %s", result)
	}
}
