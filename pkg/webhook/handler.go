package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"
	sigsjson "sigs.k8s.io/json"
)

// Path is where the API server sends the reviews.
const Path = "/webhook/pod-apiserver-env"

// MaxBodyBytes bounds a review body. etcd stores objects up to 1.5 MiB, so a pod review with its
// envelope stays well below; anything larger is not a real review and is refused before decoding.
const MaxBodyBytes = 3 << 20

const (
	admissionV1      = "admission.k8s.io/v1"
	admissionV1beta1 = "admission.k8s.io/v1beta1"
)

// Handler answers AdmissionReviews for pods with the injection patch.
type Handler struct {
	m        *mutator
	reviews  *prometheus.CounterVec
	duration prometheus.Histogram
}

// NewHandler returns the review handler for c. Its metrics are registered on reg when not nil.
func NewHandler(c Config, reg prometheus.Registerer) (*Handler, error) {
	m, err := newMutator(c)
	if err != nil {
		return nil, err
	}
	h := &Handler{
		m: m,
		reviews: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "apiproxy_webhook_reviews_total",
			Help: "Admission reviews answered, by result (patched, unchanged, opted_out, skipped, denied, bad_request).",
		}, []string{"result"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "apiproxy_webhook_review_duration_seconds",
			Help:    "Time to answer one admission review, from the first byte read to the response written.",
			Buckets: []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .1},
		}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{h.reviews, h.duration} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("registering webhook metrics: %w", err)
			}
		}
	}
	return h, nil
}

// review is the part of an AdmissionReview (v1 and v1beta1 share the layout) the handler reads,
// with the object decoded as O: *slimPod in one pass, or json.RawMessage when that pass failed.
type review[O any] struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Request    *reviewRequest[O] `json:"request"`
}

type reviewRequest[O any] struct {
	requestMeta
	Object    O `json:"object"`
	OldObject O `json:"oldObject"`
}

type requestMeta struct {
	UID  string `json:"uid"`
	Kind struct {
		Group string `json:"group"`
		Kind  string `json:"kind"`
	} `json:"kind"`
	SubResource string `json:"subResource"`
	Operation   string `json:"operation"`
	Namespace   string `json:"namespace"`
}

type reviewResponse struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Response   response `json:"response"`
}

type response struct {
	UID       string  `json:"uid"`
	Allowed   bool    `json:"allowed"`
	Result    *status `json:"status,omitempty"`
	PatchType string  `json:"patchType,omitempty"`
	Patch     []byte  `json:"patch,omitempty"` // base64 by encoding/json, as the API expects
	// Warnings reach the user (kubectl prints them): containers left alone and why.
	Warnings []string `json:"warnings,omitempty"`
}

type status struct {
	Code    int32  `json:"code"`
	Message string `json:"message"`
}

// httpError is a request the handler refuses before any review exists to answer.
type httpError struct {
	code int
	msg  string
}

func (e *httpError) Error() string { return e.msg }

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	result, err := h.serve(w, r)
	if err != nil {
		var he *httpError
		if !errors.As(err, &he) {
			he = &httpError{http.StatusInternalServerError, err.Error()}
		}
		klog.V(2).InfoS("Refused admission request", "remote", r.RemoteAddr, "code", he.code, "reason", he.msg)
		http.Error(w, he.msg, he.code)
		result = "bad_request"
	}
	h.reviews.WithLabelValues(result).Inc()
	h.duration.Observe(time.Since(start).Seconds())
}

func (h *Handler) serve(w http.ResponseWriter, r *http.Request) (string, error) {
	if r.Method != http.MethodPost {
		return "", &httpError{http.StatusMethodNotAllowed, "admission reviews are POSTed, got " + r.Method}
	}
	if ct, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || ct != "application/json" {
		return "", &httpError{http.StatusUnsupportedMediaType,
			fmt.Sprintf("Content-Type %q is not supported: send the AdmissionReview as application/json", r.Header.Get("Content-Type"))}
	}
	if r.ContentLength > MaxBodyBytes {
		return "", tooLarge()
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return "", tooLarge()
		}
		return "", &httpError{http.StatusBadRequest, "reading the request body: " + err.Error()}
	}
	resp, result, err := h.ReviewContext(r.Context(), body)
	if err != nil {
		return "", err
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(resp)
	return result, nil
}

func tooLarge() error {
	return &httpError{http.StatusRequestEntityTooLarge,
		fmt.Sprintf("request body is larger than %d bytes (3 MiB): not an admission review of a pod", MaxBodyBytes)}
}

// Review answers one encoded AdmissionReview: the encoded response and its result label, or an
// *httpError (400) when body is not a review this webhook can answer.
func (h *Handler) Review(body []byte) ([]byte, string, error) {
	return h.ReviewContext(context.Background(), body)
}

