package harness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// binaries are the project's commands built for tests that run real processes, once per test
// process, in one directory that RunTests removes.
var binaries struct {
	mu    sync.Mutex
	dir   string
	built map[string]*builtBinary
}

type builtBinary struct {
	once sync.Once
	path string
	err  error
}

// Binary returns the path of the project's command pkg (e.g. "./cmd/agent"), built on first use
// and shared by every test of the process. A package using it must run its tests through RunTests
// (from TestMain), which deletes the binaries at the end.
func Binary(t testing.TB, pkg string) string {
	t.Helper()
	return build(t, pkg, "", "", "")
}

// LinuxBinary returns the project's command pkg cross-compiled for linux/goarch ("amd64", "arm64"),
// static like Binary: what goes into each platform's image of the agent's image index.
func LinuxBinary(t testing.TB, pkg, goarch string) string {
	t.Helper()
	return build(t, pkg, "linux", goarch, "")
}

// build builds pkg once per test process: for this machine, or for goos/goarch; with version
// stamped in (-X pkg/version.Version, as a release does) when it is not empty.
func build(t testing.TB, pkg, goos, goarch, version string) string {
	t.Helper()
	key := pkg
	if goos != "" {
		key = pkg + "@" + goos + "/" + goarch
	}
	if version != "" {
		key += "@" + version
	}
	binaries.mu.Lock()
	if binaries.built == nil {
		binaries.built = map[string]*builtBinary{}
	}
	b := binaries.built[key]
	if b == nil {
		b = &builtBinary{}
		binaries.built[key] = b
	}
	if binaries.dir == "" {
		dir, err := os.MkdirTemp("", "apiproxy-test-bin-")
		if err != nil {
			binaries.mu.Unlock()
			t.Fatal(err)
		}
		binaries.dir = dir
	}
	dir := binaries.dir
	binaries.mu.Unlock()

	b.once.Do(func() {
		b.path = filepath.Join(dir, filepath.Base(pkg))
		if goos != "" {
			b.path = filepath.Join(dir, goos+"-"+goarch, filepath.Base(pkg))
		}
		args := []string{"build", "-trimpath"}
		if version != "" {
			b.path = filepath.Join(filepath.Dir(b.path), version, filepath.Base(pkg))
			args = append(args, "-ldflags", "-X github.com/apiproxy/apiproxy/pkg/version.Version="+version)
		}
		cmd := exec.Command("go", append(args, "-o", b.path, pkg)...)
		cmd.Dir = RepoRoot(t)
		// Static, as `make` builds them (the Makefile exports CGO_ENABLED=0): the same binary runs on
		// the host and inside the images the real-node tests build from it.
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if goos != "" {
			cmd.Env = append(cmd.Env, "GOOS="+goos, "GOARCH="+goarch)
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("go build %s (%s): %v\n%s", pkg, key, err, out)
		}
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

// RunTests runs the package's tests and then removes the binaries Binary built:
//
//	func TestMain(m *testing.M) { os.Exit(harness.RunTests(m)) }
func RunTests(m *testing.M) int {
	code := m.Run()
	binaries.mu.Lock()
	defer binaries.mu.Unlock()
	if binaries.dir != "" {
		_ = os.RemoveAll(binaries.dir)
		binaries.dir = ""
	}
	return code
}
