package install

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/netip"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
)

// OwnIPResourceName is our IP's name when Liqo's own proxy already holds IPResourceName.
const OwnIPResourceName = "apiproxy"

func decodeB64(s string) ([]byte, error) { return base64.StdEncoding.DecodeString(s) }

// decideIP says whether install must create its IP resource and under which name, failing (true)
// or explaining and skipping (auto) when it cannot. The name is api-server-proxy, Liqo's default,
// unless that object exists and is not ours (Liqo's own API server proxy): then ours is
// OwnIPResourceName beside it, so the fabric remaps our proxy too and get-ip finds it by label. An IP
// this install already created keeps its name.
func decideIP(ctx context.Context, c *Client, o Options, log io.Writer) (string, bool, error) {
	if o.CreateIP == CreateIPFalse {
		return "", false, nil
	}
	strict := o.CreateIP == CreateIPTrue
	skip := func(format string, args ...any) (string, bool, error) {
		msg := fmt.Sprintf(format, args...)
		if strict {
			return "", false, fmt.Errorf("--create-ip-resource=true: %s", msg)
		}
		fmt.Fprintf(log, "%s: skipping Liqo's IP resource (--create-ip-resource=auto)\n", msg)
		return "", false, nil
	}
	served, err := c.IPCRDServed()
	if err != nil {
		return "", false, err
	}
	if !served {
		return skip("Liqo's IP CRD (%s) is not served by this cluster; install Liqo first, or use --create-ip-resource=false", IPCRDName)
	}
	if !o.Has(RoleProxy) {
		svc, err := c.get(ctx, gvkService, o.Namespace, proxyServiceName)
		if err != nil {
			return "", false, err
		}
		if svc == nil {
			return skip("the proxy Service %s/%s does not exist; add proxy to --roles", o.Namespace, proxyServiceName)
		}
	}
	ns, err := c.get(ctx, gvkNamespace, "", o.LiqoNamespace)
	if err != nil {
		return "", false, err
	}
	if ns == nil {
		return skip("the Liqo namespace %s does not exist; point --liqo-namespace at the namespace Liqo is installed in", o.LiqoNamespace)
	}
	ours, err := listKind(ctx, c, gvkIP, o.Namespace)
	if err != nil {
		return "", false, err
	}
	for _, ip := range ours {
		if ip.GetNamespace() == o.LiqoNamespace {
			return ip.GetName(), true, nil
		}
	}
	for _, name := range []string{IPResourceName, OwnIPResourceName} {
		existing, err := c.get(ctx, gvkIP, o.LiqoNamespace, name)
		if err != nil {
			return "", false, err
		}
		if existing == nil {
			return name, true, nil
		}
		if ownedByUs(existing, o.Namespace) {
			return name, true, nil
		}
		fmt.Fprintf(log, "IP %s/%s exists and was not created by this install (Liqo's own API server proxy?): leaving it alone\n", o.LiqoNamespace, name)
	}
	return skip("IPs %s/%s and %s/%s both exist and neither was created by this install", o.LiqoNamespace, IPResourceName, o.LiqoNamespace, OwnIPResourceName)
}

// serviceIPv4 is the proxy Service's address for Liqo's IP object, whose spec.ip is IPv4 only: the
// ClusterIP, or a dual-stack Service's IPv4 one. An IPv6-only Service yields its IPv6 ClusterIP
// (applyIP explains); "" when the Service has none yet.
func serviceIPv4(svc map[string]any) string {
	ips, _, _ := unstructured.NestedStringSlice(svc, "spec", "clusterIPs")
	for _, ip := range ips {
		if a, err := netip.ParseAddr(ip); err == nil && a.Is4() {
			return ip
		}
	}
	ip, _, _ := unstructured.NestedString(svc, "spec", "clusterIP")
	return ip
}

