package install

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"

	"github.com/apiproxy/apiproxy/pkg/install/diagnose"
)

// workloadRef is the Deployment or DaemonSet that runs a role's pods.
type workloadRef struct {
	Role       Role
	Kind, Name string
}

func (w workloadRef) String() string { return strings.ToLower(w.Kind) + " " + w.Name }

// roleWorkloads are the workloads the manifests in deploy/ create, per role.
var roleWorkloads = map[Role]workloadRef{
	RoleProxy:   {RoleProxy, "Deployment", "apiproxy-proxy"},
	RoleNode:    {RoleNode, "DaemonSet", nodeDaemonSetName},
	RoleWebhook: {RoleWebhook, "Deployment", "apiproxy-webhook"},
}

// reevaluate is how often the wait looks at its caches without a change: some verdicts depend on
// time (how long a pod has been unschedulable). It reads memory only, never the API server.
const reevaluate = time.Second

// Wait watches the selected roles' workloads, their pods and the namespace's events until every
// rollout is complete (as kubectl rollout status decides), printing each change of a workload's
// state to log. It fails as soon as a pod cannot start without someone acting (an image that
// cannot be pulled, a crashing or failing container, no node to run on), naming the pod and
// container with the reason, events, last log lines and a hint; at the deadline it says which
// workloads were not ready and why, from what it already knows.
func Wait(ctx context.Context, c *Client, namespace string, roles []Role, timeout time.Duration, log io.Writer) error {
	start := time.Now()
	wctx, cancel := context.WithTimeout(ctx, timeout)
	w := newWorkloadWatch(c, namespace)
	w.start(wctx)
	defer func() { cancel(); w.stop() }()

	printed := map[string]string{}
	say := func(key, line string) {
		if printed[key] != line {
			fmt.Fprintln(log, line)
			printed[key] = line
		}
	}
	tick := time.NewTicker(reevaluate)
	defer tick.Stop()
	var states []workloadState
	for {
		// Refused before the first list completed: no retry will change that.
		if err := w.lastError(); !w.synced() && (apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err)) {
			return fmt.Errorf("--wait cannot watch the agents' workloads, pods and events in namespace %s: %w", namespace, err)
		}
		if w.synced() {
			states = w.evaluate(roles, start, time.Now())
			pending := false
			for _, s := range states {
				key := s.ref.String()
				if s.done {
					say(key, fmt.Sprintf("%s: %s", key, s.message))
					continue
				}
				pending = true
				say(key, fmt.Sprintf("waiting for %s: %s", key, s.message))
				for _, p := range s.problems {
					say(key+"/"+p.Pod+"/"+p.Container, "  "+p.Summary())
				}
			}
			if failed := failedStates(states); len(failed) > 0 {
				// The events' watch may lag the pods' watch: read them afresh for the verdict.
				if events, err := freshEvents(context.WithoutCancel(ctx), c, namespace); err == nil {
					if again := failedStates(w.evaluateWith(events, roles, start, time.Now())); len(again) > 0 {
						failed = again
					}
				}
				// Logs through the kubelet: outside the wait's deadline, each read bounded on its own.
				for i := range failed {
					diagnose.AddLogs(context.WithoutCancel(ctx), diagnose.ClientLogs(c.Typed), namespace, failed[i].problems)
				}
				return failedError(namespace, failed)
			}
			if !pending {
				return finalCheck(context.WithoutCancel(ctx), c, namespace, roles, log)
			}
		}
		select {
		case <-wctx.Done():
			if ctx.Err() != nil {
				return fmt.Errorf("interrupted while waiting for the agents in namespace %s; check later with: kubectl apiproxy status -n %s", namespace, namespace)
			}
			if !w.synced() {
				return timeoutError(namespace, timeout, unreadStates(roles, w.lastError()))
			}
			// The caches may have synced after the last evaluation (a short --timeout, a slow
			// first list): judge them now, still without a request.
			return timeoutError(namespace, timeout, w.evaluate(roles, start, time.Now()))
		case <-w.changed:
		case <-tick.C:
		}
	}
}

