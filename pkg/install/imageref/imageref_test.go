package imageref

import (
	"strings"
	"testing"
)

const (
	digestA = "sha256:1234567890abcdef1234567890abcdef1234567890abcdef1234567890abcdef"
	digestB = "sha256:abcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcd"
)

func TestWithRegistryKeepsNameTagAndDigest(t *testing.T) {
	for _, tc := range []struct{ image, registry, want string }{
		{"ghcr.io/apiproxy/agent:v1@" + digestA, "mirror.example:5000/team", "mirror.example:5000/team/agent:v1@" + digestA},
		{"ghcr.io/apiproxy/agent:v1.2.3", "mirror.example", "mirror.example/agent:v1.2.3"},
		{"ghcr.io/apiproxy/agent@" + digestA, "10.0.0.5:5000/a/b/c", "10.0.0.5:5000/a/b/c/agent@" + digestA},
		{"agent", "localhost:5000", "localhost:5000/agent"},
		{"agent:dev", "localhost", "localhost/agent:dev"},
		{"registry.local:5000/x/agent-dev:v2", "[fd00::1]:5000/mirror", "[fd00::1]:5000/mirror/agent-dev:v2"},
		{"ghcr.io/apiproxy/agent:v1", "docker.io/myorg", "docker.io/myorg/agent:v1"},
		{"ghcr.io/apiproxy/agent:v1", "[::1]", "[::1]/agent:v1"},
	} {
		ref, err := Parse("--image", tc.image)
		if err != nil {
			t.Fatalf("Parse(%s): %v", tc.image, err)
		}
		if ref.String() != tc.image {
			t.Errorf("Parse(%s).String() = %s: a reference must survive parsing unchanged", tc.image, ref)
		}
		reg, err := ParseRegistry("--registry", tc.registry)
		if err != nil {
			t.Fatalf("ParseRegistry(%s): %v", tc.registry, err)
		}
		got := ref.WithRegistry(reg).String()
		if got != tc.want {
			t.Errorf("%s moved to %s = %s, want %s", tc.image, tc.registry, got, tc.want)
		}
		// What the rewrite makes is a reference the same parser accepts, with the same parts.
		again, err := Parse("--image", got)
		if err != nil || again.Tag != ref.Tag || again.Digest != ref.Digest || again.Name() != ref.Name() {
			t.Errorf("Parse(%s) = %+v, %v; want tag %q digest %q name %q", got, again, err, ref.Tag, ref.Digest, ref.Name())
		}
	}
}

func TestParseSplitsTheReference(t *testing.T) {
	for image, want := range map[string]Reference{
		"ghcr.io/apiproxy/agent:v1.2.3@" + digestA: {"ghcr.io/apiproxy/agent", "v1.2.3", digestA},
		"localhost:5000/agent":                     {"localhost:5000/agent", "", ""},
		"localhost:5000/agent@" + digestB:          {"localhost:5000/agent", "", digestB},
		"apiproxy.local/agent:test":                {"apiproxy.local/agent", "test", ""},
	} {
		got, err := Parse("--image", image)
		if err != nil || got != want {
			t.Errorf("Parse(%s) = %+v, %v; want %+v", image, got, err, want)
		}
	}
}

func TestBadValuesNameTheFlag(t *testing.T) {
	for _, tc := range []struct{ value, want string }{
		{"https://mirror.example/team", "URL scheme"},
		{"http://mirror.example:5000", "URL scheme"},
		{"mirror.example/x:tag", "has a tag"},
		{"mirror.example:5000/team:v1", "has a tag"},
		{"mirror.example/team@sha256:abc", "has a digest"},
		{"@sha256", "has a digest"},
		{"mirror example", "contains spaces"},
		{" mirror.example", "contains spaces"},
		{"mirror.example/team\t", "contains spaces"},
		{"", "is empty"},
		{"mirror.example//team", "empty path component"},
		{"mirror.example/team/", "empty path component"},
		{"mirror.example/", "empty path component"},
		{"/team", "no host"},
		{":5000/team", "no host"},
		{"mirror.example:99999", "port"},
		{"mirror.example:0/team", "port"},
		{"mirror.example:http", "port"},
		{"mirror", "Docker Hub path"},
		{"team/agent", "Docker Hub path"},
		{"fd00::1", "without brackets"},
		{"[fd00::1", "not HOST:PORT"},
		{"[10.0.0.1]:5000", "IPv6"},
		{"-bad.example", "not a DNS name"},
		{"mirror.example/Team", "path component \"Team\""},
		{"mirror.example/team-", "path component"},
		{"mirror_x.example", "not a DNS name"},
	} {
		_, err := ParseRegistry("--registry", tc.value)
		if err == nil {
			t.Errorf("--registry %q was accepted", tc.value)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, tc.want) || !strings.HasPrefix(msg, "--registry ") || !strings.Contains(msg, "e.g. "+exampleRegistry) {
			t.Errorf("--registry %q: %q; want the flag, %q and an example", tc.value, msg, tc.want)
		}
	}
	for _, tc := range []struct{ value, want string }{
		{"", "is empty"},
		{"ghcr.io/apiproxy/agent:v1 ", "contains spaces"},
		{"ghcr.io/apiproxy/agent :v1", "contains spaces"},
		{"https://ghcr.io/apiproxy/agent:v1", "URL scheme"},
		{"ghcr.io/apiproxy/Agent:v1", "not an image reference"},
		{"ghcr.io/apiproxy/agent:", "not an image reference"},
		{"ghcr.io/apiproxy/agent@sha256:abc", "not an image reference"},
		{"ghcr.io/apiproxy/agent:v1@sha256", "not an image reference"},
		{"ghcr.io/apiproxy/agent:v!", "not an image reference"},
		{"ghcr.io//agent:v1", "empty path component"},
	} {
		_, err := Parse("--image", tc.value)
		if err == nil {
			t.Errorf("--image %q was accepted", tc.value)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, tc.want) || !strings.HasPrefix(msg, "--image ") || !strings.Contains(msg, "e.g. "+exampleImage) {
			t.Errorf("--image %q: %q; want the flag, %q and an example", tc.value, msg, tc.want)
		}
	}
}

func TestRunningDigest(t *testing.T) {
	for imageID, want := range map[string]string{
		"mirror.example/team/agent@" + digestA:                digestA,
		"docker-pullable://ghcr.io/apiproxy/agent@" + digestB: digestB,
		"ghcr.io/apiproxy/agent:v1@" + digestA:                digestA,
		digestA:                                               "", // a local image ID: no registry digest
		"":                                                    "",
		"ghcr.io/apiproxy/agent@sha256:not-hex":               "",
		"ghcr.io/apiproxy/agent@sha256:" + strings.Repeat("A", 64): "",
	} {
		h, ok := RunningDigest(imageID)
		if got := h.String(); (want == "" && ok) || (want != "" && got != want) {
			t.Errorf("RunningDigest(%q) = %s, %v; want %q", imageID, got, ok, want)
		}
	}
	h, _ := ParseDigest(digestA)
	if got := Short(h); got != "sha256:1234567890ab…" {
		t.Errorf("Short = %s", got)
	}
}
