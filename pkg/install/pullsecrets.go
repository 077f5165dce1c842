package install

import (
	"context"
	"fmt"
	"io"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// warnPullSecrets says which --image-pull-secret is missing or is not registry credentials. Only a
// warning: the Secret may come later (the kubelet reads it again on its next pull attempt), and a
// namespace this install creates cannot hold it yet.
func warnPullSecrets(ctx context.Context, c *Client, o Options, log io.Writer) {
	for _, name := range o.ImagePullSecrets {
		obj, err := c.get(ctx, gvkSecret, o.Namespace, name)
		switch {
		case err != nil:
			fmt.Fprintf(log, "Warning: cannot check --image-pull-secret %s: %v\n", name, err)
		case obj == nil:
			fmt.Fprintf(log, "Warning: --image-pull-secret %s: no such Secret in namespace %s yet; the pods cannot pull until it exists: kubectl -n %s create secret docker-registry %s --docker-server=HOST --docker-username=USER --docker-password=TOKEN\n",
				name, o.Namespace, o.Namespace, name)
		default:
			typ, _, _ := unstructured.NestedString(obj, "type")
			if typ != "kubernetes.io/dockerconfigjson" && typ != "kubernetes.io/dockercfg" {
				fmt.Fprintf(log, "Warning: --image-pull-secret %s has type %q: the kubelet only reads registry credentials from kubernetes.io/dockerconfigjson (kubectl create secret docker-registry) or kubernetes.io/dockercfg Secrets\n", name, typ)
			}
		}
	}
}
