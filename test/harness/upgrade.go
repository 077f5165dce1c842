package harness

import (
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
	bins := map[string]string{}
	for _, arch := range AgentPlatforms {
		bins[arch] = build(t, "./cmd/agent", "linux", arch, version)
	}
	s.once.Do(func() {
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
