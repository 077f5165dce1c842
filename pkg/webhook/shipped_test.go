package webhook

import (
	"context"
	"encoding/json"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"github.com/apiproxy/apiproxy/pkg/install"
	"github.com/apiproxy/apiproxy/test/harness"
)

// warnings collects the warnings the API server returns to a client.
type warnings struct {
	mu   sync.Mutex
	msgs []string
}

func (w *warnings) HandleWarningHeader(_ int, _ string, text string) {
	w.mu.Lock()
	w.msgs = append(w.msgs, text)
	w.mu.Unlock()
}

func (w *warnings) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := w.msgs
	w.msgs = nil
	return out
}

// sidecarInjector is a second mutating webhook, like Istio's or Linkerd's: it appends a container.
func sidecarInjector(w http.ResponseWriter, r *http.Request) {
	var rv review[json.RawMessage]
	if err := json.NewDecoder(r.Body).Decode(&rv); err != nil || rv.Request == nil {
		http.Error(w, "bad review", http.StatusBadRequest)
		return
	}
	var pod corev1.Pod
	_ = json.Unmarshal(rv.Request.Object, &pod)
	resp := response{UID: rv.Request.UID, Allowed: true}
	if !slices.ContainsFunc(pod.Spec.Containers, func(c corev1.Container) bool { return c.Name == "sidecar" }) {
		resp.PatchType = "JSONPatch"
		resp.Patch = []byte(`[{"op":"add","path":"/spec/containers/-","value":{"name":"sidecar","image":"registry.invalid/sidecar:1"}}]`)
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(reviewResponse{APIVersion: rv.APIVersion, Kind: "AdmissionReview", Response: resp})
}

func envValue(c corev1.Container, name string) (string, bool) {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value, true
		}
	}
	return "", false
}

