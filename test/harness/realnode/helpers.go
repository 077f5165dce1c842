package realnode

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// LocalIP returns the n-th address of LocalCIDR (n >= 1): for addresses a test puts on the node,
// such as the node agent's --node-ip, which only ever reach the bridge.
func (c *Cluster) LocalIP(n int) string {
	_, ln, _ := net.ParseCIDR(c.LocalCIDR)
	ip := ln.IP.To4()
	for range n {
		ip = nextIP(ip)
	}
	return ip.String()
}

// AppPod is a pod running the test app image (test/images/app) with args, e.g. "serve", ":8080".
// It is never pulled (imagePullPolicy Never) and stops within a second.
func (c *Cluster) AppPod(name string, args ...string) *corev1.Pod {
	grace := int64(1)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: &grace,
			Containers:                    []corev1.Container{{Name: "app", Image: c.AppImage, ImagePullPolicy: corev1.PullNever, Args: args}},
		},
	}
}

// WaitPodReady waits up to timeout for the pod's Ready condition and returns the pod; the error
// message carries the container states.
func (c *Cluster) WaitPodReady(t testing.TB, namespace, name string, timeout time.Duration) *corev1.Pod {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cs := c.Clientset(t)
	var pod *corev1.Pod
	err := waitFor(ctx, fmt.Sprintf("pod %s/%s Ready", namespace, name), func() error {
		var err error
		pod, err = cs.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, cond := range pod.Status.Conditions {
			if cond.Type == corev1.PodReady && cond.Status == corev1.ConditionTrue {
				return nil
			}
		}
		return fmt.Errorf("phase %s, containers %+v", pod.Status.Phase, pod.Status.ContainerStatuses)
	})
	if err != nil {
		t.Fatal(err)
	}
	return pod
}
