package plugin

import (
	"context"
	"encoding/json"
	"reflect"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/apiproxy/apiproxy/pkg/install"
	"github.com/apiproxy/apiproxy/pkg/version"
	"github.com/apiproxy/apiproxy/test/harness"
)

const (
	mirrorPinnedDigest = "sha256:1234567890abcdef1234567890abcdef1234567890abcdef1234567890abcdef"
	mirrorOtherDigest  = "sha256:abcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcd"
	// What `make release` stamps into a release plugin (version.AgentImage).
	mirrorPinnedImage = "ghcr.io/apiproxy/agent:v9.9.9@" + mirrorPinnedDigest
	mirrorRegistry    = "mirror.example:5000/team"
	mirrorImage       = mirrorRegistry + "/agent:v9.9.9@" + mirrorPinnedDigest
)

// TestInstallFromMirror plays a release plugin (the agent image pinned by digest) installing from a
// registry mirror with pull secrets, against a real API server: the rendered images, what `images`
// lists, the imagePullSecrets server-side apply adds and removes, and the digests status compares.
func TestInstallFromMirror(t *testing.T) {
	old := version.AgentImage
	version.AgentImage = mirrorPinnedImage
	t.Cleanup(func() { version.AgentImage = old })

	cl := harness.Start(t, harness.Options{Name: "mirror"})
	kc := cl.Kubeconfig
	ctx := context.Background()
	cs := cl.Clientset(t)
	mirrorArgs := append(slices.Clone(allRolesArgs), "--registry", mirrorRegistry)

	// The release plugin says which agent it installs.
	out, _, err := runApiproxy(t, kc, "version", "-o", "json")
	var info version.Info
	if err != nil || json.Unmarshal([]byte(out), &info) != nil || info.AgentImage != mirrorPinnedImage {
		t.Errorf("version -o json: %v\n%s", err, out)
	}
	if out, _, _ := runApiproxy(t, kc, "version"); !strings.Contains(out, "agent image "+mirrorPinnedImage) {
		t.Errorf("version: %s", out)
	}

	// 1. Every agent image of a client dry run is on the mirror, tag and digest kept.
	out, errOut, err := runApiproxy(t, kc, append(slices.Clone(mirrorArgs), "--dry-run=client", "-o", "yaml")...)
	if err != nil {
		t.Fatalf("install --registry --dry-run=client: %v\n%s", err, errOut)
	}
	rendered := install.ImagesOf(decodeYAMLStream(t, out))
	if len(rendered) != 7 { // proxy, proxy-2; node-init, node, proxy, proxy-2; webhook
		t.Fatalf("the dry run has %d containers, want 7: %+v", len(rendered), rendered)
	}
	for _, u := range rendered {
		if u.Image != mirrorImage {
			t.Errorf("%s %s: image %s, want %s", u.Workload, u.Container, u.Image, mirrorImage)
		}
	}

	// 2. images lists exactly what install renders, for the same flags.
	out, errOut, err = runApiproxy(t, kc, "images", "--roles", "proxy,node,webhook", "--registry", mirrorRegistry, "-o", "json")
	var listed []install.ImageUse
	if err != nil || json.Unmarshal([]byte(out), &listed) != nil {
		t.Fatalf("images -o json: %v\n%s%s", err, out, errOut)
	}
	if !reflect.DeepEqual(listed, rendered) {
		t.Errorf("images -o json lists\n%+v\ninstall renders\n%+v", listed, rendered)
	}
	for args, want := range map[string]string{
		"images --registry " + mirrorRegistry:         mirrorImage + "\n",
		"images --roles proxy,node,webhook":           mirrorPinnedImage + "\n",
		"images --image registry.example/agent:v1":    "registry.example/agent:v1\n",
		"images --roles node --registry 10.0.0.5:443": "10.0.0.5:443/agent:v9.9.9@" + mirrorPinnedDigest + "\n",
	} {
		if out, errOut, err := runApiproxy(t, kc, strings.Fields(args)...); err != nil || out != want {
			t.Errorf("%s: %v\n%q, want %q\n%s", args, err, out, want, errOut)
		}
	}
	out, _, err = runApiproxy(t, kc, "images", "--roles", "node,webhook", "-o", "wide")
	if err != nil || !strings.Contains(out, "ROLE") || !strings.Contains(out, "daemonset/apiproxy-node") || !strings.Contains(out, "node-init (init)") ||
		!strings.Contains(out, "deployment/apiproxy-webhook") || strings.Contains(out, "deployment/apiproxy-proxy") {
		t.Errorf("images -o wide: %v\n%s", err, out)
	}

	// 3. Installed with pull secrets: every pod spec names them, and the API server accepts it all.
	podSpecs := func() map[string]corev1.PodSpec {
		t.Helper()
		specs := map[string]corev1.PodSpec{}
		for _, name := range []string{"apiproxy-proxy", "apiproxy-webhook"} {
			d, err := cs.AppsV1().Deployments(install.DefaultNamespace).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			specs["deployment/"+name] = d.Spec.Template.Spec
		}
		ds, err := cs.AppsV1().DaemonSets(install.DefaultNamespace).Get(ctx, "apiproxy-node", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		specs["daemonset/apiproxy-node"] = ds.Spec.Template.Spec
		return specs
	}
	_, errOut, err = runApiproxy(t, kc, append(slices.Clone(mirrorArgs), "--image-pull-secret", "mirror-pull", "--image-pull-secret", "backup-pull,mirror-pull")...)
	if err != nil {
		t.Fatalf("install --image-pull-secret: %v\n%s", err, errOut)
	}
	// The namespace is new: neither Secret can exist yet, and install says how to make them.
	for _, name := range []string{"mirror-pull", "backup-pull"} {
		if !strings.Contains(errOut, "--image-pull-secret "+name+": no such Secret in namespace apiproxy-system yet") ||
			!strings.Contains(errOut, "create secret docker-registry "+name) {
			t.Errorf("install does not warn that Secret %s is missing:\n%s", name, errOut)
		}
	}
	wantSecrets := []corev1.LocalObjectReference{{Name: "mirror-pull"}, {Name: "backup-pull"}}
	for w, spec := range podSpecs() {
		if !slices.Equal(spec.ImagePullSecrets, wantSecrets) {
			t.Errorf("%s: imagePullSecrets %v, want %v", w, spec.ImagePullSecrets, wantSecrets)
		}
		for _, c := range slices.Concat(spec.InitContainers, spec.Containers) {
			if c.Image != mirrorImage {
				t.Errorf("%s container %s: image %s, want %s", w, c.Name, c.Image, mirrorImage)
			}
		}
	}

	// 4. Status before any pod runs: the workloads name the pinned digest.
	r := statusReport(t, kc)
	if r.PluginAgentImage != mirrorPinnedImage {
		t.Errorf("status pluginAgentImage = %q", r.PluginAgentImage)
	}
	for _, rs := range r.Roles {
		if len(rs.WorkloadImages) != 1 || rs.VersionSkew || !rs.WorkloadImages[0].Matches || rs.WorkloadImages[0].Pinned != mirrorPinnedDigest ||
			!slices.Equal(rs.Images, []string{mirrorImage}) {
			t.Errorf("status of %s before pods run: skew %v, %+v", rs.Role, rs.VersionSkew, rs.WorkloadImages)
		}
	}

	// A proxy pod that runs another digest (pulled by the tag before it moved, say): status says so,
	// from the imageID the kubelet reports.
	proxyPod := runningProxyPod(t, ctx, cs, mirrorRegistry+"/agent@"+mirrorOtherDigest)
	r = statusReport(t, kc)
	proxy := r.Roles[0]
	if !proxy.VersionSkew || len(proxy.WorkloadImages) != 1 || proxy.WorkloadImages[0].Matches ||
		!slices.Equal(proxy.WorkloadImages[0].Running, []string{mirrorOtherDigest}) || r.Roles[1].VersionSkew || r.Roles[2].VersionSkew {
		t.Errorf("status with a proxy pod on another digest: %+v", r.Roles)
	}
	out, _, _ = runApiproxy(t, kc, "status")
	if want := "proxy image: " + mirrorImage + " (VERSION SKEW: running sha256:abcdefabcdef… but this plugin pins sha256:1234567890ab…: re-run install to align (or pass --image))"; !strings.Contains(out, want) {
		t.Errorf("status table lacks\n%s\n%s", want, out)
	}
	proxyPod.Status.ContainerStatuses[0].ImageID = mirrorRegistry + "/agent@" + mirrorPinnedDigest
	if _, err := cs.CoreV1().Pods(install.DefaultNamespace).UpdateStatus(ctx, proxyPod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	out, _, _ = runApiproxy(t, kc, "status")
	if want := "proxy image: " + mirrorImage + " (running sha256:1234567890ab…, matches this plugin)"; !strings.Contains(out, want) {
		t.Errorf("status table lacks\n%s\n%s", want, out)
	}

	// 5. A later install without the flag takes the pull secrets away again (server-side apply).
	for name, typ := range map[string]corev1.SecretType{"backup-pull": corev1.SecretTypeDockerConfigJson, "not-registry": corev1.SecretTypeOpaque} {
		secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name}, Type: typ, Data: map[string][]byte{}}
		if typ == corev1.SecretTypeDockerConfigJson {
			secret.Data[corev1.DockerConfigJsonKey] = []byte(`{"auths":{"mirror.example:5000":{"auth":"dXNlcjp0b2tlbg=="}}}`)
		}
		if _, err := cs.CoreV1().Secrets(install.DefaultNamespace).Create(ctx, secret, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	_, errOut, err = runApiproxy(t, kc, append(slices.Clone(mirrorArgs), "--image-pull-secret", "backup-pull")...)
	if err != nil {
		t.Fatalf("install with one pull secret: %v\n%s", err, errOut)
	}
	if strings.Contains(errOut, "--image-pull-secret") {
		t.Errorf("install warns about an existing docker-registry Secret:\n%s", errOut)
	}
	_, errOut, err = runApiproxy(t, kc, append(slices.Clone(mirrorArgs), "--image-pull-secret", "not-registry", "--dry-run=server")...)
	if err != nil || !strings.Contains(errOut, `--image-pull-secret not-registry has type "Opaque"`) {
		t.Errorf("install with an Opaque pull secret: %v\n%s", err, errOut)
	}
	for w, spec := range podSpecs() {
		if !slices.Equal(spec.ImagePullSecrets, []corev1.LocalObjectReference{{Name: "backup-pull"}}) {
			t.Errorf("%s after dropping mirror-pull: imagePullSecrets %v", w, spec.ImagePullSecrets)
		}
	}
	if _, errOut, err := runApiproxy(t, kc, mirrorArgs...); err != nil {
		t.Fatalf("install without --image-pull-secret: %v\n%s", err, errOut)
	}
	for w, spec := range podSpecs() {
		if len(spec.ImagePullSecrets) != 0 {
			t.Errorf("%s after an install without --image-pull-secret: imagePullSecrets %v", w, spec.ImagePullSecrets)
		}
	}
}

// runningProxyPod creates a pod of the proxy Deployment (its template's labels) and reports its
// container running imageID, as the kubelet would.
func runningProxyPod(t *testing.T, ctx context.Context, cs kubernetes.Interface, imageID string) *corev1.Pod {
	t.Helper()
	d, err := cs.AppsV1().Deployments(install.DefaultNamespace).Get(ctx, "apiproxy-proxy", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	no := false
	pod, err := cs.CoreV1().Pods(install.DefaultNamespace).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "apiproxy-proxy-test", Labels: d.Spec.Template.Labels},
		Spec: corev1.PodSpec{ServiceAccountName: "apiproxy-proxy", AutomountServiceAccountToken: &no,
			Containers: []corev1.Container{{Name: "proxy", Image: d.Spec.Template.Spec.Containers[0].Image}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	now := metav1.Now()
	pod.Status.Phase = corev1.PodRunning
	pod.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "proxy", Image: pod.Spec.Containers[0].Image, ImageID: imageID,
		Ready: true, State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}}}}
	pod, err = cs.CoreV1().Pods(install.DefaultNamespace).UpdateStatus(ctx, pod, metav1.UpdateOptions{})
	if err != nil {
		t.Fatalf("reporting the pod's container status: %v", err)
	}
	return pod
}