// finalCheck confirms, once the workloads are rolled out, what is not a workload (the webhook's
// caBundle and serving certificate).
func finalCheck(ctx context.Context, c *Client, namespace string, roles []Role, log io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	r, err := GetStatus(ctx, c, namespace)
	if err != nil {
		return fmt.Errorf("the workloads are ready, but reading the install's status failed: %w", err)
	}
	var notReady []string
	for _, rs := range r.Roles {
		if !slices.Contains(roles, rs.Role) {
			continue
		}
		for _, o := range rs.Objects {
			if !o.Ready {
				notReady = append(notReady, fmt.Sprintf("  - %s %s: %s", strings.ToLower(o.Kind), o.Name, o.Message))
			}
		}
	}
	if len(notReady) > 0 {
		return fmt.Errorf("the workloads in namespace %s are ready, but not everything else:\n%s", namespace, strings.Join(notReady, "\n"))
	}
	fmt.Fprintf(log, "%s ready in namespace %s\n", rolesString(roles), namespace)
	return nil
}

// workloadState is what the wait knows about one workload.
type workloadState struct {
	ref     workloadRef
	found   bool
	done    bool
	message string
	// failed: kubectl's status viewer says the rollout cannot finish (progress deadline exceeded).
	failed   error
	problems []diagnose.Problem
}

func (s workloadState) fatal() bool {
	return s.failed != nil || slices.ContainsFunc(s.problems, func(p diagnose.Problem) bool { return p.Fatal })
}

func failedStates(states []workloadState) []workloadState {
	var out []workloadState
	for _, s := range states {
		if !s.done && s.fatal() {
			out = append(out, s)
		}
	}
	return out
}

// workloadWatch keeps the namespace's labelled Deployments, DaemonSets and pods, and its events, in
// informer caches: one list and one watch per kind for the whole wait, however long it lasts, so
// the wait never queues behind the client's rate limiter.
type workloadWatch struct {
	namespace string
	labelled  informers.SharedInformerFactory
	all       informers.SharedInformerFactory
	infs      []cache.SharedIndexInformer
	changed   chan struct{}

	mu      sync.Mutex
	lastErr error
}

func newWorkloadWatch(c *Client, namespace string) *workloadWatch {
	w := &workloadWatch{namespace: namespace, changed: make(chan struct{}, 1)}
	w.labelled = informers.NewSharedInformerFactoryWithOptions(c.Typed, 0, informers.WithNamespace(namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = Selector(namespace) }))
	// Events carry no labels of ours: all of the namespace's (it is the agents' own).
	w.all = informers.NewSharedInformerFactoryWithOptions(c.Typed, 0, informers.WithNamespace(namespace))
	w.infs = []cache.SharedIndexInformer{
		w.labelled.Apps().V1().Deployments().Informer(),
		w.labelled.Apps().V1().DaemonSets().Informer(),
		w.labelled.Core().V1().Pods().Informer(),
		w.all.Core().V1().Events().Informer(),
	}
	notify := func() {
		select {
		case w.changed <- struct{}{}:
		default:
		}
	}
	for _, inf := range w.infs {
		_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc: func(any) { notify() }, UpdateFunc: func(any, any) { notify() }, DeleteFunc: func(any) { notify() },
		})
		// Kept for the verdict instead of logged: the reflector retries by itself, and the user
		// wants one statement about the agents, not the client's retries.
		_ = inf.SetWatchErrorHandler(func(_ *cache.Reflector, err error) {
			w.mu.Lock()
			w.lastErr = err
			w.mu.Unlock()
			notify()
		})
	}
	return w
}

func (w *workloadWatch) start(ctx context.Context) {
	w.labelled.Start(ctx.Done())
	w.all.Start(ctx.Done())
}

// stop waits for the informers' goroutines; the context given to start must be done.
func (w *workloadWatch) stop() {
	w.labelled.Shutdown()
	w.all.Shutdown()
}

func (w *workloadWatch) synced() bool {
	for _, inf := range w.infs {
		if !inf.HasSynced() {
			return false
		}
	}
	return true
}

func (w *workloadWatch) lastError() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.lastErr
}

