package install

import (
	"context"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// Uninstall deletes every object carrying this install's labels (the webhook configuration first,
// the namespace last, and only if install created it) and returns them. A client dry run only lists.
func Uninstall(ctx context.Context, c *Client, namespace string, dryRun DryRun) ([]*unstructured.Unstructured, error) {
	objs, err := listInstalled(ctx, c, namespace)
	if err != nil {
		return nil, err
	}
	if dryRun == DryRunClient {
		return objs, nil
	}
	// Background: the API server removes the object now; without a garbage collector (or before it
	// runs) pods go with their namespace, or with their ReplicaSet when the collector gets to it.
	policy := metav1.DeletePropagationBackground
	var deleted []*unstructured.Unstructured
	for _, o := range objs {
		ri, m, err := c.resourceFor(o.GroupVersionKind(), o.GetNamespace())
		if err != nil {
			return deleted, err
		}
		err = ri.Delete(ctx, o.GetName(), metav1.DeleteOptions{PropagationPolicy: &policy, DryRun: dryRun.apiDryRun()})
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return deleted, fmt.Errorf("deleting %s: %w", objectRef(m.Resource.GroupResource(), o), err)
		}
		deleted = append(deleted, o)
	}
	return deleted, nil
}
