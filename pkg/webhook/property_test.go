package webhook

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
)

// randomPod builds a pod that exercises every branch: env absent, null, empty or filled, with and
// without the injected names, and hostAliases for the configured IP or others.
func randomPod(r *rand.Rand, c Config) map[string]any {
	names := []string{"FOO", "BAR", EnvHost, "KUBERNETES_SERVICE_PORT", "KUBERNETES_PORT", fmt.Sprintf("KUBERNETES_PORT_%d_TCP_ADDR", c.Port)}
	container := func(i int) map[string]any {
		ct := map[string]any{"name": fmt.Sprintf("c%d", i), "image": "busybox"}
		switch r.IntN(4) {
		case 0: // no env
		case 1:
			ct["env"] = nil
		case 2:
			ct["env"] = []any{}
		default:
			var env []any
			for k, n := 0, r.IntN(4)+1; k < n; k++ {
				env = append(env, map[string]any{"name": names[r.IntN(len(names))], "value": fmt.Sprint(r.Int())})
			}
			ct["env"] = env
		}
		return ct
	}
	spec := map[string]any{}
	var cs, ics []any
	for i, n := 0, r.IntN(4)+1; i < n; i++ {
		cs = append(cs, container(i))
	}
	for i, n := 0, r.IntN(3); i < n; i++ {
		ics = append(ics, container(i))
	}
	spec["containers"] = cs
	if ics != nil {
		spec["initContainers"] = ics
	}
	if r.IntN(2) == 0 {
		ips := []string{"1.2.3.4", "10.96.0.2", "10.096.0.2"}
		hosts := []string{"a", "kubernetes.default", "kubernetes.default.svc", "api.example.com"}
		var has []any
		for i, n := 0, r.IntN(3); i < n; i++ {
			var hn []any
			for k, m := 0, r.IntN(3); k < m; k++ {
				hn = append(hn, hosts[r.IntN(len(hosts))])
			}
			e := map[string]any{"ip": ips[r.IntN(len(ips))]}
			if hn != nil {
				e["hostnames"] = hn
			}
			has = append(has, e)
		}
		spec["hostAliases"] = has
	}
	return map[string]any{"apiVersion": "v1", "kind": "Pod", "metadata": map[string]any{"name": "p"}, "spec": spec}
}

// reviewPatch returns the patch answered for pod ("" when none).
func reviewPatch(t *testing.T, h *Handler, pod []byte) []byte {
	t.Helper()
	out, _, err := h.Review(podReview("v1", "CREATE", string(pod)))
	if err != nil {
		t.Fatal(err)
	}
	d := decodeResponse(t, out)
	if !d.Response.Allowed {
		t.Fatalf("denied: %s", out)
	}
	return d.Response.Patch
}

// TestPatchIsIdempotent: the patched pod applies cleanly, gets every variable exactly once, keeps
// what it had, and a second review of it changes nothing.
func TestPatchIsIdempotent(t *testing.T) {
	configs := []Config{
		{FQDN: "api.example.com."},
		{FQDN: "api.example.com", Port: 443, HostAliasIP: net.ParseIP("10.96.0.2")},
		{FQDN: "kubernetes.default.svc", Port: 6443, HostAliasIP: net.ParseIP("10.96.0.2")},
	}
	r := rand.New(rand.NewPCG(5, 5))
	for ci, c := range configs {
		h := newTestHandler(t, c)
		m := h.m
		for i := 0; i < 300; i++ {
			before, _ := json.Marshal(randomPod(r, c))
			p := reviewPatch(t, h, before)
			after := before
			if p != nil {
				decodedPatch, err := jsonpatch.DecodePatch(p)
				if err != nil {
					t.Fatalf("config %d: invalid patch %s: %v", ci, p, err)
				}
				if after, err = decodedPatch.Apply(before); err != nil {
					t.Fatalf("config %d: patch %s does not apply to %s: %v", ci, p, before, err)
				}
			}
			if again := reviewPatch(t, h, after); again != nil {
				t.Fatalf("config %d: second review of\n%s\nstill patches: %s", ci, after, again)
			}
			checkInjected(t, m, before, after)
		}
	}
}

