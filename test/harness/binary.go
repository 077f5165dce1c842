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
	binaries.mu.Lock()
	if binaries.built == nil {
		binaries.built = map[string]*builtBinary{}
	}
	b := binaries.built[pkg]
	if b == nil {
		b = &builtBinary{}
		binaries.built[pkg] = b
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
		cmd := exec.Command("go", "build", "-trimpath", "-o", b.path, pkg)
		cmd.Dir = RepoRoot(t)
		// Static, as `make` builds them (the Makefile exports CGO_ENABLED=0): the same binary runs on
		// the host and inside the images the real-node tests build from it.
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
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
