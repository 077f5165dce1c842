package install

import (
	"reflect"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/apiproxy/apiproxy/pkg/version"
)

const (
	pinnedDigest = "sha256:1234567890abcdef1234567890abcdef1234567890abcdef1234567890abcdef"
	otherDigest  = "sha256:abcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcd"
	pinnedImage  = "ghcr.io/apiproxy/agent:v9.9.9@" + pinnedDigest
)

// pinAgentImage plays a release build: version.AgentImage as `make release` stamps it.
func pinAgentImage(t *testing.T, image string) {
	t.Helper()
	old := version.AgentImage
	version.AgentImage = image
	t.Cleanup(func() { version.AgentImage = old })
}

func TestDefaultImageIsThePinnedOneInReleases(t *testing.T) {
	if got, want := DefaultImage(), DefaultImageRepo+":"+version.Version; got != want {
		t.Errorf("dev build: DefaultImage() = %s, want %s", got, want)
	}
	pinAgentImage(t, pinnedImage)
	if got := DefaultImage(); got != pinnedImage {
		t.Errorf("release build: DefaultImage() = %s, want %s", got, pinnedImage)
	}
	if got := DefaultOptions().Image; got != pinnedImage {
		t.Errorf("release build: the default --image = %s, want %s", got, pinnedImage)
	}
}

// Every container of every rendered pod template gets the image, moved by --registry with its name,
// tag and digest kept; the same for an --image the user gives.
func TestRegistryMovesEveryAgentImage(t *testing.T) {
	pinAgentImage(t, pinnedImage)
	for _, tc := range []struct{ image, registry, want string }{
		{"", "mirror.example:5000/team", "mirror.example:5000/team/agent:v9.9.9@" + pinnedDigest},
		{"", "", pinnedImage},
		{"registry.example/x/apiproxy-agent:dev", "10.0.0.5:5000", "10.0.0.5:5000/apiproxy-agent:dev"},
	} {
		o := allRolesOptions()
		o.Registry = tc.registry
		if tc.image != "" {
			o.Image = tc.image
		}
		uses := ImagesOf(renderAll(t, o))
		if len(uses) != 7 { // proxy, proxy-2; node-init, node, proxy, proxy-2; webhook
			t.Fatalf("%+v: %d containers, want 7: %+v", tc, len(uses), uses)
		}
		for _, u := range uses {
			if u.Image != tc.want {
				t.Errorf("%+v: %s %s runs %s, want %s", tc, u.Workload, u.Container, u.Image, tc.want)
			}
		}
	}
}

func TestImagesOfNamesRoleWorkloadAndContainer(t *testing.T) {
	o := allRolesOptions()
	img := DefaultImage()
	want := []ImageUse{
		{RoleProxy, "deployment/apiproxy-proxy", "proxy", false, img},
		{RoleProxy, "deployment/apiproxy-proxy", "proxy-2", false, img},
		{RoleNode, "daemonset/apiproxy-node", "node-init", true, img},
		{RoleNode, "daemonset/apiproxy-node", "node", false, img},
		{RoleNode, "daemonset/apiproxy-node", "proxy", false, img},
		{RoleNode, "daemonset/apiproxy-node", "proxy-2", false, img},
		{RoleWebhook, "deployment/apiproxy-webhook", "webhook", false, img},
	}
	if got := ImagesOf(renderAll(t, o)); !reflect.DeepEqual(got, want) {
		t.Errorf("ImagesOf = %+v\nwant %+v", got, want)
	}
	// images needs no --apiserver-fqdn for the webhook role: it does not change the image.
	o.APIServerFQDN, o.APIServerPort, o.HostAliasIP = "", 0, ""
	if got, err := RenderImages(o); err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("RenderImages without --apiserver-fqdn = %+v, %v", got, err)
	}
	o.Registry = "https://mirror.example"
	if _, err := RenderImages(o); err == nil || !strings.Contains(err.Error(), "--registry") {
		t.Errorf("RenderImages with a bad --registry: err = %v", err)
	}
}

