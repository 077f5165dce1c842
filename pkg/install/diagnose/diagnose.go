// Package diagnose explains why an installed workload is not ready: whether its rollout is complete
// (decided by kubectl's own rollout status viewers), and for each of its pods what keeps it from
// starting (image pulls, crashing or failing init containers, scheduling, container configuration),
// with the recent events, the last log lines and a hint. `install --wait` and `status` share it, so
// they always tell the same story.
package diagnose

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/kubectl/pkg/polymorphichelpers"
)

// Rollout asks kubectl's status viewer of the workload's kind (Deployment, DaemonSet) whether its
// rollout is complete. failed is set when the rollout cannot finish by itself (e.g. a Deployment
// past its progress deadline); msg is kubectl's one-line message.
func Rollout(obj *unstructured.Unstructured) (done bool, msg string, failed error) {
	gvk := obj.GroupVersionKind()
	viewer, err := polymorphichelpers.StatusViewerFor(schema.GroupKind{Group: gvk.Group, Kind: gvk.Kind})
	if err != nil {
		return false, "", err
	}
	msg, done, err = viewer.Status(obj, 0)
	if err != nil {
		// Includes a DaemonSet with the OnDelete strategy, whose rollout kubectl cannot judge.
		return false, strings.TrimSpace(msg), err
	}
	return done, strings.TrimSpace(msg), nil
}

// Problem is one reason a pod does not start or stay up.
type Problem struct {
	// Pod is empty when no pod could be created (FailedCreate).
	Pod string `json:"pod,omitempty"`
	// Container is empty for pod-level problems (scheduling).
	Container string `json:"container,omitempty"`
	Init      bool   `json:"initContainer,omitempty"`
	// Reason is the kubelet's or scheduler's reason: ImagePullBackOff, CrashLoopBackOff,
	// Unschedulable, CreateContainerConfigError, ...
	Reason  string `json:"reason"`
	Message string `json:"message,omitempty"`
	// Fatal: the pod will not become ready without someone acting; waiting longer is pointless.
	Fatal bool `json:"fatal"`
	// Events are the pod's most recent warning events, newest last.
	Events []string `json:"events,omitempty"`
	// Logs are the container's last log lines (its previous run when it crashed); LogsError says why
	// there are none when they could not be read.
	Logs      []string `json:"logs,omitempty"`
	LogsError string   `json:"logsError,omitempty"`
	Hint      string   `json:"hint,omitempty"`
	// ranBefore: the container has run at least once, so it has logs worth fetching.
	ranBefore bool
}

// MaxEvents is how many recent warning events a Problem carries.
const MaxEvents = 3

// UnschedulableGrace is how long a pod may stay unschedulable before it counts as fatal: the
// scheduler retries, and a node that has just joined may still carry its not-ready taint.
const UnschedulableGrace = 20 * time.Second

// waiting reasons after which the kubelet only backs off and retries the same thing.
var fatalWaiting = map[string]bool{
	"ImagePullBackOff":           true,
	"ErrImageNeverPull":          true,
	"InvalidImageName":           true,
	"CrashLoopBackOff":           true,
	"CreateContainerConfigError": true,
	"CreateContainerError":       true,
	"RunContainerError":          true,
	"PreCreateHookError":         true,
	"PreStartHookError":          true,
}

// ErrImagePull is fatal at once when the registry said the image is not there or not for us; other
// pull errors (a timeout) get the kubelet's retry, and become ImagePullBackOff when it fails again.
var permanentPull = []string{"not found", "manifest unknown", "unauthorized", "denied", "no such host", "does not exist"}

// Pod lists what keeps pod from running, using its events (any; only those about this pod are
// used). A pod being deleted, or running with every container ready, has none.
func Pod(pod *corev1.Pod, events []corev1.Event, now time.Time) []Problem {
	if pod.DeletionTimestamp != nil {
		return nil
	}
	evs := warningsFor(pod, events)
	var out []Problem
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonUnschedulable {
			p := Problem{Pod: pod.Name, Reason: c.Reason, Message: c.Message, Events: evs,
				Hint: "no node fits: check the nodes' taints, free resources and the pod's nodeSelector/affinity (kubectl describe nodes)"}
			scalingUp := slices.ContainsFunc(events, func(e corev1.Event) bool {
				return e.InvolvedObject.UID == pod.UID && e.Reason == "TriggeredScaleUp"
			})
			p.Fatal = !scalingUp && now.Sub(c.LastTransitionTime.Time) >= UnschedulableGrace
			out = append(out, p)
		}
	}
	if pod.Status.Phase == corev1.PodFailed {
		out = append(out, Problem{Pod: pod.Name, Reason: cmp.Or(pod.Status.Reason, "Failed"), Message: pod.Status.Message, Fatal: true, Events: evs,
			Hint: "the pod failed as a whole (e.g. evicted): its controller replaces it; check the node's conditions"})
		return out
	}
	for _, cs := range pod.Status.InitContainerStatuses {
		if p, ok := container(pod, cs, true, evs); ok {
			out = append(out, p)
		}
	}
	for _, cs := range pod.Status.ContainerStatuses {
		if p, ok := container(pod, cs, false, evs); ok {
			out = append(out, p)
		} else if p, ok := notReady(pod, cs, events); ok {
			out = append(out, p)
		}
	}
	return out
}