// The webhook configuration install renders (deploy/webhook.yaml: rules, reinvocation), registered
// with a real kube-apiserver next to a sidecar injector that runs after it: the sidecar gets the
// variables (reinvocation), kubectl debug's ephemeral containers get them, and envFrom is honoured
// with a real ConfigMap read and the warning reaching the client.
func TestShippedConfigurationAgainstAPIServer(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a kube-apiserver")
	}
	cl := harness.Start(t, harness.Options{Name: "webhook-shipped"})
	var warned warnings
	cfg := rest.CopyConfig(cl.Config)
	cfg.WarningHandler = &warned
	cs := kubernetes.NewForConfigOrDie(cfg)

	p := newPKI(t, "webhook-ca")
	kp := p.serving(t)
	writeFile(t, filepath.Join(p.dir, "tls.crt"), kp.CertPEM)
	writeFile(t, filepath.Join(p.dir, "tls.key"), kp.KeyPEM)
	const fqdn = "api.example.com."
	h := newTestHandler(t, Config{FQDN: fqdn, Port: 6443, ConfigMaps: NewConfigMapReader(cl.Clientset(t), time.Second)})
	ours := startServer(t, p.dir, "", h)
	sidecar := startServer(t, p.dir, "", http.HandlerFunc(sidecarInjector))

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// The shipped configuration, pointed at the test server.
	o := install.DefaultOptions()
	o.Roles = []install.Role{install.RoleWebhook}
	o.APIServerFQDN, o.APIServerPort = fqdn, 6443
	objs, err := install.Render(o, install.RenderInput{Certs: &install.WebhookCerts{CACert: p.ca.CertPEM, CAKey: []byte("-"), ServingCert: kp.CertPEM, ServingKey: []byte("-")}})
	if err != nil {
		t.Fatal(err)
	}
	var mwc admissionregistrationv1.MutatingWebhookConfiguration
	for _, obj := range objs {
		if obj.GetKind() == "MutatingWebhookConfiguration" {
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(obj.Object, &mwc); err != nil {
				t.Fatal(err)
			}
		}
	}
	if len(mwc.Webhooks) != 1 {
		t.Fatalf("rendered webhook configuration: %+v", mwc)
	}
	mwc.ResourceVersion = ""
	mwc.Webhooks[0].ClientConfig = admissionregistrationv1.WebhookClientConfig{URL: ptr.To(ours + Path), CABundle: p.ca.CertPEM}
	mwc.Webhooks[0].TimeoutSeconds = ptr.To[int32](10) // a shared test machine; the shipped 2 s is checked by the render test
	if _, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, &mwc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Webhooks run in the order of their configurations' names: the injector's sorts after ours.
	if strings.Compare(mwc.Name, "zz-sidecar-injector") >= 0 {
		t.Fatalf("configuration %q does not sort before the injector's", mwc.Name)
	}
	_, err = cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "zz-sidecar-injector"},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{
			Name:         "sidecar.example.com",
			ClientConfig: admissionregistrationv1.WebhookClientConfig{URL: ptr.To(sidecar + Path), CABundle: p.ca.CertPEM},
			Rules: []admissionregistrationv1.RuleWithOperations{{
				Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
				Rule:       admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}},
			}},
			FailurePolicy:           ptr.To(admissionregistrationv1.Fail),
			SideEffects:             ptr.To(admissionregistrationv1.SideEffectClassNone),
			AdmissionReviewVersions: []string{"v1"},
			TimeoutSeconds:          ptr.To[int32](10),
		}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	const ns = "app"
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "api-override"}, Data: map[string]string{EnvHost: "my.api"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	newPod := func(name string, envFrom ...corev1.EnvFromSource) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.PodSpec{
				Containers:                   []corev1.Container{{Name: "app", Image: "registry.invalid/app:1", EnvFrom: envFrom}},
				AutomountServiceAccountToken: ptr.To(false),
			},
		}
	}
	create := func(pod *corev1.Pod) *corev1.Pod {
		t.Helper()
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		got, err := cs.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	container := func(pod *corev1.Pod, name string) corev1.Container {
		t.Helper()
		for _, c := range pod.Spec.Containers {
			if c.Name == name {
				return c
			}
		}
		t.Fatalf("pod %s has no container %q: %+v", pod.Name, name, pod.Spec.Containers)
		return corev1.Container{}
	}

	// Registration reaches the admission chain asynchronously.
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		pod := create(newPod("probe-" + time.Now().Format("150405.000000000")))
		_, ours := envValue(pod.Spec.Containers[0], EnvHost)
		return ours && len(pod.Spec.Containers) == 2, nil
	})
	if err != nil {
		t.Fatalf("the webhooks never both mutated a pod: %v", err)
	}
	warned.take()

	t.Run("a container added by a later webhook gets the variables", func(t *testing.T) {
		pod := create(newPod("with-sidecar"))
		for _, name := range []string{"app", "sidecar"} {
			if v, ok := envValue(container(pod, name), EnvHost); !ok || v != fqdn {
				t.Errorf("container %s: %s = %q, %v (reinvocation did not reach it)", name, EnvHost, v, ok)
			}
		}
	})

	t.Run("a ConfigMap in envFrom that sets the host keeps it", func(t *testing.T) {
		pod := create(newPod("cm-host", corev1.EnvFromSource{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "api-override"}}}))
		if v, ok := envValue(container(pod, "app"), EnvHost); ok {
			t.Errorf("app got %s=%q over its ConfigMap", EnvHost, v)
		}
		if _, ok := envValue(container(pod, "sidecar"), EnvHost); !ok {
			t.Error("the sidecar (no envFrom) lacks the host")
		}
		if w := warned.take(); len(w) != 0 {
			t.Errorf("unexpected warnings %q", w)
		}
	})

	t.Run("a Secret in envFrom leaves the container alone, with a warning", func(t *testing.T) {
		pod := create(newPod("secret-ref", corev1.EnvFromSource{SecretRef: &corev1.SecretEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "creds"}}}))
		if _, ok := envValue(container(pod, "app"), EnvHost); ok {
			t.Error("app with a secretRef was injected")
		}
		if w := strings.Join(warned.take(), "\n"); !strings.Contains(w, `container "app" left unchanged`) || !strings.Contains(w, `Secret "creds"`) {
			t.Errorf("warnings %q do not explain it", w)
		}
	})

	t.Run("kubectl debug's ephemeral container gets the variables", func(t *testing.T) {
		pod := create(newPod("debugged"))
		pod.Spec.EphemeralContainers = append(pod.Spec.EphemeralContainers, corev1.EphemeralContainer{
			EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "debugger", Image: "registry.invalid/debug:1"},
		})
		if _, err := cs.CoreV1().Pods(ns).UpdateEphemeralContainers(ctx, pod.Name, pod, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		got, err := cs.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(got.Spec.EphemeralContainers) != 1 {
			t.Fatalf("ephemeral containers: %+v", got.Spec.EphemeralContainers)
		}
		ec := corev1.Container{Env: got.Spec.EphemeralContainers[0].Env}
		if v, _ := envValue(ec, EnvHost); v != fqdn {
			t.Errorf("ephemeral container: %s = %q", EnvHost, v)
		}
		if v, _ := envValue(ec, "KUBERNETES_SERVICE_PORT_HTTPS"); v != "6443" {
			t.Errorf("ephemeral container: KUBERNETES_SERVICE_PORT_HTTPS = %q", v)
		}
		// A second debugger: the first one (immutable) is not patched again, or the update fails.
		got.Spec.EphemeralContainers = append(got.Spec.EphemeralContainers, corev1.EphemeralContainer{
			EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "debugger-2", Image: "registry.invalid/debug:1"},
		})
		got2, err := cs.CoreV1().Pods(ns).UpdateEphemeralContainers(ctx, got.Name, got, metav1.UpdateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if v, _ := envValue(corev1.Container{Env: got2.Spec.EphemeralContainers[1].Env}, EnvHost); v != fqdn {
			t.Errorf("second ephemeral container: %s = %q", EnvHost, v)
		}
	})
}
