package webhook

import (
	"bytes"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// seedPatch is the output printed by the seed's curl example for testdata/admission.json.
const seedPatch = `[
  {"op": "add", "path": "/spec/initContainers/0/env", "value": [{"name": "KUBERNETES_SERVICE_HOST", "value": "foo.bar."}]},
  {"op": "add", "path": "/spec/containers/0/env", "value": [{"name": "KUBERNETES_SERVICE_HOST", "value": "foo.bar."}]}
]`

func newTestHandler(t testing.TB, c Config) *Handler {
	t.Helper()
	h, err := NewHandler(c, nil)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// post sends body to h in-process and returns the recorded response.
func post(h http.Handler, body []byte) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodPost, Path, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// decoded is an answered review as the API server reads it.
type decoded struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Response   struct {
		UID       string   `json:"uid"`
		Allowed   bool     `json:"allowed"`
		PatchType string   `json:"patchType"`
		Patch     []byte   `json:"patch"`
		Warnings  []string `json:"warnings"`
		Status    *struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		} `json:"status"`
	} `json:"response"`
}

func decodeResponse(t testing.TB, b []byte) decoded {
	t.Helper()
	var d decoded
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("response is not JSON: %v\n%s", err, b)
	}
	return d
}

// jsonEqual compares two JSON documents by value.
func jsonEqual(t testing.TB, got []byte, want string) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("got invalid JSON %q: %v", got, err)
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatalf("bad want %q: %v", want, err)
	}
	if !reflect.DeepEqual(g, w) {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

func TestSeedExampleInProcess(t *testing.T) {
	body, err := os.ReadFile("testdata/admission.json")
	if err != nil {
		t.Fatal(err)
	}
	rec := post(newTestHandler(t, Config{FQDN: "foo.bar."}), body)
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	d := decodeResponse(t, rec.Body.Bytes())
	if d.APIVersion != admissionV1 || d.Kind != "AdmissionReview" {
		t.Errorf("answered as %s %s", d.APIVersion, d.Kind)
	}
	if d.Response.UID != "705ab4f5-6393-11e8-b7cc-42010a800002" || !d.Response.Allowed || d.Response.PatchType != "JSONPatch" {
		t.Errorf("response %+v", d.Response)
	}
	jsonEqual(t, d.Response.Patch, seedPatch)
}

// podReview wraps a pod (JSON) into a review of the given version and operation.
func podReview(version, op, pod string) []byte {
	return []byte(`{"apiVersion":"admission.k8s.io/` + version + `","kind":"AdmissionReview","request":{"uid":"u-1",` +
		`"kind":{"group":"","version":"v1","kind":"Pod"},"resource":{"group":"","version":"v1","resource":"pods"},` +
		`"operation":"` + op + `","object":` + pod + `}}`)
}

func TestPatches(t *testing.T) {
	const hostVar = `{"name":"KUBERNETES_SERVICE_HOST","value":"api.example.com."}`
	family := []string{
		hostVar,
		`{"name":"KUBERNETES_SERVICE_PORT","value":"6443"}`,
		`{"name":"KUBERNETES_SERVICE_PORT_HTTPS","value":"6443"}`,
		`{"name":"KUBERNETES_PORT","value":"tcp://api.example.com.:6443"}`,
		`{"name":"KUBERNETES_PORT_6443_TCP","value":"tcp://api.example.com.:6443"}`,
		`{"name":"KUBERNETES_PORT_6443_TCP_PROTO","value":"tcp"}`,
		`{"name":"KUBERNETES_PORT_6443_TCP_ADDR","value":"api.example.com."}`,
		`{"name":"KUBERNETES_PORT_6443_TCP_PORT","value":"6443"}`,
	}
	appendOp := func(path, v string) string { return `{"op":"add","path":"` + path + `/env/-","value":` + v + `}` }
	var famAppends []string
	for _, v := range family[1:] {
		if !strings.Contains(v, `"KUBERNETES_SERVICE_PORT"`) {
			famAppends = append(famAppends, appendOp("/spec/containers/0", v))
		}
	}
	plain := Config{FQDN: "api.example.com."}
	withPort := Config{FQDN: "api.example.com.", Port: 6443}
	alias := Config{FQDN: "kubernetes.default.svc.", HostAliasIP: net.ParseIP("10.96.0.2")}
	cases := []struct {
		name string
		cfg  Config
		pod  string
		want string // "" = no patch
	}{
		{"env appended, others kept", plain,
			`{"spec":{"containers":[{"name":"a","env":[{"name":"FOO","value":"1"}]}]}}`,
			`[` + appendOp("/spec/containers/0", hostVar) + `]`},
		{"empty env array appended to", plain,
			`{"spec":{"containers":[{"name":"a","env":[]}]}}`,
			`[` + appendOp("/spec/containers/0", hostVar) + `]`},
		{"null env replaced", plain,
			`{"spec":{"containers":[{"name":"a","env":null}]}}`,
			`[{"op":"add","path":"/spec/containers/0/env","value":[` + hostVar + `]}]`},
		{"existing host never overridden", plain,
			`{"spec":{"containers":[{"name":"a","env":[{"name":"KUBERNETES_SERVICE_HOST","value":"mine"}]},{"name":"b"}]}}`,
			`[{"op":"add","path":"/spec/containers/1/env","value":[` + hostVar + `]}]`},
		{"init and regular containers indexed separately", plain,
			`{"spec":{"initContainers":[{"name":"i0","env":[{"name":"KUBERNETES_SERVICE_HOST","value":"x"}]},{"name":"i1"}],"containers":[{"name":"a"}]}}`,
			`[{"op":"add","path":"/spec/initContainers/1/env","value":[` + hostVar + `]},{"op":"add","path":"/spec/containers/0/env","value":[` + hostVar + `]}]`},
		{"port family on a container without env", withPort,
			`{"spec":{"containers":[{"name":"a"}]}}`,
			`[{"op":"add","path":"/spec/containers/0/env","value":[` + strings.Join(family, ",") + `]}]`},
		{"port family keeps the pod's own port", withPort,
			`{"spec":{"containers":[{"name":"a","env":[{"name":"KUBERNETES_SERVICE_PORT","value":"1"}]}]}}`,
			`[` + appendOp("/spec/containers/0", hostVar) + `,` + strings.Join(famAppends, ",") + `]`},
		{"own host: whole family left alone", withPort,
			`{"spec":{"containers":[{"name":"a","env":[{"name":"KUBERNETES_SERVICE_HOST","value":"mine"}]}]}}`, ""},
		{"opt-out annotation disabled", plain,
			`{"metadata":{"annotations":{"liqo.io/api-server-support":"disabled"}},"spec":{"containers":[{"name":"a"}]}}`, ""},
		{"opt-out annotation remote", plain,
			`{"metadata":{"annotations":{"liqo.io/api-server-support":"remote"}},"spec":{"containers":[{"name":"a"}]}}`, ""},
		{"opt-out label", plain,
			`{"metadata":{"labels":{"apiproxy.io/inject":"disabled"}},"spec":{"containers":[{"name":"a"}]}}`, ""},
		{"other annotation value injects", plain,
			`{"metadata":{"annotations":{"liqo.io/api-server-support":"home"}},"spec":{"containers":[{"name":"a"}]}}`,
			`[{"op":"add","path":"/spec/containers/0/env","value":[` + hostVar + `]}]`},
		{"host alias: new list with kubernetes.default names", alias,
			`{"spec":{"containers":[{"name":"a","env":[{"name":"KUBERNETES_SERVICE_HOST","value":"x"}]}]}}`,
			`[{"op":"add","path":"/spec/hostAliases","value":[{"ip":"10.96.0.2","hostnames":["kubernetes.default","kubernetes.default.svc"]}]}]`},
		{"host alias: names added to the entry of the same IP", alias,
			`{"spec":{"containers":[],"hostAliases":[{"ip":"1.2.3.4","hostnames":["a"]},{"ip":"10.96.0.2","hostnames":["kubernetes.default","b"]}]}}`,
			`[{"op":"add","path":"/spec/hostAliases/1/hostnames/-","value":"kubernetes.default.svc"}]`},
		{"host alias: appended entry, name mapped elsewhere kept", alias,
			`{"spec":{"containers":[],"hostAliases":[{"ip":"1.2.3.4","hostnames":["kubernetes.default"]}]}}`,
			`[{"op":"add","path":"/spec/hostAliases/-","value":{"ip":"10.96.0.2","hostnames":["kubernetes.default.svc"]}}]`},
		{"host alias: all present", alias,
			`{"spec":{"containers":[],"hostAliases":[{"ip":"10.96.0.2","hostnames":["kubernetes.default.svc","kubernetes.default"]}]}}`, ""},
		{"host alias: plain FQDN without trailing dot", Config{FQDN: "api.example.com.", HostAliasIP: net.ParseIP("fd00::2")},
			`{"spec":{"containers":[]}}`,
			`[{"op":"add","path":"/spec/hostAliases","value":[{"ip":"fd00::2","hostnames":["api.example.com"]}]}]`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, result, err := newTestHandler(t, tc.cfg).Review(podReview("v1", "CREATE", tc.pod))
			if err != nil {
				t.Fatal(err)
			}
			d := decodeResponse(t, out)
			if !d.Response.Allowed || d.Response.UID != "u-1" {
				t.Fatalf("response %+v", d.Response)
			}
			if tc.want == "" {
				if d.Response.Patch != nil || d.Response.PatchType != "" {
					t.Fatalf("want no patch, got %s (%s)", d.Response.Patch, result)
				}
				return
			}
			if result != "patched" || d.Response.PatchType != "JSONPatch" {
				t.Errorf("result %q patchType %q", result, d.Response.PatchType)
			}
			jsonEqual(t, d.Response.Patch, tc.want)
		})
	}
}