func TestImagePullSecretsGoIntoEveryPodSpec(t *testing.T) {
	o := allRolesOptions()
	o.SetupIPTables = true
	o.ImagePullSecrets = []string{"mirror-pull", "backup-pull", "mirror-pull"}
	objs := renderAll(t, o)
	specs := 0
	for _, obj := range objs {
		spec, ok := PodSpecOf(obj)
		if !ok {
			// A pod template in a kind PodSpecOf does not know would silently miss the secrets.
			if _, found, _ := unstructured.NestedMap(obj.Object, "spec", "template"); found {
				t.Errorf("%s %s has a pod template that PodSpecOf does not find", obj.GetKind(), obj.GetName())
			}
			continue
		}
		specs++
		var ps corev1.PodSpec
		if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(spec, &ps, true); err != nil {
			t.Fatal(err)
		}
		want := []corev1.LocalObjectReference{{Name: "mirror-pull"}, {Name: "backup-pull"}}
		if !slices.Equal(ps.ImagePullSecrets, want) {
			t.Errorf("%s %s: imagePullSecrets = %v, want %v", obj.GetKind(), obj.GetName(), ps.ImagePullSecrets, want)
		}
	}
	if specs != 3 {
		t.Errorf("%d pod specs rendered, want 3 (proxy, node, webhook)", specs)
	}
	o.ImagePullSecrets = nil
	for _, obj := range renderAll(t, o) {
		if spec, ok := PodSpecOf(obj); ok {
			if _, set := spec["imagePullSecrets"]; set {
				t.Errorf("%s %s: imagePullSecrets rendered without --image-pull-secret: %v", obj.GetKind(), obj.GetName(), spec["imagePullSecrets"])
			}
		}
	}
}

// pod is a pod of the proxy Deployment whose containers report these image IDs.
func pod(name string, imageIDs ...string) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: DefaultNamespace,
		Labels: map[string]string{LabelName: "apiproxy-proxy", LabelComponent: "proxy"}}}
	for _, id := range imageIDs {
		p.Status.ContainerStatuses = append(p.Status.ContainerStatuses, corev1.ContainerStatus{Name: "proxy", ImageID: id})
	}
	return p
}

