package plugin

import (
	"context"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/apiproxy/apiproxy/pkg/install"
	"github.com/apiproxy/apiproxy/test/harness"
	"github.com/apiproxy/apiproxy/test/testnet"
)

// waitRun is `install --wait` running in the background, its stderr readable while it runs.
type waitRun struct {
	stderr *testnet.SyncBuffer
	done   chan error
}

func startWait(t *testing.T, kubeconfig string, args ...string) *waitRun {
	t.Helper()
	w := &waitRun{stderr: &testnet.SyncBuffer{}, done: make(chan error, 1)}
	out := &testnet.SyncBuffer{}
	root := NewRootCommand(genericiooptions.IOStreams{In: strings.NewReader(""), Out: out, ErrOut: w.stderr})
	root.SetArgs(append([]string{"--kubeconfig", kubeconfig}, args...))
	ctx, cancel := context.WithCancel(context.Background())
	go func() { w.done <- root.ExecuteContext(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-w.done
	})
	return w
}

// until waits (bounded) for stderr to contain s.
func (w *waitRun) until(t *testing.T, s string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(w.stderr.String(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("install --wait never printed %q; stderr:\n%s", s, w.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// result returns the command's error; the bound is far above anything the test drives, and far
// below the --timeout the runs use, so a result is never the deadline's.
func (w *waitRun) result(t *testing.T) error {
	t.Helper()
	select {
	case err := <-w.done:
		w.done <- err
		return err
	case <-time.After(90 * time.Second):
		t.Fatalf("install --wait did not return; stderr:\n%s", w.stderr.String())
		return nil
	}
}

// rollout plays the controllers: the workload observed, with `available` of its pods available.
func rollout(t *testing.T, cs kubernetes.Interface, ns, kind, name string, available int32) {
	t.Helper()
	ctx := context.Background()
	switch kind {
	case "Deployment":
		d, err := cs.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		want := *d.Spec.Replicas
		d.Status = appsv1.DeploymentStatus{ObservedGeneration: d.Generation, Replicas: want, UpdatedReplicas: want, ReadyReplicas: available, AvailableReplicas: available}
		if _, err := cs.AppsV1().Deployments(ns).UpdateStatus(ctx, d, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	case "DaemonSet":
		d, err := cs.AppsV1().DaemonSets(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		d.Status = appsv1.DaemonSetStatus{ObservedGeneration: d.Generation, DesiredNumberScheduled: 1, CurrentNumberScheduled: 1,
			UpdatedNumberScheduled: 1, NumberReady: available, NumberAvailable: available}
		if _, err := cs.AppsV1().DaemonSets(ns).UpdateStatus(ctx, d, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}

// agentPod creates a pod as the proxy Deployment's ReplicaSet would, then the kubelet's warning
// events about it, then the status the kubelet reports.
func agentPod(t *testing.T, cs kubernetes.Interface, ns, name string, status corev1.PodStatus, events ...corev1.Event) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	d, err := cs.AppsV1().Deployments(ns).Get(ctx, "apiproxy-proxy", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The Deployment's pod template, as its ReplicaSet would stamp it out.
	pod, err := cs.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: d.Spec.Template.Labels},
		Spec:       d.Spec.Template.Spec,
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range events {
		e.ObjectMeta = metav1.ObjectMeta{Name: name + "." + string(rune('a'+i)), Namespace: ns}
		e.InvolvedObject = corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: name, UID: pod.UID, APIVersion: "v1"}
		e.Type = corev1.EventTypeWarning
		e.Source = corev1.EventSource{Component: "kubelet", Host: "node-1"}
		e.FirstTimestamp, e.LastTimestamp = metav1.Now(), metav1.Now()
		if _, err := cs.CoreV1().Events(ns).Create(ctx, &e, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	pod.Status = status
	if pod, err = cs.CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	return pod
}

func waitingStatus(reason, msg string) corev1.PodStatus {
	return corev1.PodStatus{Phase: corev1.PodPending, ContainerStatuses: []corev1.ContainerStatus{{
		Name: "proxy", Image: "registry.example/agent:missing",
		State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: msg}}}}}
}

// TestInstallWait drives install --wait against a real API server, playing the controllers and
// the kubelet through the status subresource and events: it reports progress, fails at once with
// the pod, container, reason and hint when a pod cannot start, and says what was not ready at
// the deadline. Each case has its own namespace.
func TestInstallWait(t *testing.T) {
	cl := harness.Start(t, harness.Options{Name: "wait"})
	kc := cl.Kubeconfig
	cs := cl.Clientset(t)
	installIn := func(t *testing.T, ns string) []string {
		t.Helper()
		args := []string{"install", "-n", ns, "--roles", "proxy,node", "--image", "registry.example/agent:missing"}
		if _, errOut, err := runApiproxy(t, kc, args...); err != nil {
			t.Fatalf("install: %v\n%s", err, errOut)
		}
		rollout(t, cs, ns, "DaemonSet", "apiproxy-node", 1)
		rollout(t, cs, ns, "Deployment", "apiproxy-proxy", 0)
		return append(args, "--wait", "--timeout", "5m")
	}
	notTheDeadline := func(t *testing.T, err error) {
		t.Helper()
		if err == nil {
			t.Fatal("install --wait succeeded")
		}
		if msg := err.Error(); strings.Contains(msg, "timed out") || strings.Contains(msg, "rate limiter") {
			t.Fatalf("install --wait waited for the deadline instead of saying at once what is wrong:\n%s", msg)
		}
	}

	t.Run("success with progress", func(t *testing.T) {
		ns := "wait-ok"
		w := startWait(t, kc, installIn(t, ns)...)
		w.until(t, `daemonset apiproxy-node: daemon set "apiproxy-node" successfully rolled out`)
		w.until(t, `waiting for deployment apiproxy-proxy: Waiting for deployment "apiproxy-proxy" rollout to finish: 0 of 2 updated replicas are available`)
		rollout(t, cs, ns, "Deployment", "apiproxy-proxy", 1)
		w.until(t, "1 of 2 updated replicas are available")
		rollout(t, cs, ns, "Deployment", "apiproxy-proxy", 2)
		if err := w.result(t); err != nil {
			t.Fatalf("install --wait: %v\n%s", err, w.stderr.String())
		}
		for _, want := range []string{`deployment apiproxy-proxy: deployment "apiproxy-proxy" successfully rolled out`, "proxy,node ready in namespace wait-ok"} {
			if !strings.Contains(w.stderr.String(), want) {
				t.Errorf("stderr lacks %q:\n%s", want, w.stderr.String())
			}
		}
	})

	t.Run("image pull failure", func(t *testing.T) {
		ns := "wait-pull"
		w := startWait(t, kc, installIn(t, ns)...)
		w.until(t, "waiting for deployment apiproxy-proxy")
		agentPod(t, cs, ns, "apiproxy-proxy-7c9d-x1", waitingStatus("ImagePullBackOff", `Back-off pulling image "registry.example/agent:missing"`),
			corev1.Event{Reason: "Failed", Message: `Failed to pull image "registry.example/agent:missing": registry.example/agent:missing: not found`, Count: 3},
			corev1.Event{Reason: "BackOff", Message: `Back-off pulling image "registry.example/agent:missing"`, Count: 5})
		err := w.result(t)
		notTheDeadline(t, err)
		for _, want := range []string{
			"deployment apiproxy-proxy in namespace wait-pull cannot become ready",
			`pod apiproxy-proxy-7c9d-x1 container proxy: ImagePullBackOff: Back-off pulling image "registry.example/agent:missing"`,
			`Failed: Failed to pull image "registry.example/agent:missing": registry.example/agent:missing: not found (x3)`,
			"hint: the nodes cannot pull registry.example/agent:missing",
			"kubectl -n wait-pull describe pod apiproxy-proxy-7c9d-x1",
		} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error lacks %q:\n%s", want, err)
			}
		}

		// status tells the same story, from the same code.
		out, _, err := runApiproxy(t, kc, "status", "-n", ns)
		if err != nil || !strings.Contains(out, "proxy problems:") || !strings.Contains(out, "pod apiproxy-proxy-7c9d-x1 container proxy: ImagePullBackOff") ||
			!strings.Contains(out, "hint: the nodes cannot pull") {
			t.Errorf("status: %v\n%s", err, out)
		}
		out, _, err = runApiproxy(t, kc, "status", "-n", ns, "-o", "json")
		var r install.Report
		if err != nil || json.Unmarshal([]byte(out), &r) != nil || len(r.Roles[0].Problems) != 1 ||
			r.Roles[0].Problems[0].Reason != "ImagePullBackOff" || !r.Roles[0].Problems[0].Fatal || len(r.Roles[0].Problems[0].Events) != 2 {
			t.Errorf("status -o json problems: %v\n%s", err, out)
		}
	})

	t.Run("crash loop", func(t *testing.T) {
		ns := "wait-crash"
		w := startWait(t, kc, installIn(t, ns)...)
		w.until(t, "waiting for deployment apiproxy-proxy")
		st := waitingStatus("CrashLoopBackOff", "back-off 20s restarting failed container=proxy")
		st.ContainerStatuses[0].RestartCount = 3
		st.ContainerStatuses[0].LastTerminationState.Terminated = &corev1.ContainerStateTerminated{ExitCode: 2, Reason: "Error",
			StartedAt: metav1.Now(), FinishedAt: metav1.Now()}
		agentPod(t, cs, ns, "apiproxy-proxy-7c9d-x2", st, corev1.Event{Reason: "BackOff", Message: "Back-off restarting failed container proxy", Count: 4})
		err := w.result(t)
		notTheDeadline(t, err)
		// No kubelet serves logs here: the log read gives nothing and says how to get them (the
		// real-node e2e shows the lines themselves; the formatting is unit-tested in
		// pkg/install/diagnose).
		for _, want := range []string{
			"pod apiproxy-proxy-7c9d-x2 container proxy: CrashLoopBackOff: back-off 20s restarting failed container=proxy; last run: exit code 2 (Error)",
			"BackOff: Back-off restarting failed container proxy (x4)",
			"logs: ",
			"kubectl -n wait-crash logs apiproxy-proxy-7c9d-x2 -c proxy --previous",
		} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error lacks %q:\n%s", want, err)
			}
		}
	})

	t.Run("unschedulable", func(t *testing.T) {
		ns := "wait-unsched"
		w := startWait(t, kc, installIn(t, ns)...)
		w.until(t, "waiting for deployment apiproxy-proxy")
		agentPod(t, cs, ns, "apiproxy-proxy-7c9d-x3", corev1.PodStatus{Phase: corev1.PodPending, Conditions: []corev1.PodCondition{{
			Type: corev1.PodScheduled, Status: corev1.ConditionFalse, Reason: corev1.PodReasonUnschedulable,
			Message:            "0/1 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}.",
			LastTransitionTime: metav1.NewTime(time.Now().Add(-time.Minute)),
		}}}, corev1.Event{Reason: "FailedScheduling", Message: "0/1 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}."})
		err := w.result(t)
		notTheDeadline(t, err)
		for _, want := range []string{
			"pod apiproxy-proxy-7c9d-x3: Unschedulable: 0/1 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}.",
			"FailedScheduling: 0/1 nodes",
			"hint: no node fits",
		} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error lacks %q:\n%s", want, err)
			}
		}
	})

	t.Run("deadline", func(t *testing.T) {
		ns := "wait-deadline"
		args := installIn(t, ns)
		// A new generation no controller observes, and a pod still being created: not failing, not ready.
		rollout(t, cs, ns, "Deployment", "apiproxy-proxy", 0)
		agentPod(t, cs, ns, "apiproxy-proxy-7c9d-x4", waitingStatus("ErrImagePull", "dial tcp: i/o timeout"))
		args[len(args)-1] = "2s"
		_, errOut, err := runApiproxy(t, kc, args...)
		if err == nil {
			t.Fatal("install --wait succeeded")
		}
		for _, want := range []string{
			"timed out after 2s waiting for the agents in namespace wait-deadline; not ready:",
			`- deployment apiproxy-proxy: Waiting for deployment "apiproxy-proxy" rollout to finish: 0 of 2 updated replicas are available`,
			"pod apiproxy-proxy-7c9d-x4 container proxy: ErrImagePull: dial tcp: i/o timeout",
			"re-run with a longer --timeout",
		} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error lacks %q:\n%s", want, err)
			}
		}
		if strings.Contains(err.Error(), "daemonset") || strings.Contains(err.Error(), "rate limiter") {
			t.Errorf("the deadline error names a ready workload or a client error:\n%s", err)
		}
		if !strings.Contains(errOut, "  pod apiproxy-proxy-7c9d-x4 container proxy: ErrImagePull") {
			t.Errorf("progress lacks the pod's state:\n%s", errOut)
		}
	})

	t.Run("no permission to watch", func(t *testing.T) {
		cfg := rest.CopyConfig(cl.Config)
		cfg.Impersonate = rest.ImpersonationConfig{UserName: "nobody"}
		c, err := install.NewClient(cfg)
		if err != nil {
			t.Fatal(err)
		}
		err = install.Wait(context.Background(), c, "wait-ok", []install.Role{install.RoleProxy}, 5*time.Minute, io.Discard)
		if err == nil || !strings.Contains(err.Error(), "--wait cannot watch") || !strings.Contains(err.Error(), "forbidden") {
			t.Errorf("wait without permissions: %v", err)
		}
	})

	t.Run("uninstall waits for the node pods", func(t *testing.T) { testUninstallWaitsForNodePods(t, cl) })
}

