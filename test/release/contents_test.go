package release_test

import (
	"archive/tar"
	"archive/zip"
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"debug/elf"
	"debug/macho"
	"debug/pe"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"sigs.k8s.io/yaml"
)

// pluginPlatforms are the platforms of the krew manifest, each with its archive.
var pluginPlatforms = []struct{ os, arch, archive, bin string }{
	{"linux", "amd64", "kubectl-apiproxy_v9.9.9_linux_amd64.tar.gz", "kubectl-apiproxy"},
	{"linux", "arm64", "kubectl-apiproxy_v9.9.9_linux_arm64.tar.gz", "kubectl-apiproxy"},
	{"darwin", "amd64", "kubectl-apiproxy_v9.9.9_darwin_amd64.tar.gz", "kubectl-apiproxy"},
	{"darwin", "arm64", "kubectl-apiproxy_v9.9.9_darwin_arm64.tar.gz", "kubectl-apiproxy"},
	{"windows", "amd64", "kubectl-apiproxy_v9.9.9_windows_amd64.zip", "kubectl-apiproxy.exe"},
}

// The release directory holds exactly what a release publishes, and checksums.txt covers every file
// in it: sha256sum -c agrees, and so does the test's own hashing.
func TestReleaseFilesAndChecksums(t *testing.T) {
	dist := releaseDir(t)
	want := []string{"agent-image", "agent-image.oci.tar", "apiproxy.yaml", "checksums.txt"}
	for _, s := range sbomFiles() {
		want = append(want, s.file)
	}
	for _, p := range pluginPlatforms {
		want = append(want, p.archive)
	}
	sort.Strings(want)
	var got []string
	entries, err := os.ReadDir(dist)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		got = append(got, e.Name())
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("release files:\n got %v\nwant %v", got, want)
	}

	sums := readChecksums(t, filepath.Join(dist, "checksums.txt"))
	for _, e := range entries {
		if !e.Type().IsRegular() || e.Name() == "checksums.txt" {
			continue
		}
		sum, ok := sums[e.Name()]
		if !ok {
			t.Errorf("checksums.txt does not list %s", e.Name())
			continue
		}
		if actual := fileSHA256(t, filepath.Join(dist, e.Name())); actual != sum {
			t.Errorf("checksums.txt: %s %s, the file's is %s", e.Name(), sum, actual)
		}
		delete(sums, e.Name())
	}
	for name := range sums {
		t.Errorf("checksums.txt lists %s, which the release did not write", name)
	}
	if _, err := exec.LookPath("sha256sum"); err == nil {
		cmd := exec.Command("sha256sum", "--check", "--strict", "checksums.txt")
		cmd.Dir = dist
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("sha256sum --check checksums.txt: %v\n%s", err, out)
		}
	}
}

// Each archive holds the plugin built for its platform (the executable format and CPU say so) and
// LICENSE, at the top level where plugins/krew.yaml's files: take them from.
func TestPluginArchives(t *testing.T) {
	dist := releaseDir(t)
	for _, p := range pluginPlatforms {
		files := readArchive(t, filepath.Join(dist, p.archive))
		var names []string
		for n := range files {
			names = append(names, n)
		}
		sort.Strings(names)
		if strings.Join(names, " ") != strings.Join([]string{"LICENSE", p.bin}, " ") {
			t.Errorf("%s holds %v, want %s and LICENSE", p.archive, names, p.bin)
			continue
		}
		if got := binaryPlatform(files[p.bin]); got != p.os+"/"+p.arch {
			t.Errorf("%s: %s is a %s executable, want %s/%s", p.archive, p.bin, got, p.os, p.arch)
		}
	}
}

