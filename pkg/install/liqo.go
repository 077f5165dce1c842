package install

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
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

// applyIP creates or updates our IP object (named by decideIP) with spec.ip = the proxy Service
// ClusterIP.
func applyIP(ctx context.Context, c *Client, o Options, name, clusterIP string, dryRun DryRun, log io.Writer) (*unstructured.Unstructured, error) {
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
			fmt.Fprintf(log, "server dry run: the proxy Service has no ClusterIP yet, so IP %s/%s is not shown\n", o.LiqoNamespace, name)
			return nil, nil
		}
		return nil, fmt.Errorf("the proxy Service %s/%s has no ClusterIP: Liqo's IP resource needs one", o.Namespace, proxyServiceName)
	}
	v := values{LiqoNamespace: o.LiqoNamespace, ProxyClusterIP: clusterIP, IPName: name}
	objs, err := renderFile("liqo-ip.yaml", v)
	if err != nil {
		return nil, err
	}
	obj := objs[0]
	labelObject(obj, o.Namespace, string(RoleProxy))
	return apply(ctx, c, obj, dryRun)
}
