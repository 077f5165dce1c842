package liqo

import (
	"errors"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// Kinds of failure, for errors.Is. The messages themselves name the object and what to do.
var (
	// ErrNotServed: the cluster does not serve the resource (the CRD is not installed).
	ErrNotServed = errors.New("resource not served")
	// ErrNotFound: the object (or the ConfigMap of the cluster ID) does not exist.
	ErrNotFound = errors.New("object not found")
	// ErrStatusNotSet: Liqo has not filled the object's status yet.
	ErrStatusNotSet = errors.New("status not set")
	// ErrNoConfiguration: no Configuration in the consumer for the provider's cluster ID.
	ErrNoConfiguration = errors.New("no configuration for the cluster ID")
	// ErrSeveralConfigurations: more than one Configuration for the provider's cluster ID.
	ErrSeveralConfigurations = errors.New("several configurations for the cluster ID")
	// ErrNotReady: the Configuration's NetworkCIDRsConfigured condition is not True, or stale.
	ErrNotReady = errors.New("configuration not ready")
	// ErrInvalidValue: an address or CIDR that does not parse, or a field of an unexpected type.
	ErrInvalidValue = errors.New("invalid value")
	// ErrSeveralIPs: more than one IP object of kubectl apiproxy, and no --name to pick one.
	ErrSeveralIPs = errors.New("several IP objects of kubectl apiproxy")
	// ErrClusterID: a cluster ID is missing, ambiguous or does not match the object.
	ErrClusterID = errors.New("cluster ID problem")
)

// Error is a failure of one Kind with a message for people.
type Error struct {
	Kind error
	Msg  string
	Err  error // the underlying error, if any
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Msg + ": " + e.Err.Error()
	}
	return e.Msg
}

// Unwrap lets errors.Is match both the Kind and the underlying error.
func (e *Error) Unwrap() []error {
	if e.Err != nil {
		return []error{e.Kind, e.Err}
	}
	return []error{e.Kind}
}

func fail(kind error, format string, args ...any) *Error {
	return &Error{Kind: kind, Msg: fmt.Sprintf(format, args...)}
}

// servedError turns a NotFound from reading gvr into ErrNotServed when discovery confirms the
// cluster does not serve gvr at all; it returns nil when gvr is served (the object is missing).
func servedError(c *Cluster, gvr schema.GroupVersionResource, kind, hint string) error {
	if c.Discovery == nil {
		return nil
	}
	list, err := c.Discovery.ServerResourcesForGroupVersion(gvr.GroupVersion().String())
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("discovering %s in %s: %w", gvr.GroupVersion(), c.Name, err)
	}
	if list != nil {
		for _, r := range list.APIResources {
			if r.Name == gvr.Resource {
				return nil
			}
		}
	}
	return fail(ErrNotServed, "%s (%s.%s/%s) is not served by %s: is Liqo networking installed? %s",
		kind, gvr.Resource, gvr.Group, gvr.Version, c.Name, hint)
}