// applyIP creates or updates our IP object (named by decideIP) with spec.ip = the proxy Service
// ClusterIP. Liqo's IP CRD makes spec.ip (and status.ip, status.cidr) immutable, so an object of ours
// for another address (the Service was recreated) is replaced: deleted, created anew, and, with
// o.IPWait, waited for until Liqo remaps it. An IPv6-only Service gets no IP object: the CRD holds
// IPv4 only.
func applyIP(ctx context.Context, c *Client, o Options, name, clusterIP string, dryRun DryRun, log io.Writer) (*unstructured.Unstructured, error) {
	if clusterIP == "" {
		svc, err := c.get(ctx, gvkService, o.Namespace, proxyServiceName)
		if err != nil {
			return nil, err
		}
		if svc != nil {
			clusterIP = serviceIPv4(svc)
		}
	}
	if clusterIP == "" || clusterIP == "None" {
		if dryRun == DryRunServer {
			fmt.Fprintf(log, "server dry run: the proxy Service has no ClusterIP yet, so IP %s/%s is not shown\n", o.LiqoNamespace, name)
			return nil, nil
		}
		return nil, fmt.Errorf("the proxy Service %s/%s has no ClusterIP: Liqo's IP resource needs one", o.Namespace, proxyServiceName)
	}
	existing, err := c.get(ctx, gvkIP, o.LiqoNamespace, name)
	if err != nil {
		return nil, fmt.Errorf("reading IP %s/%s: %w", o.LiqoNamespace, name, err)
	}
	// decideIP chose a free name or one of ours; never delete an object of someone else.
	if existing != nil && !ownedByUs(existing, o.Namespace) {
		return nil, fmt.Errorf("IP %s/%s exists and was not created by this install: leaving it alone", o.LiqoNamespace, name)
	}
	if a, err := netip.ParseAddr(clusterIP); err == nil && !a.Is4() {
		fmt.Fprintf(log, "the proxy Service %s/%s is IPv6-only (ClusterIP %s) and Liqo's IP CRD holds IPv4 addresses only: no IP object is created, so Liqo does not remap the proxy; "+
			"reach it another way (e.g. connect --proxy-url)\n", o.Namespace, proxyServiceName, clusterIP)
		if existing != nil {
			// Ours, for an address the Service no longer has: it would remap a dead address.
			return nil, deleteIP(ctx, c, o, name, existing, dryRun, log, "it holds the former address")
		}
		return nil, nil
	}
	v := values{LiqoNamespace: o.LiqoNamespace, ProxyClusterIP: clusterIP, IPName: name}
	objs, err := renderFile("liqo-ip.yaml", v)
	if err != nil {
		return nil, err
	}
	obj := objs[0]
	labelObject(obj, o.Namespace, string(RoleProxy))
	old, _, _ := unstructured.NestedString(existing, "spec", "ip")
	if existing == nil || old == clusterIP {
		return apply(ctx, c, obj, dryRun)
	}
	why := fmt.Sprintf("its spec.ip %s is not the proxy Service's ClusterIP %s (the Service was recreated?) and Liqo makes spec.ip immutable", old, clusterIP)
	if dryRun == DryRunServer {
		fmt.Fprintf(log, "server dry run: IP %s/%s would be replaced (deleted and created anew): %s\n", o.LiqoNamespace, name, why)
		return obj, nil
	}
	if err := deleteIP(ctx, c, o, name, existing, dryRun, log, why); err != nil {
		return nil, err
	}
	got, err := apply(ctx, c, obj, dryRun)
	if err != nil {
		return nil, err
	}
	if o.IPWait > 0 {
		return waitIPStatus(ctx, c, o, name, log)
	}
	return got, nil
}

// deleteIP deletes our IP object and waits until it is gone (Liqo's IPAM holds a finalizer until it
// releases the remapped address), within o.IPWait or a minute.
func deleteIP(ctx context.Context, c *Client, o Options, name string, existing map[string]any, dryRun DryRun, log io.Writer, why string) error {
	ri, _, err := c.resourceFor(gvkIP, o.LiqoNamespace)
	if err != nil {
		return err
	}
	fmt.Fprintf(log, "replacing IP %s/%s: %s\n", o.LiqoNamespace, name, why)
	uid := (&unstructured.Unstructured{Object: existing}).GetUID()
	err = ri.Delete(ctx, name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}, DryRun: dryRun.apiDryRun()})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting IP %s/%s to replace it: %w", o.LiqoNamespace, name, err)
	}
	if dryRun == DryRunServer {
		return nil
	}
	timeout := o.IPWait
	if timeout <= 0 {
		timeout = time.Minute
	}
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		_, err := ri.Get(ctx, name, metaGetOptions)
		if apierrors.IsNotFound(err) {
			return true, nil
		}
		return false, err
	})
	if err != nil {
		return fmt.Errorf("IP %s/%s is still there %s after its deletion (finalizers %v: is Liqo's IPAM running?): %w",
			o.LiqoNamespace, name, timeout, (&unstructured.Unstructured{Object: existing}).GetFinalizers(), err)
	}
	return nil
}

// waitIPStatus waits, within o.IPWait, until Liqo writes the remapped address into our new IP object.
func waitIPStatus(ctx context.Context, c *Client, o Options, name string, log io.Writer) (*unstructured.Unstructured, error) {
	ri, _, err := c.resourceFor(gvkIP, o.LiqoNamespace)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(log, "waiting up to %s for Liqo to remap the new IP %s/%s\n", o.IPWait, o.LiqoNamespace, name)
	var got *unstructured.Unstructured
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, o.IPWait, true, func(ctx context.Context) (bool, error) {
		obj, err := ri.Get(ctx, name, metaGetOptions)
		if err != nil {
			return false, err
		}
		got = obj
		ip, _, _ := unstructured.NestedString(obj.Object, "status", "ip")
		return ip != "", nil
	})
	if err != nil {
		return got, fmt.Errorf("the replaced IP %s/%s has not been remapped by Liqo within %s (no status.ip): is Liqo's IPAM running? %w", o.LiqoNamespace, name, o.IPWait, err)
	}
	ip, _, _ := unstructured.NestedString(got.Object, "status", "ip")
	fmt.Fprintf(log, "Liqo remapped IP %s/%s to %s\n", o.LiqoNamespace, name, ip)
	return got, nil
}
