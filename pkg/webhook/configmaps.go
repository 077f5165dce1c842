package webhook

import (
	"context"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// NewConfigMapReader reads ConfigMaps with one GET each, bounded by timeout: only pods whose
// containers name a ConfigMap in envFrom cost a read, and a slow API server leaves those
// containers alone (with a warning) rather than delaying the pod past the webhook's own timeout.
func NewConfigMapReader(cs kubernetes.Interface, timeout time.Duration) ConfigMapReader {
	return &apiConfigMaps{cs: cs, timeout: timeout}
}

type apiConfigMaps struct {
	cs      kubernetes.Interface
	timeout time.Duration
}

func (r *apiConfigMaps) ConfigMapData(ctx context.Context, namespace, name string) (map[string]string, error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	cm, err := r.cs.CoreV1().ConfigMaps(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	return cm.Data, nil
}