// ReasonNotReady is the reason of a container that runs but whose readiness probe fails.
const ReasonNotReady = "NotReady"

// notReady explains a running container that is not ready by its readiness probe's last failure
// since it started: the kubelet's event carries an exec probe's output, and the agents' probe
// (`agent probe`, /readyz?verbose) names the failing check ("[-]upstream failed: ..."). Not fatal:
// the check may pass (an upstream back, an address repaired). Without such an event (a container
// that has just started) there is nothing to say yet.
func notReady(pod *corev1.Pod, cs corev1.ContainerStatus, events []corev1.Event) (Problem, bool) {
	if cs.Ready || cs.State.Running == nil {
		return Problem{}, false
	}
	const prefix = "Readiness probe failed:"
	fieldPath := "spec.containers{" + cs.Name + "}"
	var last *corev1.Event
	for i, e := range events {
		if e.InvolvedObject.UID != pod.UID || e.InvolvedObject.FieldPath != fieldPath || !strings.HasPrefix(e.Message, prefix) ||
			lastSeen(e).Before(cs.State.Running.StartedAt.Time) {
			continue
		}
		if last == nil || !lastSeen(e).Before(lastSeen(*last)) {
			last = &events[i]
		}
	}
	if last == nil {
		return Problem{}, false
	}
	msg := failedChecks(strings.TrimPrefix(last.Message, prefix))
	if n := count(*last); n > 1 {
		msg += fmt.Sprintf(" (x%d)", n)
	}
	return Problem{Pod: pod.Name, Container: cs.Name, Reason: ReasonNotReady, Message: msg,
		Hint: fmt.Sprintf("the container runs, but its readiness check fails as the message says; see its log: kubectl -n %s logs %s -c %s", pod.Namespace, pod.Name, cs.Name)}, true
}

func container(pod *corev1.Pod, cs corev1.ContainerStatus, init bool, evs []string) (Problem, bool) {
	p := Problem{Pod: pod.Name, Container: cs.Name, Init: init, Events: evs, ranBefore: cs.RestartCount > 0 || cs.LastTerminationState.Terminated != nil}
	switch {
	case cs.State.Waiting != nil:
		w := cs.State.Waiting
		if w.Reason == "" || w.Reason == "ContainerCreating" || w.Reason == "PodInitializing" {
			return p, false
		}
		p.Reason, p.Message = w.Reason, w.Message
		p.Fatal = fatalWaiting[w.Reason]
		if w.Reason == "ErrImagePull" {
			msg := strings.ToLower(w.Message + " " + strings.Join(evs, " "))
			p.Fatal = slices.ContainsFunc(permanentPull, func(s string) bool { return strings.Contains(msg, s) })
		}
		if t := cs.LastTerminationState.Terminated; t != nil && w.Reason == "CrashLoopBackOff" {
			p.Message = strings.TrimSpace(fmt.Sprintf("%s; last run: %s", w.Message, terminated(t)))
		}
	case cs.State.Terminated != nil && cs.State.Terminated.ExitCode != 0:
		// A failed init container, or a container between crash and back-off.
		t := cs.State.Terminated
		p.Reason, p.Message, p.ranBefore = cmp.Or(t.Reason, "Error"), terminated(t), true
		p.Fatal = cs.RestartCount > 0 || pod.Spec.RestartPolicy == corev1.RestartPolicyNever
	default:
		return p, false
	}
	p.Hint = hint(pod, cs.Name, p.Reason, init)
	return p, true
}

func terminated(t *corev1.ContainerStateTerminated) string {
	s := fmt.Sprintf("exit code %d", t.ExitCode)
	if t.Reason != "" {
		s += " (" + t.Reason + ")"
	}
	if m := strings.TrimSpace(t.Message); m != "" {
		s += ": " + m
	}
	return s
}

func hint(pod *corev1.Pod, container, reason string, init bool) string {
	image := ""
	for _, c := range append(slices.Clone(pod.Spec.InitContainers), pod.Spec.Containers...) {
		if c.Name == container {
			image = c.Image
		}
	}
	switch reason {
	case "ErrImagePull", "ImagePullBackOff", "InvalidImageName":
		return fmt.Sprintf("the nodes cannot pull %s: check the name, tag and digest, that the nodes reach the registry, and whether it needs credentials (install --image-pull-secret NAME, a kubernetes.io/dockerconfigjson Secret in the install namespace); install from a mirror the nodes reach with --registry, or another image with --image", image)
	case "ErrImageNeverPull":
		return fmt.Sprintf("imagePullPolicy is Never and %s is not on the node: load it there (ctr -n k8s.io images import, kind load image-archive) or push it to a registry", image)
	case "CreateContainerConfigError", "CreateContainerError":
		return "the container could not be created from its spec (a missing Secret or ConfigMap key, a security context the runtime refuses): see the message and events"
	case "OOMKilled":
		return "the container ran out of memory: raise its memory limit"
	}
	what := "container"
	if init {
		what = "init container"
	}
	return fmt.Sprintf("the %s %s exits with an error: its log says why (kubectl -n %s logs %s -c %s --previous)", what, container, pod.Namespace, pod.Name, container)
}