func TestV1beta1AnsweredInV1beta1(t *testing.T) {
	out, _, err := newTestHandler(t, Config{FQDN: "foo.bar."}).Review(podReview("v1beta1", "CREATE", `{"spec":{"containers":[{"name":"a"}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	d := decodeResponse(t, out)
	if d.APIVersion != admissionV1beta1 || d.Response.UID != "u-1" || d.Response.Patch == nil {
		t.Fatalf("got %s", out)
	}
}

func TestNotMutated(t *testing.T) {
	h := newTestHandler(t, Config{FQDN: "foo.bar."})
	cases := map[string][]byte{
		"update": podReview("v1", "UPDATE", `{"spec":{"containers":[{"name":"a"}]}}`),
		"not a pod": []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u-1",` +
			`"kind":{"group":"apps","version":"v1","kind":"Deployment"},"operation":"CREATE","object":{"spec":{"template":{}}}}}`),
		"not a pod, object not shaped like one": []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u-1",` +
			`"kind":{"group":"apps","version":"v1","kind":"Deployment"},"operation":"CREATE","object":{"spec":{"containers":"x","hostAliases":7}}}}`),
		"pod subresource": []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u-1",` +
			`"kind":{"group":"","version":"v1","kind":"Pod"},"subResource":"ephemeralcontainers","operation":"CREATE","object":{"spec":{"containers":[{}]}}}}`),
	}
	for name, body := range cases {
		t.Run(name, func(t *testing.T) {
			rec := post(h, body)
			d := decodeResponse(t, rec.Body.Bytes())
			if rec.Code != 200 || !d.Response.Allowed || d.Response.Patch != nil || d.Response.UID != "u-1" {
				t.Fatalf("status %d, %s", rec.Code, rec.Body)
			}
		})
	}
}