func checkInjected(t *testing.T, m *mutator, before, after []byte) {
	t.Helper()
	var b, a slimPod
	var bFull, aFull struct {
		Spec struct {
			Containers     []struct{ Env []envVar } `json:"containers"`
			InitContainers []struct{ Env []envVar } `json:"initContainers"`
		} `json:"spec"`
	}
	for _, x := range []struct {
		data []byte
		into any
	}{{before, &b}, {after, &a}, {before, &bFull}, {after, &aFull}} {
		if err := json.Unmarshal(x.data, x.into); err != nil {
			t.Fatal(err)
		}
	}
	check := func(bc, ac []struct{ Env []envVar }) {
		for i := range bc {
			// Everything the container had stays, in place.
			for k, v := range bc[i].Env {
				if ac[i].Env[k] != v {
					t.Fatalf("env %d of container %d changed from %v to %v", k, i, v, ac[i].Env[k])
				}
			}
			countsBefore, countsAfter := map[string]int{}, map[string]int{}
			for _, v := range bc[i].Env {
				countsBefore[v.Name]++
			}
			for _, v := range ac[i].Env {
				countsAfter[v.Name]++
			}
			if countsAfter[EnvHost] == 0 {
				t.Fatalf("container %d has no %s after the patch", i, EnvHost)
			}
			for _, v := range m.vars {
				added := countsAfter[v.Name] - countsBefore[v.Name]
				if added < 0 || added > 1 || (added == 1 && countsBefore[v.Name] > 0) {
					t.Fatalf("container %d: %s went from %d to %d", i, v.Name, countsBefore[v.Name], countsAfter[v.Name])
				}
			}
		}
	}
	check(bFull.Spec.Containers, aFull.Spec.Containers)
	check(bFull.Spec.InitContainers, aFull.Spec.InitContainers)
	for _, n := range m.aliasNames {
		if !aliased(a.Spec.HostAliases, n) {
			t.Fatalf("%s not in hostAliases %v", n, a.Spec.HostAliases)
		}
	}
}

// FuzzHandleReview: whatever the body, the handler never panics and answers either a 4xx or a
// JSON review for the request's uid whose patch applies to the request's object.
func FuzzHandleReview(f *testing.F) {
	seed, err := os.ReadFile("testdata/admission.json")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seed)
	f.Add(podReview("v1beta1", "CREATE", `{"spec":{"containers":[{"env":[{"name":"A"}]}],"hostAliases":[{"ip":"10.96.0.2"}]}}`))
	f.Add(podReview("v1", "CREATE", `{"spec":{"initContainers":[{"env":null}],"containers":[{}]}}`))
	f.Add(podReview("v1", "UPDATE", `{}`))
	f.Add(podReview("v1", "CREATE", `{"spec":{"containers":[{"env":[{"name":"KUBERNETES_SERVICE_HOST","value":"x"}]}]}}`))
	f.Add([]byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"\u2028"}}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`null`))
	f.Add([]byte(``))
	f.Fuzz(func(t *testing.T, body []byte) {
		h := newTestHandler(t, Config{FQDN: "kubernetes.default.svc.", Port: 443, HostAliasIP: net.ParseIP("10.96.0.2")})
		rec := post(h, body)
		if rec.Code >= 400 && rec.Code < 500 {
			return
		}
		if rec.Code != 200 {
			t.Fatalf("status %d: %s", rec.Code, rec.Body)
		}
		d := decodeResponse(t, rec.Body.Bytes())
		var in review[json.RawMessage]
		if err := json.Unmarshal(body, &in); err != nil || in.Request == nil {
			t.Fatalf("answered 200 to a body that is not a review: %s", body)
		}
		if d.Response.UID != in.Request.UID || d.APIVersion != in.APIVersion {
			t.Fatalf("answer %s/%s for request %s/%s", d.APIVersion, d.Response.UID, in.APIVersion, in.Request.UID)
		}
		if d.Response.Patch != nil {
			p, err := jsonpatch.DecodePatch(d.Response.Patch)
			if err != nil {
				t.Fatalf("invalid patch %s: %v", d.Response.Patch, err)
			}
			if _, err := p.Apply(in.Request.Object); err != nil {
				t.Fatalf("patch %s does not apply to %s: %v", d.Response.Patch, in.Request.Object, err)
			}
		}
	})
}