// The manifest is plugins/krew.yaml rendered for the release: the version, and for each platform the
// download URL of its archive and that archive's sha256.
func TestKrewManifestPointsAtTheArchives(t *testing.T) {
	dist := releaseDir(t)
	data, err := os.ReadFile(filepath.Join(dist, "apiproxy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		Metadata struct{ Name string }
		Spec     struct {
			Version   string
			Platforms []struct {
				Selector struct {
					MatchLabels map[string]string `json:"matchLabels"`
				}
				URI    string
				Sha256 string
				Bin    string
			}
		}
	}
	if err := yaml.Unmarshal(data, &m); err != nil {
		t.Fatalf("apiproxy.yaml: %v", err)
	}
	if m.Metadata.Name != "apiproxy" || m.Spec.Version != releaseVersion {
		t.Errorf("name %q version %q, want apiproxy %s", m.Metadata.Name, m.Spec.Version, releaseVersion)
	}
	if len(m.Spec.Platforms) != len(pluginPlatforms) {
		t.Errorf("%d platforms, want %d", len(m.Spec.Platforms), len(pluginPlatforms))
	}
	for _, pl := range m.Spec.Platforms {
		osName, arch := pl.Selector.MatchLabels["os"], pl.Selector.MatchLabels["arch"]
		found := false
		for _, p := range pluginPlatforms {
			if p.os != osName || p.arch != arch {
				continue
			}
			found = true
			if want := "https://github.com/apiproxy/apiproxy/releases/download/" + releaseVersion + "/" + p.archive; pl.URI != want {
				t.Errorf("%s/%s uri %s, want %s", osName, arch, pl.URI, want)
			}
			if want := fileSHA256(t, filepath.Join(dist, p.archive)); pl.Sha256 != want {
				t.Errorf("%s/%s sha256 %s, the archive's is %s", osName, arch, pl.Sha256, want)
			}
		}
		if !found {
			t.Errorf("manifest platform %s/%s has no archive", osName, arch)
		}
	}
}

// The plugin the release built defaults to the agent image by the digest of the index the release
// wrote, and says so in `version -o json`, with the release's version, commit and time.
func TestPluginPinsTheAgentIndex(t *testing.T) {
	dist := releaseDir(t)
	digest := layoutIndexDigest(t, filepath.Join(dist, "agent-image"))
	files := readArchive(t, filepath.Join(dist, hostArchive()))
	bin := filepath.Join(t.TempDir(), "kubectl-apiproxy")
	if runtime.GOOS == "windows" {
		bin += ".exe"
	}
	if err := os.WriteFile(bin, files[filepath.Base(bin)], 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "version", "-o", "json").Output()
	if err != nil {
		t.Fatalf("kubectl-apiproxy version -o json: %v", err)
	}
	var v struct {
		Version, GitCommit, BuildDate, AgentImage string
	}
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatalf("version -o json printed %q: %v", out, err)
	}
	if want := testImageRepo + ":" + releaseVersion + "@" + digest.String(); v.AgentImage != want {
		t.Errorf("agentImage %q, want %q (the index the release wrote)", v.AgentImage, want)
	}
	head := git(t, "rev-parse", "HEAD")
	if v.Version != releaseVersion || v.GitCommit == "" || !strings.HasPrefix(head, v.GitCommit) {
		t.Errorf("version %q commit %q, want %s and a prefix of %s", v.Version, v.GitCommit, releaseVersion, head)
	}
	if want := commitTime(t).Format(time.RFC3339); v.BuildDate != want {
		t.Errorf("buildDate %q, want the commit's time %s (SOURCE_DATE_EPOCH's default)", v.BuildDate, want)
	}
}

// sbomFiles are the SBOMs a release writes: one per plugin platform and one per image platform.
func sbomFiles() []struct{ file, main, os, arch string } {
	var out []struct{ file, main, os, arch string }
	for _, p := range pluginPlatforms {
		out = append(out, struct{ file, main, os, arch string }{
			"kubectl-apiproxy_" + releaseVersion + "_" + p.os + "_" + p.arch + ".cdx.json", "cmd/kubectl-apiproxy", p.os, p.arch})
	}
	for _, arch := range []string{"amd64", "arm64"} {
		out = append(out, struct{ file, main, os, arch string }{
			"agent_" + releaseVersion + "_linux_" + arch + ".cdx.json", "cmd/agent", "linux", arch})
	}
	return out
}

// The SBOMs are CycloneDX JSON naming the module, the main package and the platform they describe,
// with the modules linked in and neither serial number nor timestamp (which would change every run).
func TestSBOMs(t *testing.T) {
	dist := releaseDir(t)
	for _, s := range sbomFiles() {
		data, err := os.ReadFile(filepath.Join(dist, s.file))
		if err != nil {
			t.Error(err)
			continue
		}
		var bom struct {
			BOMFormat    string `json:"bomFormat"`
			SpecVersion  string `json:"specVersion"`
			SerialNumber string `json:"serialNumber"`
			Metadata     struct {
				Timestamp string `json:"timestamp"`
				Component struct {
					Name, Purl string
				} `json:"component"`
			} `json:"metadata"`
			Components []struct{ Name, Version string } `json:"components"`
		}
		if err := json.Unmarshal(data, &bom); err != nil {
			t.Errorf("%s: %v", s.file, err)
			continue
		}
		if bom.BOMFormat != "CycloneDX" || bom.SpecVersion == "" {
			t.Errorf("%s: bomFormat %q specVersion %q, want CycloneDX", s.file, bom.BOMFormat, bom.SpecVersion)
		}
		purl := bom.Metadata.Component.Purl
		if bom.Metadata.Component.Name != module || !strings.HasSuffix(purl, "#"+s.main) ||
			!strings.Contains(purl, "goos="+s.os) || !strings.Contains(purl, "goarch="+s.arch) {
			t.Errorf("%s: component %q (%s), want %s#%s for %s/%s", s.file, bom.Metadata.Component.Name, purl, module, s.main, s.os, s.arch)
		}
		if bom.SerialNumber != "" || bom.Metadata.Timestamp != "" {
			t.Errorf("%s: serial %q timestamp %q make it differ between runs", s.file, bom.SerialNumber, bom.Metadata.Timestamp)
		}
		var clientGo bool
		for _, c := range bom.Components {
			clientGo = clientGo || c.Name == "k8s.io/client-go"
		}
		if !clientGo {
			t.Errorf("%s: no k8s.io/client-go among %d components", s.file, len(bom.Components))
		}
	}
}