func TestBadRequests(t *testing.T) {
	reg := prometheus.NewRegistry()
	h, err := NewHandler(Config{FQDN: "foo.bar."}, reg)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, method, ctype string
		body                []byte
		code                int
		msg                 string
	}{
		{"not JSON", "POST", "application/json", []byte("hello"), 400, "not a JSON AdmissionReview"},
		{"JSON array", "POST", "application/json", []byte("[1]"), 400, "not a JSON AdmissionReview"},
		{"wrong apiVersion", "POST", "application/json", []byte(`{"apiVersion":"v1","kind":"AdmissionReview","request":{"uid":"x"}}`), 400, `apiVersion "v1" is not supported`},
		{"wrong kind", "POST", "application/json", []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"Pod","request":{"uid":"x"}}`), 400, `kind "Pod" is not AdmissionReview`},
		{"no request", "POST", "application/json", []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`), 400, "has no request"},
		{"no uid", "POST", "application/json", []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}`), 400, "has no uid"},
		{"wrong content type", "POST", "text/plain", podReview("v1", "CREATE", `{}`), 415, "send the AdmissionReview as application/json"},
		{"GET", "GET", "application/json", nil, 405, "POSTed"},
		{"oversized", "POST", "application/json", append(podReview("v1", "CREATE", `{"spec":{}}`), bytes.Repeat([]byte(" "), MaxBodyBytes)...), 413, "larger than 3145728 bytes (3 MiB)"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest(tc.method, Path, bytes.NewReader(tc.body))
			req.Header.Set("Content-Type", tc.ctype)
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != tc.code || !strings.Contains(rec.Body.String(), tc.msg) {
				t.Fatalf("got %d %q, want %d containing %q", rec.Code, rec.Body, tc.code, tc.msg)
			}
		})
	}
	if got := testutil.ToFloat64(h.reviews.WithLabelValues("bad_request")); got != float64(len(cases)) {
		t.Errorf("bad_request counter = %v, want %d", got, len(cases))
	}

	// A review whose object is not a pod is answered (the API server shows the message) but denied.
	rec := post(h, podReview("v1", "CREATE", `{"spec":{"containers":"nope"}}`))
	d := decodeResponse(t, rec.Body.Bytes())
	if rec.Code != 200 || d.Response.Allowed || d.Response.Status == nil || d.Response.Status.Code != 400 ||
		!strings.Contains(d.Response.Status.Message, "not a Pod") {
		t.Fatalf("got %d %s", rec.Code, rec.Body)
	}
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	h, err := NewHandler(Config{FQDN: "foo.bar."}, reg)
	if err != nil {
		t.Fatal(err)
	}
	post(h, podReview("v1", "CREATE", `{"spec":{"containers":[{"name":"a"}]}}`))
	post(h, podReview("v1", "CREATE", `{"metadata":{"labels":{"apiproxy.io/inject":"disabled"}},"spec":{"containers":[{"name":"a"}]}}`))
	if testutil.ToFloat64(h.reviews.WithLabelValues("patched")) != 1 || testutil.ToFloat64(h.reviews.WithLabelValues("opted_out")) != 1 {
		t.Error("reviews_total not counted by result")
	}
	if n, err := testutil.GatherAndCount(reg, "apiproxy_webhook_review_duration_seconds"); err != nil || n != 1 {
		t.Errorf("latency histogram: %d, %v", n, err)
	}
	if _, err := NewHandler(Config{FQDN: "foo.bar."}, reg); err == nil {
		t.Error("registering twice on one registry must fail loudly")
	}
}

func TestConfigErrors(t *testing.T) {
	if _, err := NewHandler(Config{}, nil); err == nil || !strings.Contains(err.Error(), "FQDN is empty") {
		t.Errorf("empty FQDN: %v", err)
	}
	if _, err := NewHandler(Config{FQDN: "a", Port: 70000}, nil); err == nil || !strings.Contains(err.Error(), "out of range") {
		t.Errorf("bad port: %v", err)
	}
}