// ReviewContext is Review; ctx bounds the ConfigMap reads that envFrom may need.
func (h *Handler) ReviewContext(ctx context.Context, body []byte) ([]byte, string, error) {
	// Decoding is case-sensitive like the API server's: "Env" is not "env", and the patch paths must
	// name fields that really exist. The common case decodes review and pod in a single pass.
	var fast review[*slimPod]
	if err := sigsjson.UnmarshalCaseSensitivePreserveInts(body, &fast); err == nil {
		if err := checkReview(fast.APIVersion, fast.Kind, metaOf(fast.Request)); err != nil {
			return nil, "", err
		}
		pod, old := fast.Request.Object, fast.Request.OldObject
		if pod == nil {
			pod = &slimPod{}
		}
		if old == nil {
			old = &slimPod{}
		}
		return h.answer(ctx, fast.APIVersion, &fast.Request.requestMeta, func() (*slimPod, *slimPod, error) { return pod, old, nil })
	}
	// Either not a review at all, or an object that is not shaped like a pod (which is fine for
	// requests that are not pod creations): decode again, keeping the object raw.
	var rv review[json.RawMessage]
	if err := sigsjson.UnmarshalCaseSensitivePreserveInts(body, &rv); err != nil {
		return nil, "", &httpError{http.StatusBadRequest, "body is not a JSON AdmissionReview: " + err.Error()}
	}
	if err := checkReview(rv.APIVersion, rv.Kind, metaOf(rv.Request)); err != nil {
		return nil, "", err
	}
	return h.answer(ctx, rv.APIVersion, &rv.Request.requestMeta, func() (*slimPod, *slimPod, error) {
		var pod, old slimPod
		for _, x := range []struct {
			raw  json.RawMessage
			into *slimPod
		}{{rv.Request.Object, &pod}, {rv.Request.OldObject, &old}} {
			if len(x.raw) == 0 {
				continue
			}
			if err := sigsjson.UnmarshalCaseSensitivePreserveInts(x.raw, x.into); err != nil {
				return nil, nil, err
			}
		}
		return &pod, &old, nil
	})
}

func metaOf[O any](r *reviewRequest[O]) *requestMeta {
	if r == nil {
		return nil
	}
	return &r.requestMeta
}

// checkReview refuses what is not an AdmissionReview request this webhook can answer; meta is nil
// when the review has no request.
func checkReview(apiVersion, kind string, meta *requestMeta) error {
	if apiVersion != admissionV1 && apiVersion != admissionV1beta1 {
		return &httpError{http.StatusBadRequest, fmt.Sprintf(
			"apiVersion %q is not supported: expected %s or %s", apiVersion, admissionV1, admissionV1beta1)}
	}
	if kind != "AdmissionReview" {
		return &httpError{http.StatusBadRequest, fmt.Sprintf("kind %q is not AdmissionReview", kind)}
	}
	if meta == nil {
		return &httpError{http.StatusBadRequest, "AdmissionReview has no request"}
	}
	if meta.UID == "" {
		return &httpError{http.StatusBadRequest, "AdmissionReview request has no uid"}
	}
	return nil
}

// answer encodes the response to one checked request, in the request's apiVersion.
func (h *Handler) answer(ctx context.Context, apiVersion string, meta *requestMeta, pods func() (*slimPod, *slimPod, error)) ([]byte, string, error) {
	out := reviewResponse{APIVersion: apiVersion, Kind: "AdmissionReview", Response: response{UID: meta.UID, Allowed: true}}
	result := h.decide(ctx, meta, pods, &out.Response)
	b, err := json.Marshal(&out)
	return b, result, err
}

// decide fills resp for one request and returns its result label.
func (h *Handler) decide(ctx context.Context, meta *requestMeta, decodePods func() (*slimPod, *slimPod, error), resp *response) string {
	// The creation of a pod, and the ephemeral containers added to a running one (kubectl debug):
	// the other subresources (binding, eviction, status) and updates do not set an environment.
	ephemeral := meta.SubResource == "ephemeralcontainers" && meta.Operation == "UPDATE"
	if meta.Kind.Group != "" || meta.Kind.Kind != "Pod" || !(ephemeral || meta.SubResource == "" && meta.Operation == "CREATE") {
		return "skipped"
	}
	pod, old, err := decodePods()
	if err != nil {
		resp.Allowed = false
		resp.Result = &status{Code: http.StatusBadRequest, Message: "the request's object is not a Pod: " + err.Error()}
		return "denied"
	}
	if out, _ := pod.optedOut(); out {
		return "opted_out"
	}
	if pod.Spec == nil {
		return "unchanged"
	}
	// envFrom may set the variables: only then are the ConfigMaps read.
	r := envFromResolver{m: h.m, reader: h.m.reader, namespace: meta.Namespace}
	var p []byte
	if ephemeral {
		existing := map[string]bool{}
		if old.Spec != nil {
			for _, c := range old.Spec.EphemeralContainers {
				existing[c.Name] = true
			}
		}
		if hasEnvFrom(pod.Spec.EphemeralContainers) {
			r.resolve(ctx, "ephemeralContainers", pod.Spec.EphemeralContainers)
		}
		p = h.m.patchEphemeral(pod, existing)
	} else {
		if hasEnvFrom(pod.Spec.InitContainers) {
			r.resolve(ctx, "initContainers", pod.Spec.InitContainers)
		}
		if hasEnvFrom(pod.Spec.Containers) {
			r.resolve(ctx, "containers", pod.Spec.Containers)
		}
		p = h.m.patch(pod)
	}
	resp.Warnings = r.warnings
	if p == nil {
		return "unchanged"
	}
	resp.PatchType = "JSONPatch"
	resp.Patch = p
	return "patched"
}
