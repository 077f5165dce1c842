package release_test

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/apiproxy/apiproxy/pkg/version"
	"github.com/apiproxy/apiproxy/test/harness"
)

// A user's path: krew installs the linux/amd64 archive from the rendered manifest, and the plugin
// krew linked into $KREW_ROOT/bin is the release (its version, and the agent image pinned by the
// digest of the release's index). krew runs without any network (its own network namespace), so
// nothing it does can depend on the index or GitHub.
func TestKrewInstallsTheRelease(t *testing.T) {
	dist := releaseDir(t)
	manifest := filepath.Join(dist, "apiproxy.yaml")
	root := t.TempDir()
	out := runKrew(t, root, "", "", "install", "--manifest", manifest, "--archive", filepath.Join(dist, pluginPlatforms[0].archive))
	if !strings.Contains(out, "Installed plugin: apiproxy") {
		t.Fatalf("krew install did not say it installed the plugin:\n%s", out)
	}

	bin := filepath.Join(root, "bin", "kubectl-apiproxy")
	if fi, err := os.Lstat(bin); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("krew left no symlink %s (%v)", bin, err)
	}
	cmd := exec.Command(bin, "version", "-o", "json")
	cmd.Env = append(os.Environ(), "KUBECONFIG="+filepath.Join(root, "no-kubeconfig"))
	b, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s version -o json: %v", bin, err)
	}
	var v version.Info
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("version -o json: %v\n%s", err, b)
	}
	if v.Version != releaseVersion {
		t.Errorf("the plugin krew installed says version %q, want %s", v.Version, releaseVersion)
	}
	if want := testImageRepo + ":" + releaseVersion + "@" + layoutIndexDigest(t, filepath.Join(dist, "agent-image")).String(); v.AgentImage != want {
		t.Errorf("the plugin krew installed pins agent image %q, want %s (the release's index)", v.AgentImage, want)
	}

	// krew's receipt (what `krew upgrade` and `krew uninstall` read): the manifest's plugin, from
	// outside any index.
	receipt, err := os.ReadFile(filepath.Join(root, "receipts", "apiproxy.yaml"))
	if err != nil {
		t.Fatalf("krew wrote no receipt: %v", err)
	}
	var r struct {
		Spec   struct{ Version string }
		Status struct{ Source struct{ Name string } }
	}
	if err := yaml.Unmarshal(receipt, &r); err != nil {
		t.Fatalf("krew's receipt: %v\n%s", err, receipt)
	}
	if r.Spec.Version != releaseVersion || r.Status.Source.Name != "detached" {
		t.Errorf("krew's receipt has version %q from %q, want %s from detached (--manifest):\n%s", r.Spec.Version, r.Status.Source.Name, releaseVersion, receipt)
	}
}

// validate-krew-manifest's checks on the rendered manifest: its structural part (the plugin, the
// platforms' selectors, none overlapping) as the tool runs it, and then its install step, for
// every platform, with the release's archive instead of a download (the tool would fetch each
// uri): krew installs it as that platform and the install holds the binary and the LICENSE.
func TestKrewValidatesTheManifest(t *testing.T) {
	dist := releaseDir(t)
	manifest := filepath.Join(dist, "apiproxy.yaml")
	out, err := validateManifest(t, manifest)
	if err != nil {
		t.Fatalf("validate-krew-manifest rejects %s: %v\n%s", manifest, err, out)
	}
	for _, want := range []string{"structural validation OK", "all spec.platform[] items are used", "no overlapping spec.platform[].selector"} {
		if !strings.Contains(out, want) {
			t.Errorf("validate-krew-manifest did not report %q:\n%s", want, out)
		}
	}

	for _, p := range pluginPlatforms {
		t.Run(p.os+"/"+p.arch, func(t *testing.T) {
			root := t.TempDir()
			runKrew(t, root, p.os, p.arch, "install", "--manifest", manifest, "--archive", filepath.Join(dist, p.archive))
			dirs, _ := filepath.Glob(filepath.Join(root, "store", "apiproxy", "*"))
			if len(dirs) != 1 {
				t.Fatalf("krew's store holds %v, want one version of apiproxy", dirs)
			}
			for _, f := range []string{p.bin, "LICENSE"} {
				if _, err := os.Stat(filepath.Join(dirs[0], f)); err != nil {
					t.Errorf("the %s/%s install lacks %s: %v", p.os, p.arch, f, err)
				}
			}
		})
	}
}

