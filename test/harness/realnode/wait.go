package realnode

import (
	"context"
	"fmt"
	"net"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// waitReady waits for what every test needs: the node Ready, the kubernetes Service reachable
// through kube-proxy's rules, and the default ServiceAccount (created by the controller-manager a
// few seconds after it starts).
func (c *Cluster) waitReady(ctx context.Context, cs kubernetes.Interface) error {
	if err := waitFor(ctx, "node "+c.NodeName+" Ready", func() error {
		n, err := cs.CoreV1().Nodes().Get(ctx, c.NodeName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, cond := range n.Status.Conditions {
			if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
				return nil
			}
		}
		return fmt.Errorf("node not Ready")
	}); err != nil {
		return err
	}
	if err := waitFor(ctx, "the kubernetes Service through kube-proxy", func() error {
		conn, err := net.DialTimeout("tcp", net.JoinHostPort(c.KubernetesServiceIP, "443"), time.Second)
		if err == nil {
			conn.Close()
		}
		return err
	}); err != nil {
		return err
	}
	return waitFor(ctx, "the default ServiceAccount", func() error {
		_, err := cs.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return err
	})
}
