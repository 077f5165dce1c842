package plugin

import (
	"encoding/json"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/cli-runtime/pkg/genericiooptions"
)

// runOffline runs the plugin without any cluster: flag errors and client dry runs must not need one.
func runOffline(args ...string) (string, string, error) {
	streams, _, out, errOut := genericiooptions.NewTestIOStreams()
	root := NewRootCommand(streams)
	root.SetArgs(append([]string{"--kubeconfig", "/nonexistent/kubeconfig"}, args...))
	err := root.Execute()
	return out.String(), errOut.String(), err
}

func TestInstallFlagsRejectBadInput(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"install", "--roles", "proxy,gateway"}, `unknown role "gateway"`},
		{[]string{"install", "--roles", ""}, "--roles is empty"},
		{[]string{"install", "-o", "xml"}, `-o "xml"`},
		{[]string{"install", "--dry-run=maybe"}, "none, client or server"},
		{[]string{"install", "--dry-run=client", "--wait"}, "--wait cannot be combined"},
		{[]string{"install", "--timeout", "0s", "--wait"}, "--timeout"},
		{[]string{"install", "--create-ip-resource", "sometimes"}, "auto, true or false"},
		{[]string{"install", "--roles", "webhook", "--dry-run=client"}, "--apiserver-fqdn"},
		{[]string{"install", "--roles", "node", "--node-ip", "nope", "--dry-run=client"}, "--node-ip"},
		{[]string{"install", "--upstream-proxy", "http://10.81.0.3:8118"}, "node role"},
		{[]string{"install", "-n", "Not_A_Namespace"}, "not a valid namespace name"},
		{[]string{"status", "-o", "yaml"}, `-o "yaml"`},
		{[]string{"install", "--registry", "https://mirror.example/team", "--dry-run=client"}, `--registry "https://mirror.example/team" has a URL scheme`},
		{[]string{"install", "--registry", "mirror.example/x:tag", "--dry-run=client"}, "has a tag"},
		{[]string{"install", "--registry", "mirror.example/team@sha256:abc", "--dry-run=client"}, "has a digest"},
		{[]string{"install", "--registry", "mirror example", "--dry-run=client"}, "contains spaces"},
		{[]string{"install", "--registry", "mirror.example:99999", "--dry-run=client"}, "port"},
		{[]string{"install", "--image", "ghcr.io/apiproxy/agent:v1 x", "--dry-run=client"}, "--image"},
		{[]string{"install", "--image", "ghcr.io/apiproxy/Agent:v1", "--dry-run=client"}, "not an image reference"},
		{[]string{"install", "--image-pull-secret", "ok,Bad_Name", "--dry-run=client"}, `--image-pull-secret "Bad_Name"`},
		{[]string{"images", "--registry", "http://mirror.example:5000"}, "URL scheme"},
		{[]string{"images", "--roles", "gateway"}, `unknown role "gateway"`},
		{[]string{"images", "-o", "table"}, `-o "table"`},
		{[]string{"uninstall", "--dry-run=later"}, "none, client or server"},
	} {
		_, _, err := runOffline(tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err = %v, want it to mention %q", tc.args, err, tc.want)
		}
	}
}

func TestInstallNamespaceDefaultsToApiproxySystem(t *testing.T) {
	for _, tc := range []struct {
		args []string
		ns   string
	}{
		{[]string{"install", "--dry-run=client", "-o", "json", "--roles", "proxy,webhook", "--apiserver-fqdn", "api.example.com"}, "apiproxy-system"},
		{[]string{"-n", "tenant-a", "install", "--dry-run", "-o", "json", "--roles", "proxy,webhook", "--apiserver-fqdn", "api.example.com"}, "tenant-a"},
	} {
		out, errOut, err := runOffline(tc.args...)
		if err != nil {
			t.Fatalf("%v: %v\n%s", tc.args, err, errOut)
		}
		var list struct{ Items []map[string]any }
		if err := json.Unmarshal([]byte(out), &list); err != nil || len(list.Items) == 0 {
			t.Fatalf("%v: output is not a JSON List: %v\n%s", tc.args, err, out)
		}
		for _, item := range list.Items {
			obj := unstructured.Unstructured{Object: item}
			switch obj.GetKind() {
			case "Namespace":
				if obj.GetName() != tc.ns {
					t.Errorf("%v: namespace %s, want %s", tc.args, obj.GetName(), tc.ns)
				}
			case "MutatingWebhookConfiguration", "ClusterRole", "ClusterRoleBinding":
				if !strings.HasPrefix(obj.GetName(), "apiproxy-webhook-"+tc.ns) {
					t.Errorf("%v: %s %s", tc.args, obj.GetKind(), obj.GetName())
				}
			default:
				if obj.GetNamespace() != tc.ns {
					t.Errorf("%v: %s %s in %q, want %s", tc.args, obj.GetKind(), obj.GetName(), obj.GetNamespace(), tc.ns)
				}
			}
		}
		if !strings.Contains(errOut, "client dry run") {
			t.Errorf("%v: the client dry run should say what it cannot know; stderr:\n%s", tc.args, errOut)
		}
	}
}
