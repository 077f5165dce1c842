package install

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// Wait polls the install's status until every selected role is ready, printing each change of a
// workload's state to log; on timeout it returns an error carrying what is still missing and what to
// look at.
func Wait(ctx context.Context, c *Client, namespace string, roles []Role, timeout, interval time.Duration, log io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	last := map[string]string{}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	var pending []ObjectStatus
	for {
		r, err := GetStatus(ctx, c, namespace)
		if err != nil && ctx.Err() == nil {
			return err
		}
		if err == nil {
			pending = pendingObjects(r, roles)
			for _, o := range pending {
				key := o.Kind + "/" + o.Name
				if last[key] != o.Message {
					fmt.Fprintf(log, "waiting for %s %s: %s\n", strings.ToLower(o.Kind), o.Name, o.Message)
					last[key] = o.Message
				}
			}
			if len(pending) == 0 {
				fmt.Fprintf(log, "%s ready in namespace %s\n", rolesString(roles), namespace)
				return nil
			}
		}
		select {
		case <-ctx.Done():
			if ctx.Err() == context.Canceled {
				return fmt.Errorf("interrupted while waiting for the agents in namespace %s; check later with: kubectl apiproxy status -n %s", namespace, namespace)
			}
			return timeoutError(context.WithoutCancel(ctx), c, namespace, timeout, pending)
		case <-tick.C:
		}
	}
}

func pendingObjects(r *Report, roles []Role) []ObjectStatus {
	var out []ObjectStatus
	for _, rs := range r.Roles {
		if !slices.Contains(roles, rs.Role) {
			continue
		}
		if !rs.Installed {
			out = append(out, ObjectStatus{Kind: "Role", Name: string(rs.Role), Message: "no object installed"})
		}
		for _, o := range rs.Objects {
			if !o.Ready {
				out = append(out, o)
			}
		}
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

// timeoutError says what is not ready and, from the pods, why, with the commands to dig further.
func timeoutError(ctx context.Context, c *Client, namespace string, timeout time.Duration, pending []ObjectStatus) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var b strings.Builder
	fmt.Fprintf(&b, "timed out after %s waiting for the agents in namespace %s:", timeout, namespace)
	for _, o := range pending {
		fmt.Fprintf(&b, "\n  - %s %s: %s", strings.ToLower(o.Kind), o.Name, o.Message)
		if strings.Contains(o.Message, "not yet observed") {
			b.WriteString(" (is kube-controller-manager running?)")
		}
	}
	for _, line := range podProblems(ctx, c, namespace) {
		b.WriteString("\n  - " + line)
	}
	fmt.Fprintf(&b, "\nnext steps:\n  kubectl -n %[1]s get pods -l %[2]s=%[3]s -o wide\n  kubectl -n %[1]s describe pods -l %[2]s=%[3]s\n  kubectl -n %[1]s get events --sort-by=.lastTimestamp\n  then re-run with a longer --timeout, or check with: kubectl apiproxy status -n %[1]s", namespace, LabelPartOf, PartOf)
	return errors.New(b.String())
}

// podProblems explains pods that do not come up: image pulls, scheduling, crashes.
func podProblems(ctx context.Context, c *Client, namespace string) []string {
	ri, _, err := c.resourceFor(gvkPod, namespace)
	if err != nil {
		return nil
	}
	list, err := ri.List(ctx, metav1.ListOptions{LabelSelector: Selector(namespace)})
	if err != nil {
		return nil
	}
	if len(list.Items) == 0 {
		return []string{"no agent pods exist: check the workloads' events (quota, Pod Security admission of the namespace, the node role needs privileged pods)"}
	}
	var out []string
	for _, pod := range list.Items {
		conds, _, _ := unstructured.NestedSlice(pod.Object, "status", "conditions")
		for _, cond := range conds {
			m, _ := cond.(map[string]any)
			if m["type"] == "PodScheduled" && m["status"] == "False" {
				out = append(out, fmt.Sprintf("pod %s unschedulable: %v", pod.GetName(), m["message"]))
			}
		}
		for _, field := range []string{"initContainerStatuses", "containerStatuses"} {
			statuses, _, _ := unstructured.NestedSlice(pod.Object, "status", field)
			for _, s := range statuses {
				m, _ := s.(map[string]any)
				reason, _, _ := unstructured.NestedString(m, "state", "waiting", "reason")
				msg, _, _ := unstructured.NestedString(m, "state", "waiting", "message")
				if reason == "" || reason == "PodInitializing" || reason == "ContainerCreating" {
					continue
				}
				hint := ""
				switch reason {
				case "ErrImagePull", "ImagePullBackOff", "InvalidImageName":
					hint = " (is --image reachable from the nodes? an image pull secret needed?)"
				case "CrashLoopBackOff":
					hint = fmt.Sprintf(" (kubectl -n %s logs %s -c %v --previous)", namespace, pod.GetName(), m["name"])
				}
				out = append(out, fmt.Sprintf("pod %s container %v: %s %s%s", pod.GetName(), m["name"], reason, msg, hint))
			}
		}
	}
	return out
}
