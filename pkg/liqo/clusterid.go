package liqo

import (
	"context"
	"fmt"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// clusterID reads a cluster's own ID from Liqo's cluster-ID ConfigMap. flag names the flag that
// overrides it, for the messages. It also returns where the ID was found.
func clusterID(ctx context.Context, c *Cluster, namespace, flag string) (id, source string, err error) {
	list, err := c.Dynamic.Resource(configMapResource).Namespace(namespace).List(ctx, metav1.ListOptions{LabelSelector: ClusterIDSelector})
	if err != nil {
		return "", "", &Error{Kind: ErrClusterID, Msg: fmt.Sprintf("reading the cluster ID ConfigMap of %s (namespace %s): pass %s", c.Name, namespace, flag), Err: err}
	}
	switch len(list.Items) {
	case 0:
		return "", "", fail(ErrClusterID, "no ConfigMap labelled %s in namespace %s of %s, so its Liqo cluster ID is unknown: is Liqo installed there (check --liqo-namespace)? or pass %s",
			ClusterIDSelector, namespace, c.Name, flag)
	case 1:
	default:
		var names []string
		for _, cm := range list.Items {
			names = append(names, cm.GetName())
		}
		return "", "", fail(ErrClusterID, "several ConfigMaps labelled %s in namespace %s of %s (%s): pass %s",
			ClusterIDSelector, namespace, c.Name, strings.Join(names, ", "), flag)
	}
	cm := list.Items[0]
	id, _, _ = unstructured.NestedString(cm.Object, "data", ClusterIDKey)
	if strings.TrimSpace(id) == "" {
		return "", "", fail(ErrClusterID, "ConfigMap %s/%s of %s has no %s key: pass %s", namespace, cm.GetName(), c.Name, ClusterIDKey, flag)
	}
	return strings.TrimSpace(id), fmt.Sprintf("ConfigMap %s/%s in %s", namespace, cm.GetName(), c.Name), nil
}
