package install

import (
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

func obj(kind string, generation int64, fields map[string]any) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: fields}
	u.SetKind(kind)
	if kind == "Deployment" || kind == "DaemonSet" {
		u.SetAPIVersion("apps/v1")
	}
	u.SetName("x")
	u.SetGeneration(generation)
	return u
}

func TestObjectStatusReadiness(t *testing.T) {
	certs, _, err := EnsureWebhookCerts(nil, nil, "ns", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	b64 := base64.StdEncoding.EncodeToString
	cases := []struct {
		name  string
		o     *unstructured.Unstructured
		ready bool
		msg   string
	}{
		{"deployment unobserved", obj("Deployment", 2, map[string]any{"spec": map[string]any{"replicas": int64(2)},
			"status": map[string]any{"observedGeneration": int64(1), "updatedReplicas": int64(2), "availableReplicas": int64(2)}}), false, "spec update to be observed"},
		{"deployment partly available", obj("Deployment", 1, map[string]any{"spec": map[string]any{"replicas": int64(2)},
			"status": map[string]any{"observedGeneration": int64(1), "updatedReplicas": int64(2), "availableReplicas": int64(1)}}), false, "1 of 2 updated replicas are available"},
		{"deployment available", obj("Deployment", 1, map[string]any{"spec": map[string]any{"replicas": int64(2)},
			"status": map[string]any{"observedGeneration": int64(1), "updatedReplicas": int64(2), "availableReplicas": int64(2)}}), true, "successfully rolled out"},
		{"daemonset old pods", obj("DaemonSet", 3, map[string]any{"spec": map[string]any{"updateStrategy": map[string]any{"type": "RollingUpdate"}},
			"status": map[string]any{"observedGeneration": int64(3),
				"desiredNumberScheduled": int64(3), "updatedNumberScheduled": int64(2), "numberAvailable": int64(3)}}), false, "2 out of 3 new pods have been updated"},
		{"webhook stale caBundle", obj("MutatingWebhookConfiguration", 1, map[string]any{"webhooks": []any{map[string]any{
			"clientConfig": map[string]any{"caBundle": b64([]byte("other"))}}}}), false, "re-run install"},
		{"webhook caBundle matches", obj("MutatingWebhookConfiguration", 1, map[string]any{"webhooks": []any{map[string]any{
			"clientConfig": map[string]any{"caBundle": b64(certs.CACert)}}}}), true, "matches"},
	}
	for _, tc := range cases {
		st := objectStatus(tc.o, certs.CACert, time.Now())
		if st.Ready != tc.ready || !strings.Contains(st.Message, tc.msg) {
			t.Errorf("%s: ready=%v %q, want ready=%v and %q", tc.name, st.Ready, st.Message, tc.ready, tc.msg)
		}
	}
	if ok, msg := certState(certs.ServingCert, time.Now().Add(350*24*time.Hour)); !ok || !strings.Contains(msg, "re-run install") {
		t.Errorf("expiring certificate: %v %q", ok, msg)
	}
	if ok, msg := certState(certs.ServingCert, time.Now().Add(400*24*time.Hour)); ok || !strings.Contains(msg, "expired") {
		t.Errorf("expired certificate: %v %q", ok, msg)
	}
}
