package harness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/apiproxy/apiproxy/internal/imagebuild"
)

// stampedIndexes are AgentIndexVersion's results, one per version, built once per test process.
var stampedIndexes struct {
	mu    sync.Mutex
	built map[string]*stampedIndex
}

type stampedIndex struct {
	once sync.Once
	idx  v1.ImageIndex
	err  error
}

// AgentIndexVersion returns an agent image index built like AgentIndex from the same source, but with
// version stamped into each platform's binary (-X pkg/version.Version, as `make release` does) and in
// the index's annotations: a second release to upgrade to, with another digest. Push it with
// Cluster.PushIndex under AgentRepository + ":" + version. The package must run its tests through
// RunTests.
func AgentIndexVersion(t testing.TB, version string) v1.ImageIndex {
	t.Helper()
	stampedIndexes.mu.Lock()
	if stampedIndexes.built == nil {
		stampedIndexes.built = map[string]*stampedIndex{}
	}
	s := stampedIndexes.built[version]
	if s == nil {
		s = &stampedIndex{}
		stampedIndexes.built[version] = s
	}
	stampedIndexes.mu.Unlock()
	s.once.Do(func() {
		bins := map[string]string{}
		for _, arch := range AgentPlatforms {
			bin, err := buildStamped(t, version, arch)
			if err != nil {
				s.err = err
				return
			}
			bins[arch] = bin
		}
		s.idx, s.err = imagebuild.AgentIndex(imagebuild.IndexOptions{
			Binaries: bins,
			License:  filepath.Join(RepoRoot(t), "LICENSE"),
			DebCache: debCache(),
			Version:  version,
			Source:   "https://github.com/apiproxy/apiproxy",
		})
	})
	if s.err != nil {
		t.Fatalf("agent image index %s: %v", version, s.err)
	}
	return s.idx
}

// buildStamped builds ./cmd/agent for linux/goarch with version stamped in, into the directory
// RunTests removes.
func buildStamped(t testing.TB, version, goarch string) (string, error) {
	Binary(t, "./cmd/agent") // creates the directory (and the plain agent, which the tests use anyway)
	binaries.mu.Lock()
	dir := binaries.dir
	binaries.mu.Unlock()
	out := filepath.Join(dir, "linux-"+goarch+"-"+version, "agent")
	cmd := exec.Command("go", "build", "-trimpath",
		"-ldflags", "-X github.com/apiproxy/apiproxy/pkg/version.Version="+version, "-o", out, "./cmd/agent")
	cmd.Dir = RepoRoot(t)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+goarch)
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/agent (version %s, linux/%s): %v\n%s", version, goarch, err, b)
	}
	return out, nil
}
