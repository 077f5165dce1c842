package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/apiproxy/apiproxy/test/harness"
)

// TestAgainstAPIServer registers the running webhook with a real kube-apiserver and checks what the
// API server stores for pods of every shape. Namespace "beta" is served through a second webhook
// entry that only speaks admission.k8s.io/v1beta1.
func TestAgainstAPIServer(t *testing.T) {
	cl := harness.Start(t, harness.Options{Name: "webhook"})
	cs := cl.Clientset(t)

	p := newPKI(t, "webhook-ca")
	kp := p.serving(t)
	writeFile(t, filepath.Join(p.dir, "tls.crt"), kp.CertPEM)
	writeFile(t, filepath.Join(p.dir, "tls.key"), kp.KeyPEM)
	const fqdn = "kubernetes.default.svc.cluster.local."
	h := newTestHandler(t, Config{FQDN: fqdn, Port: 443, HostAliasIP: net.ParseIP("10.96.0.2")})
	seen := &versionRecorder{next: h, versions: map[string]int{}}
	url := startServer(t, p.dir, "", seen)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, ns := range []string{"alpha", "beta"} {
		if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		// No controller-manager here: create the service account the ServiceAccount plugin wants.
		_, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	entry := func(name string, versions []string, op metav1.LabelSelectorOperator) admissionregistrationv1.MutatingWebhook {
		return admissionregistrationv1.MutatingWebhook{
			Name: name,
			ClientConfig: admissionregistrationv1.WebhookClientConfig{
				URL: ptr.To(url + Path), CABundle: p.ca.CertPEM,
			},
			Rules: []admissionregistrationv1.RuleWithOperations{{
				Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
				Rule:       admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}},
			}},
			NamespaceSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{
				Key: "kubernetes.io/metadata.name", Operator: op, Values: []string{"beta"},
			}}},
			FailurePolicy:           ptr.To(admissionregistrationv1.Fail),
			SideEffects:             ptr.To(admissionregistrationv1.SideEffectClassNone),
			AdmissionReviewVersions: versions,
			TimeoutSeconds:          ptr.To[int32](5),
		}
	}
	_, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "apiproxy-test"},
		Webhooks: []admissionregistrationv1.MutatingWebhook{
			entry("v1.pod-apiserver-env.apiproxy.io", []string{"v1"}, metav1.LabelSelectorOpNotIn),
			entry("v1beta1.pod-apiserver-env.apiproxy.io", []string{"v1beta1"}, metav1.LabelSelectorOpIn),
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	host := corev1.EnvVar{Name: EnvHost, Value: fqdn}
	family := []corev1.EnvVar{host,
		{Name: "KUBERNETES_SERVICE_PORT", Value: "443"},
		{Name: "KUBERNETES_SERVICE_PORT_HTTPS", Value: "443"},
		{Name: "KUBERNETES_PORT", Value: "tcp://" + fqdn + ":443"},
		{Name: "KUBERNETES_PORT_443_TCP", Value: "tcp://" + fqdn + ":443"},
		{Name: "KUBERNETES_PORT_443_TCP_PROTO", Value: "tcp"},
		{Name: "KUBERNETES_PORT_443_TCP_ADDR", Value: fqdn},
		{Name: "KUBERNETES_PORT_443_TCP_PORT", Value: "443"},
	}
	wantAliases := []corev1.HostAlias{{IP: "10.96.0.2", Hostnames: []string{"kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}}}
	foo := corev1.EnvVar{Name: "FOO", Value: "bar"}
	mine := corev1.EnvVar{Name: EnvHost, Value: "my.apiserver"}

	// Webhook registration propagates to the API server's admission chain asynchronously: wait
	// until a probe pod comes back mutated.
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		pod := createPod(ctx, t, cs, "alpha", "probe-"+time.Now().Format("150405.000000000"), podOpts{})
		return len(pod.Spec.Containers[0].Env) > 0, nil
	})
	if err != nil {
		t.Fatalf("the webhook never mutated a pod: %v", err)
	}

	cases := []struct {
		name, ns      string
		o             podOpts
		wantInit      [][]corev1.EnvVar
		wantContainer [][]corev1.EnvVar
		wantAliases   []corev1.HostAlias
	}{
		{name: "no-env", ns: "alpha", wantContainer: [][]corev1.EnvVar{family}, wantAliases: wantAliases},
		{name: "some-env", ns: "alpha", o: podOpts{env: []corev1.EnvVar{foo}},
			wantContainer: [][]corev1.EnvVar{append([]corev1.EnvVar{foo}, family...)}, wantAliases: wantAliases},
		{name: "own-host", ns: "alpha", o: podOpts{env: []corev1.EnvVar{mine}},
			wantContainer: [][]corev1.EnvVar{{mine}}, wantAliases: wantAliases},
		{name: "init", ns: "alpha", o: podOpts{init: true, env: []corev1.EnvVar{foo}},
			wantInit:      [][]corev1.EnvVar{append([]corev1.EnvVar{foo}, family...)},
			wantContainer: [][]corev1.EnvVar{append([]corev1.EnvVar{foo}, family...)}, wantAliases: wantAliases},
		{name: "annotation-opt-out", ns: "alpha", o: podOpts{annotations: map[string]string{OptOutAnnotation: "remote"}},
			wantContainer: [][]corev1.EnvVar{nil}},
		{name: "label-opt-out", ns: "alpha", o: podOpts{labels: map[string]string{OptOutLabel: "disabled"}},
			wantContainer: [][]corev1.EnvVar{nil}},
		{name: "aliases-present", ns: "alpha", o: podOpts{aliases: []corev1.HostAlias{
			{IP: "192.0.2.1", Hostnames: []string{"kubernetes.default"}},
			{IP: "10.96.0.2", Hostnames: []string{"other"}},
		}}, wantContainer: [][]corev1.EnvVar{family}, wantAliases: []corev1.HostAlias{
			{IP: "192.0.2.1", Hostnames: []string{"kubernetes.default"}},
			{IP: "10.96.0.2", Hostnames: []string{"other", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}},
		}},
		{name: "v1beta1", ns: "beta", o: podOpts{init: true},
			wantInit: [][]corev1.EnvVar{family}, wantContainer: [][]corev1.EnvVar{family}, wantAliases: wantAliases},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			created := createPod(ctx, t, cs, tc.ns, tc.name, tc.o)
			// Assert on what is stored, not on the create response.
			pod, err := cs.CoreV1().Pods(tc.ns).Get(ctx, created.Name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			check := func(kind string, cs []corev1.Container, want [][]corev1.EnvVar) {
				if len(cs) != len(want) {
					t.Fatalf("%d %s, want %d", len(cs), kind, len(want))
				}
				for i := range cs {
					if !reflect.DeepEqual(cs[i].Env, want[i]) {
						t.Errorf("%s[%d].env = %v\nwant %v", kind, i, cs[i].Env, want[i])
					}
				}
			}
			check("initContainers", pod.Spec.InitContainers, tc.wantInit)
			check("containers", pod.Spec.Containers, tc.wantContainer)
			if !reflect.DeepEqual(pod.Spec.HostAliases, tc.wantAliases) {
				t.Errorf("hostAliases = %v\nwant %v", pod.Spec.HostAliases, tc.wantAliases)
			}
		})
	}
	if seen.count(admissionV1beta1) == 0 || seen.count(admissionV1) == 0 {
		t.Errorf("review versions received: %v, want both v1 and v1beta1", seen.versions)
	}
}

