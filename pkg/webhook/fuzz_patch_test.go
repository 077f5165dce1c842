package webhook

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
)

// FuzzWebhookPatch: for any pod (envFrom, ephemeral containers, hostAliases included), the patch
// applies to it, changes only env and hostAliases, and is idempotent: reviewing the patched pod
// again patches nothing. For a pods/ephemeralcontainers update (the same object with its first
// ephemeral container as the existing one), only the other ephemeral containers are patched.
// Corpus: testdata/fuzz/FuzzWebhookPatch.
func FuzzWebhookPatch(f *testing.F) {
	for _, seed := range []string{
		`{"spec":{"containers":[{"name":"a"}]}}`,
		`{"spec":{"containers":[{"name":"a","envFrom":[{"configMapRef":{"name":"sets-host"}}]},{"name":"b","env":null}]}}`,
		`{"spec":{"initContainers":[{"name":"i","envFrom":[{"prefix":"KUBERNETES_","configMapRef":{"name":"prefixed","optional":true}}]}],"containers":[{"name":"a","envFrom":[{"secretRef":{"name":"s"}}]}]}}`,
		`{"spec":{"containers":[{"name":"a","env":[{"name":"KUBERNETES_SERVICE_PORT","value":"1"}],"envFrom":[{"configMapRef":{"name":"sets-port"}}]}],"hostAliases":[{"ip":"10.96.0.2"}]}}`,
		`{"spec":{"containers":[{"name":"a"}],"ephemeralContainers":[{"name":"d1"},{"name":"d2","envFrom":[{"configMapRef":{"name":"missing"}}]},{"name":"d3","env":[]}]}}`,
		`{"spec":{"containers":[{"name":"a","envFrom":[{"prefix":"A","secretRef":{"name":"s"}},{}]}]}}`,
	} {
		f.Add([]byte(seed))
	}
	reader := &mapReader{
		maps: map[string]map[string]string{
			"app/sets-host": {EnvHost: "mine"},
			"app/prefixed":  {"SERVICE_HOST": "mine", "PORT": "x"},
			"app/sets-port": {"KUBERNETES_SERVICE_PORT": "1"},
		},
		broken: map[string]bool{"slow": true},
	}
	h := newTestHandler(f, Config{FQDN: "kubernetes.default.svc.", Port: 443, HostAliasIP: []byte{10, 96, 0, 2}, ConfigMaps: reader})
	review := func(t *testing.T, op, sub string, pod, old []byte) []byte {
		out, _, err := h.Review(nsPodReview("app", op, sub, string(pod), string(old)))
		if err != nil {
			t.Fatalf("review of a valid pod failed: %v", err)
		}
		d := decodeResponse(t, out)
		if !d.Response.Allowed {
			return nil // not shaped like a pod: denied, nothing to check
		}
		return d.Response.Patch
	}
	f.Fuzz(func(t *testing.T, pod []byte) {
		var obj map[string]any
		if json.Unmarshal(pod, &obj) != nil || obj == nil {
			return
		}
		pod, _ = json.Marshal(obj) // canonical, so the review body stays valid JSON
		apply := func(p, doc []byte) []byte {
			t.Helper()
			decoded, err := jsonpatch.DecodePatch(p)
			if err != nil {
				t.Fatalf("invalid patch %s: %v", p, err)
			}
			for _, o := range decoded {
				path, _ := o.Path()
				if !strings.HasPrefix(path, "/spec/hostAliases") && !strings.Contains(path, "/env") {
					t.Fatalf("patch touches %s: %s", path, p)
				}
			}
			out, err := decoded.Apply(doc)
			if err != nil {
				t.Fatalf("patch %s does not apply to %s: %v", p, doc, err)
			}
			return out
		}

		if p := review(t, "CREATE", "", pod, []byte("null")); p != nil {
			after := apply(p, pod)
			if again := review(t, "CREATE", "", after, []byte("null")); again != nil {
				t.Fatalf("second review of\n%s\nstill patches: %s", after, again)
			}
		}

		// As an ephemeral-containers update whose first ephemeral container already existed.
		var shaped struct {
			Spec struct {
				Ephemeral []json.RawMessage `json:"ephemeralContainers"`
			} `json:"spec"`
		}
		if json.Unmarshal(pod, &shaped) != nil || len(shaped.Spec.Ephemeral) == 0 {
			return
		}
		old, _ := json.Marshal(map[string]any{"spec": map[string]any{"ephemeralContainers": []json.RawMessage{shaped.Spec.Ephemeral[0]}}})
		p := review(t, "UPDATE", "ephemeralcontainers", pod, old)
		if p == nil {
			return
		}
		decoded, _ := jsonpatch.DecodePatch(p)
		for _, o := range decoded {
			path, _ := o.Path()
			if !strings.HasPrefix(path, "/spec/ephemeralContainers/") || strings.HasPrefix(path, "/spec/ephemeralContainers/0/") {
				t.Fatalf("ephemeral update patches %s: %s", path, p)
			}
		}
		after := apply(p, pod)
		if !bytes.Equal(after, pod) {
			if again := review(t, "UPDATE", "ephemeralcontainers", after, old); again != nil {
				t.Fatalf("second ephemeral review still patches: %s", again)
			}
		}
	})
}