func TestCompareImageByDigest(t *testing.T) {
	release := Plugin{Version: "v9.9.9", AgentImage: pinnedImage}
	dev := Plugin{Version: "v0.0.0-dev"}
	mirror := "mirror.example:5000/team/agent"
	for _, tc := range []struct {
		name    string
		image   string
		pods    []*corev1.Pod
		plugin  Plugin
		matches bool
		summary []string
	}{
		{"pulled by the pinned digest from a mirror", mirror + ":v9.9.9@" + pinnedDigest,
			[]*corev1.Pod{pod("a", mirror+"@"+pinnedDigest), pod("b", mirror+"@"+pinnedDigest)}, release, true,
			[]string{"running sha256:1234567890ab…, matches this plugin"}},
		{"pulled by tag, resolved to the pinned digest", mirror + ":v9.9.9",
			[]*corev1.Pod{pod("a", mirror+"@"+pinnedDigest)}, release, true, []string{"matches this plugin"}},
		{"pulled by tag, resolved to another digest", mirror + ":v9.9.9",
			[]*corev1.Pod{pod("a", mirror+"@"+otherDigest)}, release, false,
			[]string{"VERSION SKEW: running sha256:abcdefabcdef… but this plugin pins sha256:1234567890ab…: re-run install to align"}},
		{"one old pod left", mirror + ":v9.9.9@" + pinnedDigest,
			[]*corev1.Pod{pod("a", mirror+"@"+pinnedDigest), pod("old", "ghcr.io/apiproxy/agent@"+otherDigest)}, release, false,
			[]string{"VERSION SKEW: running sha256:1234567890ab…, sha256:abcdefabcdef… but this plugin pins"}},
		{"another digest named, nothing runs yet", "ghcr.io/apiproxy/agent:v9.9.9@" + otherDigest, nil, release, false,
			[]string{"VERSION SKEW: the workload names sha256:abcdefabcdef… but this plugin pins sha256:1234567890ab…"}},
		{"the pinned digest named, nothing runs yet", mirror + "@" + pinnedDigest, []*corev1.Pod{pod("a", "")}, release, true,
			[]string{"no pod runs it yet; its digest matches this plugin's"}},
		{"the pinned digest named, image imported without a repo digest", mirror + "@" + pinnedDigest, []*corev1.Pod{pod("a", otherDigest)}, release, true,
			[]string{"running image ID " + otherDigest + " (no registry digest to compare); its digest matches"}},
		{"by tag, nothing runs yet, other version", mirror + ":v1.0.0", nil, release, false,
			[]string{"VERSION SKEW: tag v1.0.0 but this plugin pins sha256:1234567890ab… (v9.9.9)"}},
		{"dev build, same tag", "ghcr.io/apiproxy/agent:v0.0.0-dev", []*corev1.Pod{pod("a", "ghcr.io/apiproxy/agent@"+otherDigest)}, dev, true,
			[]string{"running sha256:abcdefabcdef…, tag matches this plugin (v0.0.0-dev)"}},
		{"dev build, other tag", "registry.example:5000/agent:v9.9.9", nil, dev, false,
			[]string{"VERSION SKEW: tag v9.9.9 but this plugin is v0.0.0-dev: re-run install to align (or pass --image)"}},
	} {
		wi := compareImage(tc.image, []string{"proxy"}, tc.pods, tc.plugin)
		if wi.Matches != tc.matches {
			t.Errorf("%s: matches = %v, want %v (%s)", tc.name, wi.Matches, tc.matches, wi.Summary)
		}
		for _, s := range tc.summary {
			if !strings.Contains(wi.Summary, s) {
				t.Errorf("%s: summary %q lacks %q", tc.name, wi.Summary, s)
			}
		}
		if tc.plugin.AgentImage != "" && wi.Pinned != pinnedDigest {
			t.Errorf("%s: pinned = %q", tc.name, wi.Pinned)
		}
	}
}

// workloadImages reads only the workload's own pods (its selector) and the containers that run the
// image, and reports full digests for scripts.
func TestWorkloadImagesReadTheWorkloadsPods(t *testing.T) {
	pinAgentImage(t, pinnedImage)
	o := allRolesOptions()
	o.Registry = "mirror.example:5000/team"
	var proxy *unstructured.Unstructured
	for _, obj := range renderAll(t, o) {
		if obj.GetKind() == "Deployment" && obj.GetName() == "apiproxy-proxy" {
			proxy = obj
		}
	}
	mine := pod("mine", "mirror.example:5000/team/agent@"+pinnedDigest)
	notMine := pod("webhook", "mirror.example:5000/team/agent@"+otherDigest)
	notMine.Labels = map[string]string{LabelName: "apiproxy-webhook", LabelComponent: "webhook"}
	sidecar := pod("sidecar")
	sidecar.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "istio-proxy", ImageID: "docker.io/istio/proxyv2@" + otherDigest}}
	got := workloadImages(proxy, []*corev1.Pod{mine, notMine, sidecar}, Plugin{Version: "v9.9.9", AgentImage: pinnedImage})
	want := []WorkloadImage{{
		Workload: "deployment/apiproxy-proxy", Image: "mirror.example:5000/team/agent:v9.9.9@" + pinnedDigest,
		Running: []string{pinnedDigest}, Pinned: pinnedDigest, Matches: true,
		Summary: "running sha256:1234567890ab…, matches this plugin",
	}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("workloadImages = %+v\nwant %+v", got, want)
	}
}
