package install

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

func daemonSet(generation, observed, desired, available int64) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "apps/v1", "kind": "DaemonSet",
		"metadata": map[string]any{"name": "apiproxy-node", "generation": generation},
		"spec":     map[string]any{"updateStrategy": map[string]any{"type": "RollingUpdate"}},
		"status": map[string]any{"observedGeneration": observed, "desiredNumberScheduled": desired,
			"updatedNumberScheduled": desired, "numberAvailable": available},
	}}
}

func TestJudge(t *testing.T) {
	ref := roleWorkloads[RoleNode]
	now := time.Now()
	pull := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "apiproxy-node-x", UID: "u", CreationTimestamp: metav1.NewTime(now)},
		Status: corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{{Name: "node",
			State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ImagePullBackOff"}}}}}}
	for _, tc := range []struct {
		name   string
		obj    *unstructured.Unstructured
		pods   []*corev1.Pod
		done   bool
		fatal  bool
		substr string
	}{
		{"missing", nil, nil, false, false, "not found: was the node role installed"},
		{"unobserved", daemonSet(2, 1, 1, 1), nil, false, false, "is kube-controller-manager running?"},
		{"rolled out", daemonSet(1, 1, 2, 2), []*corev1.Pod{pull}, true, false, `daemon set "apiproxy-node" successfully rolled out`},
		{"rolled out on no node", daemonSet(1, 1, 0, 0), nil, true, false, "on no node"},
		{"pod cannot pull", daemonSet(1, 1, 1, 0), []*corev1.Pod{pull}, false, true, "0 of 1 updated pods are available"},
		{"old pod being replaced", withImage(daemonSet(1, 1, 1, 0), "agent:v2"), []*corev1.Pod{withContainer(pull, "agent:v1")}, false, false, ""},
		{"current pod", withImage(daemonSet(1, 1, 1, 0), "agent:v2"), []*corev1.Pod{withContainer(pull, "agent:v2")}, false, true, ""},
	} {
		s := judge(ref, tc.obj, tc.pods, nil, now, now)
		if s.done != tc.done || s.fatal() != tc.fatal || !strings.Contains(s.message, tc.substr) {
			t.Errorf("%s: done=%v fatal=%v %q, want done=%v fatal=%v and %q", tc.name, s.done, s.fatal(), s.message, tc.done, tc.fatal, tc.substr)
		}
	}
}

func withImage(ds *unstructured.Unstructured, image string) *unstructured.Unstructured {
	_ = unstructured.SetNestedSlice(ds.Object, []any{map[string]any{"name": "node", "image": image, "args": []any{"node"}}}, "spec", "template", "spec", "containers")
	return ds
}

func withContainer(p *corev1.Pod, image string) *corev1.Pod {
	p = p.DeepCopy()
	p.Spec.Containers = []corev1.Container{{Name: "node", Image: image, Args: []string{"node"}}}
	return p
}

// A pod from before the wait whose trouble shows no sign since (a previous install's) does not end
// the wait; the same trouble seen again does.
func TestJudgeOldTrouble(t *testing.T) {
	start := time.Now()
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "apiproxy-node-x", UID: "u", CreationTimestamp: metav1.NewTime(start.Add(-time.Hour))},
		Status: corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{{Name: "node",
			State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ImagePullBackOff"}}}}}}
	old := corev1.Event{InvolvedObject: corev1.ObjectReference{UID: "u"}, Type: corev1.EventTypeWarning, Reason: "Failed", LastTimestamp: metav1.NewTime(start.Add(-10 * time.Minute))}
	s := judge(roleWorkloads[RoleNode], daemonSet(1, 1, 1, 0), []*corev1.Pod{pod}, []corev1.Event{old}, start, start)
	if s.fatal() || !strings.Contains(s.problems[0].Message, "from before this wait") {
		t.Errorf("stale trouble ended the wait: %+v", s.problems)
	}
	again := old
	again.LastTimestamp = metav1.NewTime(start.Add(time.Second))
	if s := judge(roleWorkloads[RoleNode], daemonSet(1, 1, 1, 0), []*corev1.Pod{pod}, []corev1.Event{old, again}, start, start); !s.fatal() {
		t.Errorf("trouble seen again did not end the wait: %+v", s.problems)
	}
}
