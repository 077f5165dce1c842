package harness

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/apiproxy/apiproxy/internal/imagebuild"
)

// The image names the tests use. They live only in the test node's containerd (imported from the
// archives, never pulled): pods must use imagePullPolicy IfNotPresent or Never.
const (
	AgentImageRef = "apiproxy.local/agent:test"
	PauseImageRef = "apiproxy.local/pause:test"
	AppImageRef   = "apiproxy.local/app:test"
)

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

// AgentImage returns the agent image's name and archive, built once per test process by the same
// code as `make image` (internal/imagebuild.AgentSpec: the static agent plus Debian's iptables), so
// the tests run exactly that image. The package must run its tests through RunTests.
func AgentImage(t testing.TB) (ref, archive string) {
	t.Helper()
	agent := Binary(t, "./cmd/agent")
	return AgentImageRef, imageArchive(t, AgentImageRef, func() (imagebuild.Spec, error) {
		return imagebuild.AgentSpec(imagebuild.AgentOptions{
			Binary:   agent,
			License:  filepath.Join(RepoRoot(t), "LICENSE"),
			DebCache: debCache(),
		})
	})
}

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