// The checks above can fail: krew refuses manifests broken the ways a release could break them.
func TestKrewRejectsBrokenManifests(t *testing.T) {
	dist := releaseDir(t)
	archive := filepath.Join(dist, pluginPlatforms[0].archive)
	for _, tc := range []struct {
		name string
		edit func(platforms []any) []any
		// install is true when krew install must fail, false when validate-krew-manifest must.
		install bool
		want    string
	}{
		{"the archive's sha256 is another file's", func(ps []any) []any {
			ps[linuxAMD64(t, ps)].(map[string]any)["sha256"] = strings.Repeat("ab", 32)
			return ps
		}, true, "checksum does not match"},
		{"no linux/amd64 platform", func(ps []any) []any {
			i := linuxAMD64(t, ps)
			return append(ps[:i:i], ps[i+1:]...)
		}, true, "does not offer installation for this platform"},
		{"two platforms select linux/amd64", func(ps []any) []any {
			return append(ps, ps[linuxAMD64(t, ps)])
		}, false, "overlapping platform selectors"},
		{"a platform without sha256", func(ps []any) []any {
			delete(ps[linuxAMD64(t, ps)].(map[string]any), "sha256")
			return ps
		}, false, "`sha256` sum has to be set"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			broken := brokenManifest(t, filepath.Join(dist, "apiproxy.yaml"), tc.edit)
			var out string
			var err error
			if tc.install {
				out, err = krew(t, t.TempDir(), "linux", "amd64", "install", "--manifest", broken, "--archive", archive)
			} else {
				out, err = validateManifest(t, broken)
			}
			if err == nil {
				t.Fatalf("krew accepted the broken manifest:\n%s", out)
			}
			if !strings.Contains(out, tc.want) {
				t.Errorf("krew's error does not say %q:\n%s", tc.want, out)
			}
		})
	}
}

// krewTool is a binary hack/test-assets.sh builds from sigs.k8s.io/krew into the API server assets
// directory.
func krewTool(t *testing.T, name string) string {
	t.Helper()
	p := filepath.Join(harness.AssetsDir(t), name)
	if _, err := os.Stat(p); err != nil {
		msg := name + " is not built: run hack/test-assets.sh (it builds krew v0.4.3 from the Go module proxy)"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return p
}

// krew runs krew with root as KREW_ROOT and HOME, as platform os/arch when os is set, with no
// upgrade check, and, as root, in a network namespace of its own (loopback only, down): krew cannot
// reach anything.
func krew(t *testing.T, root, goos, goarch string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(krewTool(t, "krew"), args...)
	cmd.Env = []string{"KREW_ROOT=" + root, "HOME=" + root, "PATH=" + filepath.Join(root, "bin") + ":/usr/bin:/bin", "KREW_NO_UPGRADE_CHECK=1"}
	if goos != "" {
		cmd.Env = append(cmd.Env, "KREW_OS="+goos, "KREW_ARCH="+goarch)
	}
	isolate(cmd)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Stdin = nil
	err := cmd.Run()
	return out.String(), err
}

func runKrew(t *testing.T, root, goos, goarch string, args ...string) string {
	t.Helper()
	out, err := krew(t, root, goos, goarch, args...)
	if err != nil {
		t.Fatalf("krew %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// validateManifest runs validate-krew-manifest's structural checks (-skip-install: its install step
// downloads every platform's uri; TestKrewValidatesTheManifest does that step with the archives).
func validateManifest(t *testing.T, manifest string) (string, error) {
	t.Helper()
	cmd := exec.Command(krewTool(t, "validate-krew-manifest"), "-manifest", manifest, "-skip-install")
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + t.TempDir()}
	isolate(cmd)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// isolate runs cmd in a new network namespace when this test runs as root (only a loopback that is
// down): a tool that tried to reach the network would fail instead of reaching out.
func isolate(cmd *exec.Cmd) {
	if os.Geteuid() == 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	}
}

// brokenManifest writes a copy of the manifest, named apiproxy.yaml as krew wants, whose platforms
// edit changed.
func brokenManifest(t *testing.T, manifest string, edit func([]any) []any) string {
	t.Helper()
	b, err := os.ReadFile(manifest)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := yaml.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	spec := m["spec"].(map[string]any)
	spec["platforms"] = edit(spec["platforms"].([]any))
	if b, err = yaml.Marshal(m); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "apiproxy.yaml")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// linuxAMD64 is the index of the platform whose selector names linux and amd64.
func linuxAMD64(t *testing.T, platforms []any) int {
	t.Helper()
	for i, p := range platforms {
		sel, _ := json.Marshal(p.(map[string]any)["selector"])
		if strings.Contains(string(sel), `"linux"`) && strings.Contains(string(sel), `"amd64"`) {
			return i
		}
	}
	t.Fatalf("the manifest has no linux/amd64 platform: %v", platforms)
	return -1
}
