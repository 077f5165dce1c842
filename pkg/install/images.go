package install

import (
	"io"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// ImageUse is one container of a rendered pod template and the image it runs (`images -o json`).
type ImageUse struct {
	Role Role `json:"role"`
	// Workload is kind/name, e.g. deployment/apiproxy-proxy.
	Workload      string `json:"workload"`
	Container     string `json:"container"`
	InitContainer bool   `json:"initContainer,omitempty"`
	Image         string `json:"image"`
}

// imagesPlaceholderFQDN stands in for the webhook role's required --apiserver-fqdn when only the
// images are wanted: it does not change them.
const imagesPlaceholderFQDN = "kubernetes.default.svc"

// RenderImages renders what install would apply with these options, offline, and lists the images of
// its pod templates: a list read from the manifests themselves can never disagree with install.
func RenderImages(o Options) ([]ImageUse, error) {
	if o.Has(RoleWebhook) && o.APIServerFQDN == "" {
		o.APIServerFQDN = imagesPlaceholderFQDN
	}
	// The peers' CIDRs (--relay) change arguments only, and a client render cannot read them.
	o.Relay = false
	objs, err := RenderOffline(o, io.Discard)
	if err != nil {
		return nil, err
	}
	return ImagesOf(objs), nil
}

// ImagesOf lists the containers (init containers first, as they start) of every pod template among
// objs, with the role from the object's component label.
func ImagesOf(objs []*unstructured.Unstructured) []ImageUse {
	var out []ImageUse
	for _, obj := range objs {
		spec, ok := PodSpecOf(obj)
		if !ok {
			continue
		}
		workload := strings.ToLower(obj.GetKind()) + "/" + obj.GetName()
		role := Role(obj.GetLabels()[LabelComponent])
		for _, field := range []string{"initContainers", "containers"} {
			cs, _, _ := unstructured.NestedSlice(spec, field)
			for _, c := range cs {
				m, _ := c.(map[string]any)
				name, _ := m["name"].(string)
				image, _ := m["image"].(string)
				out = append(out, ImageUse{Role: role, Workload: workload, Container: name, InitContainer: field == "initContainers", Image: image})
			}
		}
	}
	return out
}

// podSpecPaths say where each workload kind keeps its pod spec.
var podSpecPaths = map[string][]string{
	"Pod":         {"spec"},
	"Deployment":  {"spec", "template", "spec"},
	"DaemonSet":   {"spec", "template", "spec"},
	"StatefulSet": {"spec", "template", "spec"},
	"ReplicaSet":  {"spec", "template", "spec"},
	"Job":         {"spec", "template", "spec"},
	"CronJob":     {"spec", "jobTemplate", "spec", "template", "spec"},
}

// PodSpecOf returns a copy of the pod spec of a workload object; ok is false for other kinds.
func PodSpecOf(obj *unstructured.Unstructured) (spec map[string]any, ok bool) {
	path, known := podSpecPaths[obj.GetKind()]
	if !known {
		return nil, false
	}
	spec, found, err := unstructured.NestedMap(obj.Object, path...)
	return spec, found && err == nil
}
