package diagnose

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
)

var now = time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)

func pod(init, main []corev1.ContainerStatus, conds ...corev1.PodCondition) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "apiproxy-node-abcde", Namespace: "apiproxy-system", UID: "uid-1"},
		Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{{Name: "node-init", Image: "registry.example/agent:v1"}},
			Containers:     []corev1.Container{{Name: "node", Image: "registry.example/agent:v1"}},
		},
		Status: corev1.PodStatus{Phase: corev1.PodPending, InitContainerStatuses: init, ContainerStatuses: main, Conditions: conds},
	}
}

func waiting(name, reason, msg string) corev1.ContainerStatus {
	return corev1.ContainerStatus{Name: name, State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: msg}}}
}

func warning(uid types.UID, reason, msg string, count int32, at time.Time) corev1.Event {
	return corev1.Event{InvolvedObject: corev1.ObjectReference{Kind: "Pod", UID: uid}, Type: corev1.EventTypeWarning,
		Reason: reason, Message: msg, Count: count, LastTimestamp: metav1.NewTime(at)}
}

func TestPodDiagnosis(t *testing.T) {
	crashed := waiting("node", "CrashLoopBackOff", "back-off 10s restarting failed container")
	crashed.RestartCount = 2
	crashed.LastTerminationState.Terminated = &corev1.ContainerStateTerminated{ExitCode: 1, Reason: "Error"}
	initFailed := corev1.ContainerStatus{Name: "node-init", RestartCount: 1,
		State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 1, Reason: "Error"}}}
	unsched := func(ago time.Duration) corev1.PodCondition {
		return corev1.PodCondition{Type: corev1.PodScheduled, Status: corev1.ConditionFalse, Reason: "Unschedulable",
			Message: "0/1 nodes are available: 1 node(s) had untolerated taint", LastTransitionTime: metav1.NewTime(now.Add(-ago))}
	}
	for _, tc := range []struct {
		name      string
		pod       *corev1.Pod
		events    []corev1.Event
		fatal     bool
		container string
		want      []string
	}{
		{"image pull back-off", pod(nil, []corev1.ContainerStatus{waiting("node", "ImagePullBackOff", `Back-off pulling image "registry.example/agent:v1"`)}),
			nil, true, "node", []string{"ImagePullBackOff", "cannot pull registry.example/agent:v1", "--image", "--image-pull-secret", "--registry"}},
		{"pull error: not found", pod([]corev1.ContainerStatus{waiting("node-init", "ErrImagePull", "rpc error: registry.example/agent:v1: not found")}, nil),
			nil, true, "node-init", []string{"init container node-init: ErrImagePull"}},
		{"pull error: timeout, retried", pod(nil, []corev1.ContainerStatus{waiting("node", "ErrImagePull", "i/o timeout")}),
			nil, false, "node", []string{"ErrImagePull"}},
		{"never pull", pod(nil, []corev1.ContainerStatus{waiting("node", "ErrImageNeverPull", "")}), nil, true, "node", []string{"ctr -n k8s.io images import"}},
		{"crash loop", pod(nil, []corev1.ContainerStatus{crashed}), nil, true, "node", []string{"CrashLoopBackOff", "last run: exit code 1 (Error)", "logs apiproxy-node-abcde -c node --previous"}},
		{"init container failed", pod([]corev1.ContainerStatus{initFailed}, nil), nil, true, "node-init", []string{"init container node-init: Error: exit code 1", "the init container node-init exits with an error"}},
		{"config error", pod(nil, []corev1.ContainerStatus{waiting("node", "CreateContainerConfigError", `secret "x" not found`)}), nil, true, "node", []string{`secret "x" not found`}},
		{"unschedulable, fresh", pod(nil, nil, unsched(time.Second)), nil, false, "", []string{"Unschedulable", "untolerated taint"}},
		{"unschedulable, lasting", pod(nil, nil, unsched(time.Minute)), nil, true, "", []string{"no node fits"}},
		{"unschedulable, autoscaler on it", pod(nil, nil, unsched(time.Minute)),
			[]corev1.Event{{InvolvedObject: corev1.ObjectReference{UID: "uid-1"}, Reason: "TriggeredScaleUp"}}, false, "", nil},
	} {
		got := Pod(tc.pod, tc.events, now)
		if len(got) != 1 {
			t.Errorf("%s: %d problems, want 1: %+v", tc.name, len(got), got)
			continue
		}
		p := got[0]
		text := p.Format("")
		if p.Fatal != tc.fatal || p.Container != tc.container || p.Pod != "apiproxy-node-abcde" {
			t.Errorf("%s: fatal=%v container=%q pod=%q, want fatal=%v container=%q\n%s", tc.name, p.Fatal, p.Container, p.Pod, tc.fatal, tc.container, text)
		}
		for _, w := range tc.want {
			if !strings.Contains(text, w) {
				t.Errorf("%s: %q missing from\n%s", tc.name, w, text)
			}
		}
	}

	// Creating, initializing, running or being deleted: nothing to report.
	running := pod(nil, []corev1.ContainerStatus{{Name: "node", Ready: true, State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}}})
	creating := pod(nil, []corev1.ContainerStatus{waiting("node", "ContainerCreating", "")})
	deleted := pod(nil, []corev1.ContainerStatus{waiting("node", "ImagePullBackOff", "")})
	deleted.DeletionTimestamp = &metav1.Time{Time: now}
	for _, p := range []*corev1.Pod{running, creating, deleted} {
		if got := Pod(p, nil, now); len(got) != 0 {
			t.Errorf("want no problem, got %+v", got)
		}
	}
}

