package main

// Suite "webhook": our admission handler (slim decode, patch built directly) against a
// controller-runtime CustomDefaulter doing the same mutation (full Pod decode, mutate, whole-object
// JSON diff), both called in-process through their ServeHTTP with the same review bodies.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"reflect"
	"sort"
	"time"

	jsonpatch "github.com/evanphx/json-patch/v5"
	"github.com/go-logr/logr"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/apiproxy/apiproxy/pkg/webhook"
)

func init() { register(Suite{Name: "webhook", Run: runWebhookBench}) }

const webhookBenchFQDN = "api.example.com."

// envDefaulter is the baseline: what the mutation looks like written the usual controller-runtime way.
type envDefaulter struct{}

func (envDefaulter) Default(_ context.Context, obj runtime.Object) error {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return fmt.Errorf("expected a Pod, got %T", obj)
	}
	if pod.Annotations["liqo.io/api-server-support"] == "disabled" || pod.Annotations["liqo.io/api-server-support"] == "remote" ||
		pod.Labels["apiproxy.io/inject"] == "disabled" {
		return nil
	}
	add := func(cs []corev1.Container) {
		for i := range cs {
			found := false
			for _, e := range cs[i].Env {
				if e.Name == webhook.EnvHost {
					found = true
					break
				}
			}
			if !found {
				cs[i].Env = append(cs[i].Env, corev1.EnvVar{Name: webhook.EnvHost, Value: webhookBenchFQDN})
			}
		}
	}
	add(pod.Spec.InitContainers)
	add(pod.Spec.Containers)
	return nil
}

// webhookBenchPod is a realistic pod: containers with images, ports, resources, mounts, and envVars
// variables each.
func webhookBenchPod(containers, envVars int) *corev1.Pod {
	pod := &corev1.Pod{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{
			Name: "app-7d9f8c6b5-x2x9z", Namespace: "default", GenerateName: "app-7d9f8c6b5-",
			Labels:      map[string]string{"app": "app", "pod-template-hash": "7d9f8c6b5", "tier": "backend"},
			Annotations: map[string]string{"prometheus.io/scrape": "true", "kubectl.kubernetes.io/restartedAt": "2026-01-01T00:00:00Z"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "app-7d9f8c6b5",
				UID: "d9607e19-f88f-11e6-a518-42010a800195"}},
		},
		Spec: corev1.PodSpec{
			ServiceAccountName: "app",
			Volumes: []corev1.Volume{{Name: "config", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
				LocalObjectReference: corev1.LocalObjectReference{Name: "app-config"}}}}},
		},
	}
	for i := 0; i < containers; i++ {
		c := corev1.Container{
			Name: fmt.Sprintf("c%d", i), Image: "registry.example.com/team/app:v1.2.3",
			Args:  []string{"--listen=:8080", "--log-level=info"},
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}},
			Resources: corev1.ResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("128Mi")},
				Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")},
			},
			VolumeMounts: []corev1.VolumeMount{{Name: "config", MountPath: "/etc/app"}},
			ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/readyz",
				Port: intstrFromInt(8080)}}},
		}
		for j := 0; j < envVars; j++ {
			c.Env = append(c.Env, corev1.EnvVar{Name: fmt.Sprintf("SETTING_%02d", j), Value: fmt.Sprintf("value-of-setting-%d", j)})
		}
		pod.Spec.Containers = append(pod.Spec.Containers, c)
	}
	return pod
}

func webhookBenchReview(pod *corev1.Pod) []byte {
	raw, err := json.Marshal(pod)
	if err != nil {
		panic(err)
	}
	b, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID:       types.UID("705ab4f5-6393-11e8-b7cc-42010a800002"),
			Kind:      metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
			Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
			Namespace: "default", Operation: admissionv1.Create,
			Object: runtime.RawExtension{Raw: raw},
		},
	})
	if err != nil {
		panic(err)
	}
	return b
}

// webhookBenchServe posts body to h in-process and returns the answered patch.
func webhookBenchServe(h http.Handler, body []byte) ([]byte, error) {
	req := httptest.NewRequest(http.MethodPost, webhook.Path, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		return nil, fmt.Errorf("status %d: %s", rec.Code, rec.Body)
	}
	var rv admissionv1.AdmissionReview
	if err := json.Unmarshal(rec.Body.Bytes(), &rv); err != nil || rv.Response == nil || !rv.Response.Allowed {
		return nil, fmt.Errorf("bad answer %s: %v", rec.Body, err)
	}
	return rv.Response.Patch, nil
}