// warningsFor returns the pod's warning events, newest last, at most MaxEvents.
func warningsFor(pod *corev1.Pod, events []corev1.Event) []string {
	var mine []corev1.Event
	for _, e := range events {
		if e.Type == corev1.EventTypeWarning && e.InvolvedObject.UID == pod.UID {
			mine = append(mine, e)
		}
	}
	slices.SortStableFunc(mine, func(a, b corev1.Event) int { return lastSeen(a).Compare(lastSeen(b)) })
	if len(mine) > MaxEvents {
		mine = mine[len(mine)-MaxEvents:]
	}
	out := make([]string, 0, len(mine))
	for _, e := range mine {
		s := e.Reason + ": " + strings.TrimSpace(e.Message)
		if n := count(e); n > 1 {
			s += fmt.Sprintf(" (x%d)", n)
		}
		out = append(out, s)
	}
	return out
}

func lastSeen(e corev1.Event) time.Time {
	switch {
	case e.Series != nil:
		return e.Series.LastObservedTime.Time
	case !e.LastTimestamp.IsZero():
		return e.LastTimestamp.Time
	case !e.EventTime.IsZero():
		return e.EventTime.Time
	}
	return e.CreationTimestamp.Time
}

func count(e corev1.Event) int32 {
	if e.Series != nil {
		return e.Series.Count
	}
	return e.Count
}

// Summary is the problem on one line: "pod P container C: REASON: message".
func (p Problem) Summary() string {
	var b strings.Builder
	if p.Pod != "" {
		b.WriteString("pod " + p.Pod)
	}
	if p.Container != "" {
		if p.Init {
			b.WriteString(" init container " + p.Container)
		} else {
			b.WriteString(" container " + p.Container)
		}
	}
	if b.Len() > 0 {
		b.WriteString(": ")
	}
	b.WriteString(p.Reason)
	if m := strings.TrimSpace(p.Message); m != "" {
		b.WriteString(": " + m)
	}
	return b.String()
}

// Format writes the problem over several lines, each prefixed by indent: the summary, then the
// events, the last log lines and the hint.
func (p Problem) Format(indent string) string {
	var b strings.Builder
	b.WriteString(indent + p.Summary() + "\n")
	if len(p.Events) > 0 {
		b.WriteString(indent + "  events:\n")
		for _, e := range p.Events {
			b.WriteString(indent + "    " + e + "\n")
		}
	}
	switch {
	case len(p.Logs) > 0:
		fmt.Fprintf(&b, "%s  last %d log lines of %s:\n", indent, len(p.Logs), p.Container)
		for _, l := range p.Logs {
			b.WriteString(indent + "    | " + l + "\n")
		}
	case p.LogsError != "":
		b.WriteString(indent + "  logs: " + p.LogsError + "\n")
	}
	if p.Hint != "" {
		b.WriteString(indent + "  hint: " + p.Hint + "\n")
	}
	return b.String()
}

// Controller lists what keeps a workload's controller from creating its pods: FailedCreate warnings
// on the DaemonSet, or on one of the Deployment's ReplicaSets, seen since since. A refusal by
// admission (Pod Security, quota) is fatal: the controller only retries the same request.
func Controller(kind, name string, events []corev1.Event, since time.Time) []Problem {
	var out []Problem
	for _, e := range events {
		o := e.InvolvedObject
		mine := (kind == "DaemonSet" && o.Kind == "DaemonSet" && o.Name == name) ||
			(kind == "Deployment" && o.Kind == "ReplicaSet" && strings.HasPrefix(o.Name, name+"-"))
		if !mine || e.Type != corev1.EventTypeWarning || e.Reason != "FailedCreate" || lastSeen(e).Before(since) {
			continue
		}
		out = append(out, Problem{
			Reason:  "FailedCreate",
			Message: fmt.Sprintf("%s %s: %s", strings.ToLower(o.Kind), o.Name, strings.TrimSpace(e.Message)),
			Fatal:   strings.Contains(e.Message, "forbidden"),
			Hint:    "the API server refuses the pods: for Pod Security the node role needs the namespace labelled pod-security.kubernetes.io/enforce=privileged; for a quota, raise it",
		})
	}
	return out
}

// failedChecks keeps, of a /readyz?verbose answer, the failed checks ("[-]upstream failed: ..."),
// on one line; any other output is kept whole.
func failedChecks(out string) string {
	var failed, all []string
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimSpace(l)
		switch {
		case l == "":
		case strings.HasPrefix(l, "[-]"):
			failed = append(failed, strings.TrimPrefix(l, "[-]"))
		default:
			all = append(all, l)
		}
	}
	if len(failed) > 0 {
		return strings.Join(failed, "; ")
	}
	return strings.Join(all, "; ")
}
