package harness

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/apiproxy/apiproxy/internal/imagebuild"
	"github.com/apiproxy/apiproxy/pkg/version"
)

// The image names of the images the tests import into the test node's containerd (never pulled):
// pods must use imagePullPolicy IfNotPresent or Never.
const (
	PauseImageRef = "apiproxy.local/pause:test"
	AppImageRef   = "apiproxy.local/app:test"
)

// AgentRepository is the agent's repository in the real node's registry; AgentIndex's images are
// pushed there with the tag of this build's version (what the plugin under test names).
const AgentRepository = "apiproxy/agent"

// AgentPlatforms are the architectures of the agent's image index, as `make release` builds it.
var AgentPlatforms = []string{"amd64", "arm64"}

var images struct {
	mu    sync.Mutex
	built map[string]*builtBinary
}

// imageArchive builds the image named ref once per test process, into the directory RunTests removes.
func imageArchive(t testing.TB, ref string, spec func() (imagebuild.Spec, error)) string {
	t.Helper()
	images.mu.Lock()
	if images.built == nil {
		images.built = map[string]*builtBinary{}
	}
	b := images.built[ref]
	if b == nil {
		b = &builtBinary{}
		images.built[ref] = b
	}
	images.mu.Unlock()
	b.once.Do(func() {
		s, err := spec()
		if err != nil {
			b.err = fmt.Errorf("image %s: %w", ref, err)
			return
		}
		img, err := imagebuild.Build(s)
		if err != nil {
			b.err = fmt.Errorf("image %s: %w", ref, err)
			return
		}
		binaries.mu.Lock()
		dir := binaries.dir
		binaries.mu.Unlock()
		b.path = filepath.Join(dir, filepath.Base(ref)+".tar")
		if err := imagebuild.WriteArchive(b.path, ref, img); err != nil {
			b.err = fmt.Errorf("image %s: %w", ref, err)
		}
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

// agentIndex is AgentIndex's result, built once per test process.
var agentIndex struct {
	once sync.Once
	idx  v1.ImageIndex
	err  error
}

// AgentIndex returns the agent's multi-platform image index (linux/amd64 and linux/arm64), built once
// per test process by the code `make release` uses (imagebuild.AgentIndex: each platform's static
// agent, cross-compiled here, plus that architecture's iptables packages from Debian), so the tests
// pull exactly what a release publishes. The arm64 packages need `dpkg --add-architecture arm64`
// and `apt-get update` (.ci/run does both). The package must run its tests through RunTests.
func AgentIndex(t testing.TB) v1.ImageIndex {
	t.Helper()
	bins := map[string]string{}
	for _, arch := range AgentPlatforms {
		bins[arch] = LinuxBinary(t, "./cmd/agent", arch)
	}
	agentIndex.once.Do(func() {
		agentIndex.idx, agentIndex.err = imagebuild.AgentIndex(imagebuild.IndexOptions{
			Binaries: bins,
			License:  filepath.Join(RepoRoot(t), "LICENSE"),
			DebCache: debCache(),
			Version:  version.Version,
			Source:   "https://github.com/apiproxy/apiproxy",
		})
	})
	if agentIndex.err != nil {
		t.Fatalf("agent image index: %v", agentIndex.err)
	}
	return agentIndex.idx
}

// AgentRepoTag is the repository and tag AgentIndex is pushed as: "apiproxy/agent:<version>".
func AgentRepoTag() string { return AgentRepository + ":" + version.Version }

// PauseImage returns the pod sandbox image (test/images/pause) and its archive.
func PauseImage(t testing.TB) (ref, archive string) {
	t.Helper()
	bin := Binary(t, "./test/images/pause")
	return PauseImageRef, imageArchive(t, PauseImageRef, func() (imagebuild.Spec, error) {
		return imagebuild.Spec{
			Files:      []imagebuild.File{{Path: "/pause", Source: bin, Mode: 0o755}},
			Entrypoint: []string{"/pause"},
			User:       "65535:65535",
		}, nil
	})
}

// AppImage returns the test workload image (test/images/app: serve, echo, get, kube-get; no shell)
// and its archive.
func AppImage(t testing.TB) (ref, archive string) {
	t.Helper()
	bin := Binary(t, "./test/images/app")
	return AppImageRef, imageArchive(t, AppImageRef, func() (imagebuild.Spec, error) {
		return imagebuild.Spec{
			Files:      []imagebuild.File{{Path: "/app", Source: bin, Mode: 0o755}, {Path: "/tmp", Dir: true, Mode: 0o1777}},
			Entrypoint: []string{"/app"},
		}, nil
	})
}

// debCache is where the agent image's Debian packages are kept between runs (as `make image` does).
func debCache() string {
	dir, err := os.UserCacheDir()
	if err != nil {
		dir = os.TempDir()
	}
	return filepath.Join(dir, "apiproxy", "debs")
}