func TestEventsAreThePodsNewestWarnings(t *testing.T) {
	p := pod(nil, []corev1.ContainerStatus{waiting("node", "ImagePullBackOff", "")})
	events := []corev1.Event{
		warning("uid-1", "Failed", "oldest", 1, now.Add(-4*time.Minute)),
		warning("uid-1", "Failed", `Failed to pull image "registry.example/agent:v1": not found`, 4, now.Add(-time.Second)),
		warning("uid-1", "BackOff", "Back-off pulling image", 7, now.Add(-2*time.Second)),
		warning("uid-1", "Failed", "Error: ErrImagePull", 1, now.Add(-3*time.Minute)),
		warning("other-pod", "Failed", "not mine", 1, now),
		{InvolvedObject: corev1.ObjectReference{UID: "uid-1"}, Type: corev1.EventTypeNormal, Reason: "Pulling", LastTimestamp: metav1.NewTime(now)},
	}
	got := Pod(p, events, now)[0].Events
	want := []string{"Failed: Error: ErrImagePull", "BackOff: Back-off pulling image (x7)", `Failed: Failed to pull image "registry.example/agent:v1": not found (x4)`}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("events = %q\nwant     %q", got, want)
	}
}

type fakeLogs struct {
	lines map[bool][]string // by previous
	err   error
	calls []string
}

func (f *fakeLogs) Tail(_ context.Context, ns, pod, container string, previous bool, lines int64) ([]string, error) {
	f.calls = append(f.calls, ns+"/"+pod+"/"+container)
	if lines != LogLines {
		return nil, errors.New("unexpected tail length")
	}
	if f.err != nil {
		return nil, f.err
	}
	return f.lines[previous], nil
}

func TestAddLogsIsBestEffortAndFormatted(t *testing.T) {
	crashed := waiting("node", "CrashLoopBackOff", "back-off")
	crashed.RestartCount = 3
	pull := waiting("node", "ImagePullBackOff", "")

	// A crash: the previous run's last lines, shown under the problem.
	probs := Pod(pod(nil, []corev1.ContainerStatus{crashed}), nil, now)
	logs := &fakeLogs{lines: map[bool][]string{true: {`E1201 "Sync failed" err="needs CAP_NET_ADMIN"`, "exiting"}}}
	AddLogs(context.Background(), logs, "apiproxy-system", probs)
	text := probs[0].Format("  ")
	for _, w := range []string{"last 2 log lines of node:", `    | E1201 "Sync failed" err="needs CAP_NET_ADMIN"`, "    | exiting"} {
		if !strings.Contains(text, w) {
			t.Errorf("%q missing from\n%s", w, text)
		}
	}

	// No kubelet to ask: the reason and the command to try, never a failure.
	probs = Pod(pod(nil, []corev1.ContainerStatus{crashed}), nil, now)
	AddLogs(context.Background(), &fakeLogs{err: errors.New("pods \"x\" not found on node\nmore")}, "apiproxy-system", probs)
	if text := probs[0].Format(""); !strings.Contains(text, "logs: not readable (pods \"x\" not found on node)") || !strings.Contains(text, "--previous") {
		t.Errorf("unreadable logs:\n%s", text)
	}

	// A container that never ran has no logs to fetch.
	probs = Pod(pod(nil, []corev1.ContainerStatus{pull}), nil, now)
	logs = &fakeLogs{}
	AddLogs(context.Background(), logs, "apiproxy-system", probs)
	if len(logs.calls) != 0 || probs[0].LogsError != "" {
		t.Errorf("logs read for a container that never ran: %v %q", logs.calls, probs[0].LogsError)
	}
}