// A second release of the same tree writes the same bytes: the same index digest and the same
// checksums of every file (archives, manifest, SBOMs, the image layout's archive).
func TestReleaseIsReproducible(t *testing.T) {
	first, second := releaseDir(t), secondRelease(t)
	d1, d2 := layoutIndexDigest(t, filepath.Join(first, "agent-image")), layoutIndexDigest(t, filepath.Join(second, "agent-image"))
	if d1 != d2 {
		t.Errorf("two releases of one tree: index digests %s and %s", d1, d2)
	}
	s1, err := os.ReadFile(filepath.Join(first, "checksums.txt"))
	if err != nil {
		t.Fatal(err)
	}
	s2, err := os.ReadFile(filepath.Join(second, "checksums.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(s1, s2) {
		t.Errorf("two releases of one tree differ:\n%s\n---\n%s", s1, s2)
	}
}

// --- helpers ---

func readChecksums(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sums := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		sum, name, ok := strings.Cut(sc.Text(), "  ")
		if !ok || len(sum) != 64 {
			t.Fatalf("checksums.txt line %q is not sha256sum's `HASH  NAME`", sc.Text())
		}
		sums[name] = sum
	}
	return sums
}

func fileSHA256(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// readArchive returns a .tar.gz's or .zip's regular files by name.
func readArchive(t *testing.T, path string) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	if strings.HasSuffix(path, ".zip") {
		zr, err := zip.OpenReader(path)
		if err != nil {
			t.Fatal(err)
		}
		defer zr.Close()
		for _, f := range zr.File {
			r, err := f.Open()
			if err != nil {
				t.Fatal(err)
			}
			data, err := io.ReadAll(r)
			r.Close()
			if err != nil {
				t.Fatal(err)
			}
			files[f.Name] = data
		}
		return files
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files[h.Name] = data
	}
}

// binaryPlatform reads the executable format and machine: "linux/arm64", "darwin/amd64",
// "windows/amd64", or what it is not.
func binaryPlatform(data []byte) string {
	r := bytes.NewReader(data)
	if f, err := elf.NewFile(r); err == nil {
		return "linux/" + elfArch(f.Machine)
	}
	if f, err := macho.NewFile(r); err == nil {
		switch f.Cpu {
		case macho.CpuAmd64:
			return "darwin/amd64"
		case macho.CpuArm64:
			return "darwin/arm64"
		}
		return "darwin/" + f.Cpu.String()
	}
	if f, err := pe.NewFile(r); err == nil {
		switch f.Machine {
		case pe.IMAGE_FILE_MACHINE_AMD64:
			return "windows/amd64"
		case pe.IMAGE_FILE_MACHINE_ARM64:
			return "windows/arm64"
		}
		return "windows/" + strconv.Itoa(int(f.Machine))
	}
	return "not an executable"
}

func elfArch(m elf.Machine) string {
	switch m {
	case elf.EM_X86_64:
		return "amd64"
	case elf.EM_AARCH64:
		return "arm64"
	}
	return m.String()
}

// layoutIndexDigest is the digest of the image index that the layout's index.json names.
func layoutIndexDigest(t *testing.T, dir string) v1.Hash {
	t.Helper()
	lp, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatalf("%s is not an OCI layout: %v", dir, err)
	}
	m, err := lp.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Manifests) != 1 {
		t.Fatalf("%s/index.json has %d entries, want the agent index only", dir, len(m.Manifests))
	}
	return m.Manifests[0].Digest
}

// git runs git in the snapshot the release was made from (the repository's HEAD may have moved on).
func git(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("git", append([]string{"-C", shared.snap}, args...)...).Output()
	if err != nil {
		t.Fatalf("git %v: %v", args, err)
	}
	return strings.TrimSpace(string(out))
}

func commitTime(t *testing.T) time.Time {
	t.Helper()
	sec, err := strconv.ParseInt(git(t, "log", "-1", "--format=%ct"), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return time.Unix(sec, 0).UTC()
}
