package install

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

func decodeB64(s string) ([]byte, error) { return base64.StdEncoding.DecodeString(s) }

// decideIP says whether install must create Liqo's IP resource, failing (true) or explaining and
// skipping (auto) when it cannot.
func decideIP(ctx context.Context, c *Client, o Options, log io.Writer) (bool, error) {
	if o.CreateIP == CreateIPFalse {
		return false, nil
	}
	strict := o.CreateIP == CreateIPTrue
	skip := func(format string, args ...any) (bool, error) {
		msg := fmt.Sprintf(format, args...)
		if strict {
			return false, fmt.Errorf("--create-ip-resource=true: %s", msg)
		}
		fmt.Fprintf(log, "%s: skipping Liqo's IP resource (--create-ip-resource=auto)\n", msg)
		return false, nil
	}
	served, err := c.IPCRDServed()
	if err != nil {
		return false, err
	}
	if !served {
		return skip("Liqo's IP CRD (%s) is not served by this cluster; install Liqo first, or use --create-ip-resource=false", IPCRDName)
	}
	if !o.Has(RoleProxy) {
		svc, err := c.get(ctx, gvkService, o.Namespace, proxyServiceName)
		if err != nil {
			return false, err
		}
		if svc == nil {
			return skip("the proxy Service %s/%s does not exist; add proxy to --roles", o.Namespace, proxyServiceName)
		}
	}
	ns, err := c.get(ctx, gvkNamespace, "", o.LiqoNamespace)
	if err != nil {
		return false, err
	}
	if ns == nil {
		return skip("the Liqo namespace %s does not exist; point --liqo-namespace at the namespace Liqo is installed in", o.LiqoNamespace)
	}
	existing, err := c.get(ctx, gvkIP, o.LiqoNamespace, IPResourceName)
	if err != nil {
		return false, err
	}
	if existing != nil && !ownedByUs(existing, o.Namespace) {
		return skip("IP %s/%s already exists and was not created by this install (Liqo's own API server proxy?); leaving it alone", o.LiqoNamespace, IPResourceName)
	}
	return true, nil
}

// applyIP creates or updates IP api-server-proxy with spec.ip = the proxy Service ClusterIP.
func applyIP(ctx context.Context, c *Client, o Options, clusterIP string, dryRun DryRun, log io.Writer) (*unstructured.Unstructured, error) {
	if clusterIP == "" {
		svc, err := c.get(ctx, gvkService, o.Namespace, proxyServiceName)
		if err != nil {
			return nil, err
		}
		if svc != nil {
			clusterIP, _, _ = unstructured.NestedString(svc, "spec", "clusterIP")
		}
	}
	if clusterIP == "" || clusterIP == "None" {
		if dryRun == DryRunServer {
			fmt.Fprintf(log, "server dry run: the proxy Service has no ClusterIP yet, so IP %s/%s is not shown\n", o.LiqoNamespace, IPResourceName)
			return nil, nil
		}
		return nil, fmt.Errorf("the proxy Service %s/%s has no ClusterIP: Liqo's IP resource needs one", o.Namespace, proxyServiceName)
	}
	v := values{LiqoNamespace: o.LiqoNamespace, ProxyClusterIP: clusterIP}
	objs, err := renderFile("liqo-ip.yaml", v)
	if err != nil {
		return nil, err
	}
	obj := objs[0]
	labelObject(obj, o.Namespace, string(RoleProxy))
	return apply(ctx, c, obj, dryRun)
}
