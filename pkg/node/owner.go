package node

import (
	"context"
	"fmt"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/kubernetes"
)

// Owner is the DaemonSet whose pods keep the address. When it is gone, or being deleted, the
// address has no keeper any more: the user uninstalled, and the node must be left clean. While it
// exists, a stopping agent is one pod of a rolling update or a restart, and the next pod takes over
// the address without a gap.
type Owner struct {
	Namespace, Name string
	Client          kubernetes.Interface
}

// ParseOwner reads "NAMESPACE/NAME".
func ParseOwner(s string) (namespace, name string, err error) {
	namespace, name, ok := strings.Cut(s, "/")
	if !ok || len(validation.IsDNS1123Label(namespace)) > 0 || len(validation.IsDNS1123Subdomain(name)) > 0 {
		return "", "", fmt.Errorf("%q is not NAMESPACE/NAME of a DaemonSet, e.g. apiproxy-system/apiproxy-node", s)
	}
	return namespace, name, nil
}

func (o Owner) String() string { return "daemonset " + o.Namespace + "/" + o.Name }

// Deleted asks the API server whether the DaemonSet is gone or being deleted. An error means the
// question could not be answered (API server unreachable, token refused, no permission): callers
// keep the address then, since removing it under running pods is the worse mistake.
func (o Owner) Deleted(ctx context.Context) (bool, error) {
	ds, err := o.Client.AppsV1().DaemonSets(o.Namespace).Get(ctx, o.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return true, nil
	case err != nil:
		return false, err
	}
	return ds.DeletionTimestamp != nil, nil
}
