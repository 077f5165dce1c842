package install

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
)

// Uninstall deletes every object carrying this install's labels (the webhook configuration first,
// the namespace last, and only if install created it) and returns them. A client dry run only lists.
//
// The node role's pods clean their node (address, rules, interface) when they stop and find their
// DaemonSet gone (agent node --cleanup-when-owner-deleted); they need their service account and
// Role for that question. So after deleting the DaemonSet, Uninstall waits, at most timeout, for
// its pods to go before deleting the rest, printing what it waits for to log. Pods still there at
// the timeout are named in the returned error (the rest is deleted anyway).
func Uninstall(ctx context.Context, c *Client, namespace string, dryRun DryRun, timeout time.Duration, log io.Writer) ([]*unstructured.Unstructured, error) {
	objs, err := listInstalled(ctx, c, namespace)
	if err != nil {
		return nil, err
	}
	if dryRun == DryRunClient {
		return objs, nil
	}
	// Background: the API server removes the object now (for the DaemonSet, that is the signal its
	// pods look for); the garbage collector then deletes the pods, and the kubelets stop them.
	policy := metav1.DeletePropagationBackground
	var deleted []*unstructured.Unstructured
	var lingering error
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
		if o.GetKind() == "DaemonSet" && o.GetName() == nodeDaemonSetName && dryRun == DryRunNone {
			lingering = waitNodePodsGone(ctx, c, namespace, o, timeout, log)
			if ctx.Err() != nil {
				return deleted, fmt.Errorf("interrupted while waiting for the node role's pods to stop; run uninstall again to delete the rest: %w", ctx.Err())
			}
		}
	}
	return deleted, lingering
}

// waitNodePodsGone watches the node role's pods until none is left or timeout passes.
func waitNodePodsGone(ctx context.Context, c *Client, namespace string, ds *unstructured.Unstructured, timeout time.Duration, log io.Writer) error {
	ip, iface := nodeAddress(ds)
	wctx, cancel := context.WithTimeout(ctx, timeout)
	f := informers.NewSharedInformerFactoryWithOptions(c.Typed, 0, informers.WithNamespace(namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = RoleSelector(namespace, RoleNode) }))
	inf := f.Core().V1().Pods().Informer()
	changed := make(chan struct{}, 1)
	notify := func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { notify() }, UpdateFunc: func(any, any) { notify() }, DeleteFunc: func(any) { notify() },
	})
	f.Start(wctx.Done())
	defer func() { cancel(); f.Shutdown() }()
	// The first list: after it, a change to the pods is the only thing worth looking again for.
	cache.WaitForCacheSync(wctx.Done(), inf.HasSynced)
	start := time.Now()
	printed := ""
	var left []string
	for {
		if inf.HasSynced() {
			left = left[:0]
			for _, o := range inf.GetStore().List() {
				p := o.(*corev1.Pod)
				where := p.Spec.NodeName
				if where == "" {
					where = "no node"
				}
				left = append(left, p.Name+" on "+where)
			}
			slices.Sort(left)
			if len(left) == 0 {
				if printed != "" {
					fmt.Fprintf(log, "the node role's pods are gone after %s (each removed %s from its node on the way out, unless it could not reach the API server)\n", time.Since(start).Round(time.Second), ip)
				}
				return nil
			}
			line := fmt.Sprintf("waiting (at most %s) for %d pod(s) of daemonset %s to stop; each removes %s, %s and its rules from its node: %s",
				timeout, len(left), ds.GetName(), ip, iface, strings.Join(left, ", "))
			if line != printed {
				fmt.Fprintln(log, line)
				printed = line
			}
		}
		select {
		case <-wctx.Done():
			if ctx.Err() != nil {
				return ctx.Err()
			}
			what := "the node role's pods could not be listed"
			if len(left) > 0 {
				what = "pods still running: " + strings.Join(left, ", ")
			}
			return fmt.Errorf("every object was deleted, but after %s %s; those nodes may keep %s on %s: "+
				"they are cleaned when the pods stop (a node whose kubelet is down keeps them); by hand on a node: "+
				"ip addr del %s dev %s; ip link del %s (if apiproxy created it); iptables-save | grep %s",
				timeout, what, ip, iface, ip, iface, iface, ip)
		case <-changed:
		}
	}
}

// nodeAddress reads --ip-address and --interface from the DaemonSet's node container.
func nodeAddress(ds *unstructured.Unstructured) (ip, iface string) {
	ip, iface = DefaultNodeIP, DefaultNodeInterface
	containers, _, _ := unstructured.NestedSlice(ds.Object, "spec", "template", "spec", "containers")
	for _, c := range containers {
		m, _ := c.(map[string]any)
		if m["name"] != "node" {
			continue
		}
		args, _, _ := unstructured.NestedStringSlice(m, "args")
		for i := 0; i+1 < len(args); i++ {
			switch args[i] {
			case "--ip-address":
				ip = args[i+1]
			case "--interface":
				iface = args[i+1]
			}
		}
	}
	return ip, iface
}