// nodePod is a pod of the node DaemonSet on node-1, as its controller would create it.
func nodePod(t *testing.T, cs kubernetes.Interface, ns, name string) {
	t.Helper()
	no := false
	_, err := cs.CoreV1().Pods(ns).Create(context.Background(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
			install.LabelPartOf: install.PartOf, install.LabelInstallNamespace: ns, install.LabelComponent: "node"}},
		Spec: corev1.PodSpec{ServiceAccountName: "apiproxy-node", AutomountServiceAccountToken: &no, NodeName: "node-1",
			Containers: []corev1.Container{{Name: "node", Image: "registry.example/agent:v1"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

// uninstall deletes the DaemonSet, then waits for its pods (they clean their nodes when they find it
// gone, and need their Role for that) before deleting the Role and the rest; the wait is bounded.
func testUninstallWaitsForNodePods(t *testing.T, cl *harness.Cluster) {
	kc := cl.Kubeconfig
	cs := cl.Clientset(t)
	ctx := context.Background()
	for _, ns := range []string{"uninst-a", "uninst-b"} {
		if _, errOut, err := runApiproxy(t, kc, "install", "-n", ns, "--roles", "node", "--node-ip", "10.96.0.7"); err != nil {
			t.Fatalf("install: %v\n%s", err, errOut)
		}
		nodePod(t, cs, ns, "apiproxy-node-x1")
	}

	// The pod goes (the garbage collector and the kubelet, played here): uninstall finishes.
	w := startWait(t, kc, "uninstall", "-n", "uninst-a", "--timeout", "5m")
	w.until(t, "waiting (at most 5m0s) for 1 pod(s) of daemonset apiproxy-node to stop; each removes 10.96.0.7, apiproxy0 and its rules from its node: apiproxy-node-x1 on node-1")
	if _, err := cs.AppsV1().DaemonSets("uninst-a").Get(ctx, "apiproxy-node", metav1.GetOptions{}); err == nil {
		t.Error("the DaemonSet still exists while uninstall waits for its pods: they would keep the address")
	}
	if _, err := cs.RbacV1().Roles("uninst-a").Get(ctx, "apiproxy-node", metav1.GetOptions{}); err != nil {
		t.Errorf("the pods' Role is gone while they still have to ask about their DaemonSet: %v", err)
	}
	zero := int64(0)
	if err := cs.CoreV1().Pods("uninst-a").Delete(ctx, "apiproxy-node-x1", metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	if err := w.result(t); err != nil {
		t.Fatalf("uninstall: %v\n%s", err, w.stderr.String())
	}
	w.until(t, "the node role's pods are gone after")
	if _, err := cs.RbacV1().Roles("uninst-a").Get(ctx, "apiproxy-node", metav1.GetOptions{}); err == nil {
		t.Error("uninstall left the Role")
	}

	// A pod that never goes (its node is down): bounded, named, and the rest is deleted anyway.
	_, errOut, err := runApiproxy(t, kc, "uninstall", "-n", "uninst-b", "--timeout", "1s")
	if err == nil || !strings.Contains(err.Error(), "pods still running: apiproxy-node-x1 on node-1") ||
		!strings.Contains(err.Error(), "ip addr del 10.96.0.7 dev apiproxy0") {
		t.Errorf("uninstall with a pod that stays: err = %v\n%s", err, errOut)
	}
	for _, get := range []func() error{
		func() error {
			_, err := cs.RbacV1().Roles("uninst-b").Get(ctx, "apiproxy-node", metav1.GetOptions{})
			return err
		},
		func() error {
			_, err := cs.CoreV1().ServiceAccounts("uninst-b").Get(ctx, "apiproxy-node", metav1.GetOptions{})
			return err
		},
	} {
		if err := get(); err == nil {
			t.Error("uninstall stopped deleting at the timeout")
		}
	}
}
