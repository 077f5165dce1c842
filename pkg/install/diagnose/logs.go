package diagnose

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
)

// LogLines is how many of a failing container's last log lines a Problem carries.
const LogLines = 10

// logTimeout bounds one log read: logs come through the kubelet, which may be the broken part.
const logTimeout = 5 * time.Second

// Logs reads a container's last lines (of its previous run when previous is set).
type Logs interface {
	Tail(ctx context.Context, namespace, pod, container string, previous bool, lines int64) ([]string, error)
}

// ClientLogs reads logs through the API server (pods/log, served by the pod's kubelet).
func ClientLogs(cs kubernetes.Interface) Logs { return clientLogs{cs} }

type clientLogs struct{ cs kubernetes.Interface }

func (c clientLogs) Tail(ctx context.Context, namespace, pod, container string, previous bool, lines int64) ([]string, error) {
	limit := int64(16 << 10)
	b, err := c.cs.CoreV1().Pods(namespace).GetLogs(pod, &corev1.PodLogOptions{
		Container: container, Previous: previous, TailLines: &lines, LimitBytes: &limit,
	}).DoRaw(ctx)
	if err != nil {
		return nil, err
	}
	b = bytes.TrimRight(b, "\n")
	if len(b) == 0 {
		return nil, nil
	}
	return strings.Split(string(b), "\n"), nil
}

// AddLogs fills, best effort, the last log lines of every fatal problem's container that has run
// (a crash, a failed init container): of its previous run first, else of the current one. A log
// that cannot be read leaves the reason in LogsError and never fails the diagnosis.
func AddLogs(ctx context.Context, logs Logs, namespace string, problems []Problem) {
	for i := range problems {
		p := &problems[i]
		if !p.Fatal || p.Container == "" || !p.ranBefore || logs == nil {
			continue
		}
		var lines []string
		var err error
		for _, previous := range []bool{true, false} {
			lctx, cancel := context.WithTimeout(ctx, logTimeout)
			lines, err = logs.Tail(lctx, namespace, p.Pod, p.Container, previous, LogLines)
			cancel()
			if err == nil && len(lines) > 0 {
				break
			}
		}
		switch {
		case len(lines) > 0:
			p.Logs = lines
		case err != nil:
			p.LogsError = fmt.Sprintf("not readable (%v): try kubectl -n %s logs %s -c %s --previous", firstLine(err.Error()), namespace, p.Pod, p.Container)
		default:
			p.LogsError = fmt.Sprintf("none returned: try kubectl -n %s logs %s -c %s --previous", namespace, p.Pod, p.Container)
		}
	}
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}