// versionRecorder notes which AdmissionReview versions the API server really sent.
type versionRecorder struct {
	next     http.Handler
	mu       sync.Mutex
	versions map[string]int
}

func (v *versionRecorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	var rv review[json.RawMessage]
	_ = json.Unmarshal(body, &rv)
	v.mu.Lock()
	v.versions[rv.APIVersion]++
	v.mu.Unlock()
	r.Body = io.NopCloser(bytes.NewReader(body))
	v.next.ServeHTTP(w, r)
}

func (v *versionRecorder) count(version string) int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.versions[version]
}

type podOpts struct {
	init        bool
	env         []corev1.EnvVar
	labels      map[string]string
	annotations map[string]string
	aliases     []corev1.HostAlias
}

func createPod(ctx context.Context, t *testing.T, cs kubernetes.Interface, ns, name string, o podOpts) *corev1.Pod {
	t.Helper()
	c := corev1.Container{Name: "app", Image: "registry.invalid/app:1", Env: o.env}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: o.labels, Annotations: o.annotations},
		Spec: corev1.PodSpec{
			Containers:                   []corev1.Container{c},
			HostAliases:                  o.aliases,
			AutomountServiceAccountToken: ptr.To(false),
		},
	}
	if o.init {
		ic := c
		ic.Name = "init"
		pod.Spec.InitContainers = []corev1.Container{ic}
	}
	created, err := cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating pod %s/%s: %v", ns, name, err)
	}
	return created
}