// evaluate judges each selected role's workload from the caches.
func (w *workloadWatch) evaluate(roles []Role, since, now time.Time) []workloadState {
	var events []corev1.Event
	for _, o := range w.infs[3].GetStore().List() {
		events = append(events, *o.(*corev1.Event))
	}
	return w.evaluateWith(events, roles, since, now)
}

func (w *workloadWatch) evaluateWith(events []corev1.Event, roles []Role, since, now time.Time) []workloadState {
	var states []workloadState
	for _, role := range roles {
		ref := roleWorkloads[role]
		var obj *unstructured.Unstructured
		inf := w.infs[0]
		if ref.Kind == "DaemonSet" {
			inf = w.infs[1]
		}
		if o, exists, err := inf.GetStore().GetByKey(w.namespace + "/" + ref.Name); err == nil && exists {
			if u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(o); err == nil {
				obj = &unstructured.Unstructured{Object: u}
				obj.SetAPIVersion("apps/v1")
				obj.SetKind(ref.Kind)
			}
		}
		var pods []*corev1.Pod
		sel := labels.SelectorFromSet(labels.Set{LabelComponent: string(role)})
		for _, o := range w.infs[2].GetStore().List() {
			if p := o.(*corev1.Pod); sel.Matches(labels.Set(p.Labels)) {
				pods = append(pods, p)
			}
		}
		states = append(states, judge(ref, obj, pods, events, since, now))
	}
	return states
}

// judge is the verdict on one workload: kubectl's rollout status, then what its pods and its
// controller's events say. status shares it with the wait.
func judge(ref workloadRef, obj *unstructured.Unstructured, pods []*corev1.Pod, events []corev1.Event, since, now time.Time) workloadState {
	s := workloadState{ref: ref, found: obj != nil}
	if obj == nil {
		s.message = "not found: was the " + string(ref.Role) + " role installed into this namespace?"
		return s
	}
	uo := obj
	s.done, s.message, s.failed = diagnose.Rollout(uo)
	if s.failed != nil {
		s.message = s.failed.Error()
	}
	if s.done {
		if desired, found, _ := unstructured.NestedInt64(uo.Object, "status", "desiredNumberScheduled"); ref.Kind == "DaemonSet" && found && desired == 0 {
			s.message += " (but on no node: none is registered, or every node is excluded)"
		}
		return s
	}
	if uo.GetGeneration() > observedGeneration(uo) {
		s.message += " (no controller has picked it up yet: is kube-controller-manager running?)"
	}
	s.problems = append(s.problems, diagnose.Controller(ref.Kind, ref.Name, events, since)...)
	for _, p := range pods {
		probs := diagnose.Pod(p, events, now)
		// Pods being replaced, or whose trouble was seen only before `since` (a previous install),
		// are reported but do not end the wait: re-running install after a fix must not fail on
		// what the fix is about to replace.
		why := ""
		switch {
		case !runsTemplate(p, uo):
			why = "an old pod, being replaced"
		case p.CreationTimestamp.Time.Before(since.Add(-time.Second)) && !troubleSince(p, events, since):
			why = "from before this wait; waiting to see it again"
		}
		for i := range probs {
			if why != "" && probs[i].Fatal {
				probs[i].Fatal = false
				probs[i].Message = strings.TrimSpace(probs[i].Message + " (" + why + ")")
			}
		}
		s.problems = append(s.problems, probs...)
	}
	return s
}

// runsTemplate says whether the pod runs the workload's current containers (names, images and
// arguments): what a fix of --image or of a flag changes.
func runsTemplate(pod *corev1.Pod, workload *unstructured.Unstructured) bool {
	for _, field := range []string{"initContainers", "containers"} {
		want, _, _ := unstructured.NestedSlice(workload.Object, "spec", "template", "spec", field)
		have := pod.Spec.Containers
		if field == "initContainers" {
			have = pod.Spec.InitContainers
		}
		for _, w := range want {
			m, _ := w.(map[string]any)
			args, _, _ := unstructured.NestedStringSlice(m, "args")
			i := slices.IndexFunc(have, func(c corev1.Container) bool { return c.Name == m["name"] })
			if i < 0 || have[i].Image != m["image"] || !slices.Equal(have[i].Args, args) {
				return false
			}
		}
	}
	return true
}

