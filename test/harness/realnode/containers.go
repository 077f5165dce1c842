package realnode

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ContainerPID returns the host PID of a running container's first process (its entrypoint), from
// the pod's status (the container ID) and containerd's task list: what `kill -9` of "the agent" hits.
func (c *Cluster) ContainerPID(t testing.TB, namespace, pod, container string) int {
	t.Helper()
	p, err := c.Clientset(t).CoreV1().Pods(namespace).Get(context.Background(), pod, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	id := ""
	for _, st := range p.Status.ContainerStatuses {
		if st.Name == container && st.State.Running != nil {
			id = strings.TrimPrefix(st.ContainerID, "containerd://")
		}
	}
	if id == "" {
		t.Fatalf("container %s of pod %s/%s is not running: %+v", container, namespace, pod, p.Status.ContainerStatuses)
	}
	// TASK  PID  STATUS
	for _, line := range strings.Split(c.Ctr(t, "-n", "k8s.io", "tasks", "ls"), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == id {
			pid, err := strconv.Atoi(f[1])
			if err != nil {
				t.Fatalf("ctr tasks ls: %q", line)
			}
			return pid
		}
	}
	t.Fatalf("no containerd task %s (container %s of pod %s/%s)", id, container, namespace, pod)
	return 0
}

// RestartContainerd stops the node's containerd (SIGTERM, as a service manager does) and starts it
// again, returning when it answers. The containers keep running under their shims meanwhile; the
// kubelet reconnects by itself. It returns how long containerd was away.
func (c *Cluster) RestartContainerd(t testing.TB) time.Duration {
	t.Helper()
	start := time.Now()
	if err := stopRecorded("containerd", 10*time.Second); err != nil {
		t.Fatalf("stopping containerd: %v", err)
	}
	if err := c.procs.start("containerd", c.containerdCmd()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := waitFor(ctx, "containerd after its restart", func() error { _, err := c.ctr("version"); return err }); err != nil {
		t.Fatal(fmt.Errorf("%w\n%s", err, tail(c.Log("containerd"), 2000)))
	}
	return time.Since(start)
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}