type webhookBenchResult struct {
	perSec, p50, p99 float64 // reviews/s, µs, µs
}

// webhookBenchMeasure runs n reviews (after n/10 warm-up ones), one at a time.
func webhookBenchMeasure(h http.Handler, body []byte, n int) (webhookBenchResult, error) {
	for i := 0; i < n/10; i++ {
		if _, err := webhookBenchServe(h, body); err != nil {
			return webhookBenchResult{}, err
		}
	}
	lat := make([]time.Duration, n)
	start := time.Now()
	for i := 0; i < n; i++ {
		t0 := time.Now()
		req := httptest.NewRequest(http.MethodPost, webhook.Path, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		lat[i] = time.Since(t0)
		if rec.Code != http.StatusOK {
			return webhookBenchResult{}, fmt.Errorf("status %d: %s", rec.Code, rec.Body)
		}
	}
	total := time.Since(start)
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	return webhookBenchResult{perSec: float64(n) / total.Seconds(), p50: us(lat[n/2]), p99: us(lat[n*99/100])}, nil
}

func runWebhookBench() ([]Row, error) {
	// The baseline logs through controller-runtime; silence it so the table stays readable.
	ctrllog.SetLogger(logr.Discard())
	ours, err := webhook.NewHandler(webhook.Config{FQDN: webhookBenchFQDN}, nil)
	if err != nil {
		return nil, err
	}
	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	baseline := admission.WithCustomDefaulter(scheme, &corev1.Pod{}, envDefaulter{})
	const baselineName = "controller-runtime CustomDefaulter"

	var rows []Row
	for _, tc := range []struct {
		name               string
		containers, env, n int
	}{
		{"1 container", 1, 0, 20000},
		{"10 containers x 30 env", 10, 30, 2000},
	} {
		pod := webhookBenchPod(tc.containers, tc.env)
		body := webhookBenchReview(pod)
		if err := webhookBenchSameResult(pod, body, ours, baseline); err != nil {
			return rows, fmt.Errorf("%s: %w", tc.name, err)
		}
		b, err := webhookBenchMeasure(baseline, body, tc.n)
		if err != nil {
			return rows, fmt.Errorf("%s baseline: %w", tc.name, err)
		}
		o, err := webhookBenchMeasure(ours, body, tc.n)
		if err != nil {
			return rows, fmt.Errorf("%s ours: %w", tc.name, err)
		}
		rows = append(rows,
			Row{Metric: "reviews/s, " + tc.name, Unit: "/s", Baseline: baselineName, Base: b.perSec, Ours: o.perSec, HigherIsBetter: true, Target: ">= 3x"},
			Row{Metric: "p50 latency, " + tc.name, Unit: "µs", Baseline: baselineName, Base: b.p50, Ours: o.p50},
			Row{Metric: "p99 latency, " + tc.name, Unit: "µs", Baseline: baselineName, Base: b.p99, Ours: o.p99},
		)
	}
	return rows, nil
}

// webhookBenchSameResult checks, before timing anything, that both handlers produce the same pod.
func webhookBenchSameResult(pod *corev1.Pod, body []byte, ours, baseline http.Handler) error {
	raw, _ := json.Marshal(pod)
	var pods [2]corev1.Pod
	for i, h := range []http.Handler{ours, baseline} {
		p, err := webhookBenchServe(h, body)
		if err != nil {
			return err
		}
		decoded, err := jsonpatch.DecodePatch(p)
		if err != nil {
			return err
		}
		patched, err := decoded.Apply(raw)
		if err != nil {
			return err
		}
		if err := json.Unmarshal(patched, &pods[i]); err != nil {
			return err
		}
	}
	if !reflect.DeepEqual(pods[0], pods[1]) {
		return fmt.Errorf("the two handlers mutate the pod differently")
	}
	if n := len(pods[0].Spec.Containers[0].Env); n == 0 || pods[0].Spec.Containers[0].Env[n-1].Name != webhook.EnvHost {
		return fmt.Errorf("no %s injected", webhook.EnvHost)
	}
	return nil
}

func intstrFromInt(i int) intstr.IntOrString { return intstr.FromInt32(int32(i)) }