// troubleSince says whether the pod's trouble shows after since: a warning event about it, or a
// container that stopped.
func troubleSince(pod *corev1.Pod, events []corev1.Event, since time.Time) bool {
	for _, e := range events {
		last := e.LastTimestamp.Time
		if e.Series != nil {
			last = e.Series.LastObservedTime.Time
		} else if last.IsZero() {
			last = e.EventTime.Time
		}
		if e.InvolvedObject.UID == pod.UID && e.Type == corev1.EventTypeWarning && !last.Before(since.Add(-time.Second)) {
			return true
		}
	}
	for _, cs := range append(slices.Clone(pod.Status.InitContainerStatuses), pod.Status.ContainerStatuses...) {
		for _, t := range []*corev1.ContainerStateTerminated{cs.State.Terminated, cs.LastTerminationState.Terminated} {
			if t != nil && !t.FinishedAt.Time.Before(since.Add(-time.Second)) {
				return true
			}
		}
	}
	return false
}

// freshEvents lists the namespace's events with one bounded request.
func freshEvents(ctx context.Context, c *Client, namespace string) ([]corev1.Event, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	list, err := c.Typed.CoreV1().Events(namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	return list.Items, nil
}

func observedGeneration(u *unstructured.Unstructured) int64 {
	g, _, _ := unstructured.NestedInt64(u.Object, "status", "observedGeneration")
	return g
}

// unreadStates stand for workloads the wait never got to read (the first list did not complete).
func unreadStates(roles []Role, err error) []workloadState {
	why := "not read yet: the API server did not answer the first list in time"
	if err != nil {
		why = "not read yet: " + err.Error()
	}
	var out []workloadState
	for _, r := range roles {
		out = append(out, workloadState{ref: roleWorkloads[r], message: why})
	}
	return out
}

func rolesString(roles []Role) string {
	s := make([]string, len(roles))
	for i, r := range roles {
		s[i] = string(r)
	}
	return strings.Join(s, ",")
}

// failedError names every pod and container that cannot start, with what to do next.
func failedError(namespace string, failed []workloadState) error {
	var b strings.Builder
	var pods []string
	for i, s := range failed {
		if i > 0 {
			b.WriteString("\n")
		}
		fmt.Fprintf(&b, "%s in namespace %s cannot become ready: %s\n", s.ref, namespace, s.message)
		for _, p := range s.problems {
			if p.Fatal {
				b.WriteString(p.Format("  "))
				if p.Pod != "" && !slices.Contains(pods, p.Pod) {
					pods = append(pods, p.Pod)
				}
			}
		}
	}
	b.WriteString("next steps:\n")
	for _, p := range pods {
		fmt.Fprintf(&b, "  kubectl -n %s describe pod %s\n", namespace, p)
	}
	fmt.Fprintf(&b, "  fix the cause and re-run the same install (it applies only what changed); kubectl apiproxy status -n %s shows the same diagnosis", namespace)
	return errors.New(b.String())
}

// timeoutError says which workloads were not ready and why, from the caches: no request at the
// deadline, so nothing here can fail on an expired context.
func timeoutError(namespace string, timeout time.Duration, states []workloadState) error {
	var b strings.Builder
	fmt.Fprintf(&b, "timed out after %s waiting for the agents in namespace %s; not ready:", timeout, namespace)
	for _, s := range states {
		if s.done {
			continue
		}
		fmt.Fprintf(&b, "\n  - %s: %s", s.ref, s.message)
		for _, p := range s.problems {
			fmt.Fprintf(&b, "\n      %s", p.Summary())
		}
	}
	fmt.Fprintf(&b, "\nnext steps:\n  kubectl -n %[1]s get pods -l %[2]s=%[3]s -o wide\n  kubectl -n %[1]s describe pods -l %[2]s=%[3]s\n  kubectl -n %[1]s get events --sort-by=.lastTimestamp\n  then re-run with a longer --timeout, or check with: kubectl apiproxy status -n %[1]s", namespace, LabelPartOf, PartOf)
	return errors.New(b.String())
}