func TestControllerFailedCreate(t *testing.T) {
	ev := func(kind, name, msg string, at time.Time) corev1.Event {
		return corev1.Event{InvolvedObject: corev1.ObjectReference{Kind: kind, Name: name}, Type: corev1.EventTypeWarning,
			Reason: "FailedCreate", Message: msg, LastTimestamp: metav1.NewTime(at)}
	}
	events := []corev1.Event{
		ev("ReplicaSet", "apiproxy-proxy-5d8f", `Error creating: pods "apiproxy-proxy-5d8f-x" is forbidden: violates PodSecurity "restricted:latest"`, now),
		ev("ReplicaSet", "apiproxy-proxy-5d8f", "old", now.Add(-time.Hour)),
		ev("ReplicaSet", "apiproxy-webhook-1", "not this workload", now),
	}
	got := Controller("Deployment", "apiproxy-proxy", events, now.Add(-time.Minute))
	if len(got) != 1 || !got[0].Fatal || !strings.Contains(got[0].Summary(), "FailedCreate: replicaset apiproxy-proxy-5d8f: Error creating") {
		t.Errorf("got %+v", got)
	}
}

func TestRolloutUsesKubectlsViewer(t *testing.T) {
	dep := func(gen, observed, updated, available int64, conds ...any) *unstructured.Unstructured {
		u := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "apps/v1", "kind": "Deployment",
			"metadata": map[string]any{"name": "apiproxy-proxy", "generation": gen},
			"spec":     map[string]any{"replicas": int64(2)},
			"status": map[string]any{"observedGeneration": observed, "replicas": updated, "updatedReplicas": updated,
				"availableReplicas": available, "conditions": conds},
		}}
		return u
	}
	for _, tc := range []struct {
		obj    *unstructured.Unstructured
		done   bool
		failed bool
		msg    string
	}{
		{dep(2, 1, 2, 2), false, false, "spec update to be observed"},
		{dep(1, 1, 2, 1), false, false, "1 of 2 updated replicas are available"},
		{dep(1, 1, 2, 2), true, false, "successfully rolled out"},
		{dep(1, 1, 1, 0, map[string]any{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}), false, true, ""},
	} {
		done, msg, err := Rollout(tc.obj)
		if done != tc.done || (err != nil) != tc.failed || !strings.Contains(msg, tc.msg) {
			t.Errorf("Rollout = %v %q %v, want done=%v failed=%v %q", done, msg, err, tc.done, tc.failed, tc.msg)
		}
	}
}

// A container that runs but is not ready is explained by its last readiness probe failure since it
// started: the failed checks of the agent's /readyz?verbose, which the exec probe printed.
func TestNotReadyNamesTheFailingCheck(t *testing.T) {
	started := now.Add(-time.Minute)
	running := corev1.ContainerStatus{Name: "node", State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(started)}}}
	probe := func(msg string, at time.Time) corev1.Event {
		e := warning("uid-1", "Unhealthy", msg, 3, at)
		e.InvolvedObject.FieldPath = "spec.containers{node}"
		return e
	}
	events := []corev1.Event{
		probe("Readiness probe failed: [-]address failed: 169.254.20.11/32 is not on apiproxy0\nreadyz check failed\n", started.Add(-time.Hour)), // an earlier run
		probe("Readiness probe failed: [+]sync ok\n[+]address ok\n[-]rules failed: 1 rule(s) missing: -t raw -A OUTPUT ...\nreadyz check failed\nerror: /readyz: not ok\n", now.Add(-5*time.Second)),
		probe("Liveness probe failed: no answer", now),
	}
	got := Pod(pod(nil, []corev1.ContainerStatus{running}), events, now)
	if len(got) != 1 {
		t.Fatalf("problems %+v, want 1", got)
	}
	p := got[0]
	if p.Reason != ReasonNotReady || p.Fatal || p.Container != "node" || p.Message != "rules failed: 1 rule(s) missing: -t raw -A OUTPUT ... (x3)" {
		t.Errorf("problem %+v", p)
	}
	if s := p.Summary(); s != "pod apiproxy-node-abcde container node: NotReady: rules failed: 1 rule(s) missing: -t raw -A OUTPUT ... (x3)" {
		t.Errorf("summary %q", s)
	}
	// No failure since the container started (it has just started, or only an older run failed).
	if got := Pod(pod(nil, []corev1.ContainerStatus{running}), events[:1], now); len(got) != 0 {
		t.Errorf("problems %+v from an earlier run's probe, want none", got)
	}
}
