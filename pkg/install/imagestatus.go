package install

import (
	"fmt"
	"slices"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/apiproxy/apiproxy/pkg/install/imageref"
)

// WorkloadImage is `status`'s view of one image of one workload: the reference its pod template
// names, the digests its pods run, and whether that is the agent this plugin installs.
type WorkloadImage struct {
	// Workload is kind/name, e.g. deployment/apiproxy-proxy.
	Workload string `json:"workload"`
	// Image is the pod template's reference.
	Image string `json:"image"`
	// Running are the distinct registry digests the workload's pods run it at, from their
	// status.containerStatuses[].imageID (containerd: the digest it was pulled by, or the digest the
	// tag resolved to).
	Running []string `json:"running,omitempty"`
	// RunningImageIDs are image IDs the runtime reports without a registry digest (an image imported
	// under another name): shown, never compared.
	RunningImageIDs []string `json:"runningImageIDs,omitempty"`
	// Pinned is the digest this plugin pins (of version.AgentImage); "" in a dev build, which
	// compares the tag with the plugin's version instead.
	Pinned  string `json:"pinned,omitempty"`
	Matches bool   `json:"matches"`
	// Summary says it in one line, as `status` prints it.
	Summary string `json:"summary"`
}

// Plugin is what status compares the agents with: this plugin's version and the agent image it
// pins (version.AgentImage, "" when nothing is stamped).
type Plugin struct {
	Version    string
	AgentImage string
}

// workloadImages compares each distinct image of a workload's pod template with what its pods run.
func workloadImages(workload *unstructured.Unstructured, pods []*corev1.Pod, p Plugin) []WorkloadImage {
	var sel labels.Selector = labels.Nothing()
	if m, found, _ := unstructured.NestedMap(workload.Object, "spec", "selector"); found {
		var ls metav1.LabelSelector
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(m, &ls); err == nil {
			if s, err := metav1.LabelSelectorAsSelector(&ls); err == nil {
				sel = s
			}
		}
	}
	var own []*corev1.Pod
	for _, pod := range pods {
		if pod.Namespace == workload.GetNamespace() && sel.Matches(labels.Set(pod.Labels)) {
			own = append(own, pod)
		}
	}
	var out []WorkloadImage
	containers := map[string][]string{}
	var order []string
	for _, use := range ImagesOf([]*unstructured.Unstructured{workload}) {
		if _, seen := containers[use.Image]; !seen {
			order = append(order, use.Image)
		}
		containers[use.Image] = append(containers[use.Image], use.Container)
	}
	for _, image := range order {
		wi := compareImage(image, containers[image], own, p)
		wi.Workload = strings.ToLower(workload.GetKind()) + "/" + workload.GetName()
		out = append(out, wi)
	}
	return out
}

// compareImage judges one image reference run by the named containers of pods. With a pinned
// digest, digests decide (the pods' when they report one, else the reference's); a reference by
// tag that nothing runs yet, or a dev build, compares the tag with the plugin's version.
func compareImage(image string, containers []string, pods []*corev1.Pod, p Plugin) WorkloadImage {
	wi := WorkloadImage{Image: image}
	var running []v1.Hash
	for _, pod := range pods {
		for _, st := range slices.Concat(pod.Status.InitContainerStatuses, pod.Status.ContainerStatuses) {
			if st.ImageID == "" || !slices.Contains(containers, st.Name) {
				continue
			}
			if h, ok := imageref.RunningDigest(st.ImageID); ok {
				if !slices.Contains(wi.Running, h.String()) {
					wi.Running = append(wi.Running, h.String())
					running = append(running, h)
				}
			} else if !slices.Contains(wi.RunningImageIDs, st.ImageID) {
				wi.RunningImageIDs = append(wi.RunningImageIDs, st.ImageID)
			}
		}
	}
	ref, refErr := imageref.Parse("image", image)
	var pinned v1.Hash
	var hasPin bool
	if p.AgentImage != "" {
		if pin, err := imageref.Parse("the pinned agent image", p.AgentImage); err == nil && pin.Digest != "" {
			pinned, hasPin = imageref.ParseDigest(pin.Digest)
		}
	}
	const realign = ": re-run install to align (or pass --image)"
	runningWords := func() string {
		var shorts []string
		for _, h := range running {
			shorts = append(shorts, imageref.Short(h))
		}
		switch {
		case len(shorts) > 0:
			return "running " + strings.Join(shorts, ", ")
		case len(wi.RunningImageIDs) > 0:
			return "running image ID " + strings.Join(wi.RunningImageIDs, ", ") + " (no registry digest to compare)"
		}
		return "no pod runs it yet"
	}
	tag := ""
	if refErr == nil {
		tag = ref.Tag
	}
	if hasPin {
		wi.Pinned = pinned.String()
		pinWords := "this plugin pins " + imageref.Short(pinned)
		var named v1.Hash
		var namesDigest bool
		if refErr == nil && ref.Digest != "" {
			named, namesDigest = imageref.ParseDigest(ref.Digest)
		}
		switch {
		case slices.ContainsFunc(running, func(h v1.Hash) bool { return h != pinned }):
			wi.Summary = "VERSION SKEW: " + runningWords() + " but " + pinWords + realign
		case namesDigest && named != pinned:
			wi.Summary = "VERSION SKEW: the workload names " + imageref.Short(named) + " but " + pinWords + realign
		case len(running) > 0:
			wi.Matches, wi.Summary = true, runningWords()+", matches this plugin"
		case namesDigest:
			wi.Matches, wi.Summary = true, runningWords()+"; its digest matches this plugin's"
		case tag == p.Version:
			wi.Matches, wi.Summary = true, runningWords()+"; tag "+tag+" matches this plugin"
		default:
			wi.Summary = "VERSION SKEW: " + tagWords(tag) + " but " + pinWords + " (" + p.Version + ")" + realign
		}
		return wi
	}
	if tag == p.Version {
		wi.Matches, wi.Summary = true, runningWords()+", tag matches this plugin ("+p.Version+")"
		return wi
	}
	what := tagWords(tag)
	if len(running) > 0 {
		what = runningWords() + " with " + what
	}
	wi.Summary = "VERSION SKEW: " + what + " but this plugin is " + p.Version + realign
	return wi
}

func tagWords(tag string) string {
	if tag == "" {
		return "no tag"
	}
	return fmt.Sprintf("tag %s", tag)
}
