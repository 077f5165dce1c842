// Package release_test tests `make release`: it runs the real target once per test process (releaseDir)
// and checks what it wrote as its users will read it: checksums with sha256sum, the krew manifest's
// sha256 against the archives, the OCI layout with go-containerregistry, every ELF file of each
// platform's image against that platform, the plugin's pinned agent through `version -o json`, the
// SBOMs as CycloneDX; and a second release of the same tree for the same bytes.
//
// The release runs in a snapshot of the working tree (a local clone of HEAD with the uncommitted
// files copied over), so edits made while the test runs cannot make the two releases differ.
package release_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/apiproxy/apiproxy/internal/imagebuild"
)

// The version the test releases, and the repository its plugin pins.
const (
	releaseVersion = "v9.9.9"
	testImageRepo  = "ghcr.io/apiproxy/agent"
	module         = "github.com/apiproxy/apiproxy"
)

var shared struct {
	dir  string // removed by TestMain
	once sync.Once
	snap string // the working tree's snapshot
	dist string // the first release
	err  error

	secondOnce sync.Once
	second     string
	secondErr  error
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "apiproxy-release-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	shared.dir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// releaseDir returns the directory `make release VERSION=v9.9.9` wrote, run once per test process
// (the first caller waits for it, about two minutes with a warm build cache). Without what the
// release needs (Debian's apt with the arm64 architecture, git, go) the test is skipped with the fix,
// and fails under CI=true; -short skips it.
func releaseDir(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: the release builds the plugin for five platforms and the agent image for two")
	}
	prerequisites(t)
	shared.once.Do(func() {
		shared.snap, shared.err = snapshot(repoRoot(t), filepath.Join(shared.dir, "src"))
		if shared.err == nil {
			shared.dist = filepath.Join(shared.dir, "dist1")
			shared.err = makeRelease(shared.snap, shared.dist)
		}
	})
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.dist
}

// secondRelease is another `make release` of the same snapshot into another directory.
func secondRelease(t *testing.T) string {
	t.Helper()
	releaseDir(t)
	shared.secondOnce.Do(func() {
		shared.second = filepath.Join(shared.dir, "dist2")
		shared.secondErr = makeRelease(shared.snap, shared.second)
	})
	if shared.secondErr != nil {
		t.Fatal(shared.secondErr)
	}
	return shared.second
}

func prerequisites(t *testing.T) {
	t.Helper()
	var missing []string
	for _, tool := range []string{"git", "go", "make", "dpkg-deb"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool+" is not installed")
		}
	}
	for _, arch := range []string{"amd64", "arm64"} {
		if err := imagebuild.AptReady(arch); err != nil {
			missing = append(missing, err.Error())
		}
	}
	if len(missing) > 0 {
		msg := "make release cannot run here: " + strings.Join(missing, "; ")
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
}

// makeRelease runs the Makefile's target as a maintainer does, in src, into dist. SOURCE_DATE_EPOCH
// is unset so the release takes the commit's time, as it does by default.
func makeRelease(src, dist string) error {
	cmd := exec.Command("make", "--no-print-directory", "release", "VERSION="+releaseVersion, "DIST="+dist, "IMAGE_REPO="+testImageRepo)
	cmd.Dir = src
	cmd.Env = withoutEnv(os.Environ(), "SOURCE_DATE_EPOCH", "VERSION", "DIST", "IMAGE_REPO", "GOOS", "GOARCH", "GOFLAGS")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("make release VERSION=%s DIST=%s: %v\n%s", releaseVersion, dist, err, out.String())
	}
	if err := os.WriteFile(dist+".log", out.Bytes(), 0o644); err != nil {
		return err
	}
	return nil
}

func withoutEnv(env []string, names ...string) []string {
	var out []string
outer:
	for _, kv := range env {
		for _, n := range names {
			if strings.HasPrefix(kv, n+"=") {
				continue outer
			}
		}
		out = append(out, kv)
	}
	return out
}

// snapshot makes dst a local clone of root's HEAD (a plain clone: cyclonedx-gomod reads the
// repository with go-git, which cannot follow a --shared clone's alternates) with root's uncommitted and
// untracked, not ignored, files copied over and its deleted files deleted: the working tree as it is
// now, with git history, so the release's commit and commit time are root's.
func snapshot(root, dst string) (string, error) {
	if out, err := exec.Command("git", "clone", "--quiet", root, dst).CombinedOutput(); err != nil {
		return "", fmt.Errorf("git clone %s: %v\n%s", root, err, out)
	}
	out, err := exec.Command("git", "-C", root, "ls-files", "-z", "--cached", "--others", "--exclude-standard").Output()
	if err != nil {
		return "", fmt.Errorf("git ls-files in %s: %v", root, err)
	}
	for _, rel := range strings.Split(strings.TrimRight(string(out), "\x00"), "\x00") {
		if rel == "" {
			continue
		}
		src, to := filepath.Join(root, rel), filepath.Join(dst, rel)
		fi, err := os.Lstat(src)
		if os.IsNotExist(err) {
			if err := os.RemoveAll(to); err != nil {
				return "", err
			}
			continue
		}
		if err != nil {
			return "", err
		}
		if err := copyEntry(src, to, fi); err != nil {
			return "", err
		}
	}
	return dst, nil
}

func copyEntry(src, dst string, fi os.FileInfo) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	if err := os.RemoveAll(dst); err != nil {
		return err
	}
	switch {
	case fi.Mode()&os.ModeSymlink != 0:
		target, err := os.Readlink(src)
		if err != nil {
			return err
		}
		return os.Symlink(target, dst)
	case fi.Mode().IsRegular():
		data, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, data, fi.Mode().Perm())
	}
	return nil // a directory (a submodule) or something git does not track
}

// repoRoot is the directory holding go.mod, two levels up from this package.
func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); err != nil {
		t.Fatalf("no go.mod in %s: run the test from the repository", dir)
	}
	return dir
}

// hostArchive is the plugin archive this machine can run.
func hostArchive() string {
	ext := ".tar.gz"
	if runtime.GOOS == "windows" {
		ext = ".zip"
	}
	return fmt.Sprintf("kubectl-apiproxy_%s_%s_%s%s", releaseVersion, runtime.GOOS, runtime.GOARCH, ext)
}
