package harness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/apiproxy/apiproxy/internal/imagebuild"
)

// AgentImageVersion returns an agent image built like AgentImage from the same source, but with
// version stamped into the binary (-X pkg/version.Version, as `make build` does for a release) and
// named apiproxy.local/agent:<version>: a second release to upgrade to, with another digest. The
// package must run its tests through RunTests.
func AgentImageVersion(t testing.TB, version string) (ref, archive string) {
	t.Helper()
	ref = "apiproxy.local/agent:" + version
	return ref, imageArchive(t, ref, func() (imagebuild.Spec, error) {
		bin, err := buildStamped(t, version)
		if err != nil {
			return imagebuild.Spec{}, err
		}
		return imagebuild.AgentSpec(imagebuild.AgentOptions{
			Binary:   bin,
			License:  filepath.Join(RepoRoot(t), "LICENSE"),
			DebCache: debCache(),
		})
	})
}

// buildStamped builds ./cmd/agent with version stamped in, into the directory RunTests removes.
func buildStamped(t testing.TB, version string) (string, error) {
	Binary(t, "./cmd/agent") // creates the directory (and the plain agent, which the tests use anyway)
	binaries.mu.Lock()
	dir := binaries.dir
	binaries.mu.Unlock()
	out := filepath.Join(dir, "agent-"+version)
	cmd := exec.Command("go", "build", "-trimpath",
		"-ldflags", "-X github.com/apiproxy/apiproxy/pkg/version.Version="+version, "-o", out, "./cmd/agent")
	cmd.Dir = RepoRoot(t)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/agent (version %s): %v\n%s", version, err, b)
	}
	return out, nil
}
