package webhook

import (
	"encoding/json"
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"
	sigsjson "sigs.k8s.io/json"
)

// BenchmarkDecodePod backs the choice of slimPod: decoding only the fields the patch needs versus
// a whole corev1.Pod, on a 10-container pod with 30 variables each.
//
//	go test -run x -bench DecodePod ./pkg/webhook/
func BenchmarkDecodePod(b *testing.B) {
	pod := corev1.Pod{}
	for i := 0; i < 10; i++ {
		c := corev1.Container{Name: fmt.Sprintf("c%d", i), Image: "registry.example.com/app:v1", Args: []string{"--a", "--b"}}
		for j := 0; j < 30; j++ {
			c.Env = append(c.Env, corev1.EnvVar{Name: fmt.Sprintf("SETTING_%02d", j), Value: "some-value"})
		}
		pod.Spec.Containers = append(pod.Spec.Containers, c)
	}
	raw, err := json.Marshal(pod)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("slim", func(b *testing.B) {
		for b.Loop() {
			var p slimPod
			if err := sigsjson.UnmarshalCaseSensitivePreserveInts(raw, &p); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("corev1.Pod", func(b *testing.B) {
		for b.Loop() {
			var p corev1.Pod
			if err := sigsjson.UnmarshalCaseSensitivePreserveInts(raw, &p); err != nil {
				b.Fatal(err)
			}
		}
	})
}
