package release_test

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// The layout holds one OCI image index named by the version, with exactly linux/amd64 and
// linux/arm64, annotated (and labelled) with the source, version, commit and commit time.
func TestAgentImageIndex(t *testing.T) {
	dist := releaseDir(t)
	lp, err := layout.ImageIndexFromPath(filepath.Join(dist, "agent-image"))
	if err != nil {
		t.Fatal(err)
	}
	outer, err := lp.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(outer.Manifests) != 1 || outer.Manifests[0].MediaType != types.OCIImageIndex ||
		outer.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != releaseVersion {
		t.Fatalf("index.json %+v, want one OCI image index named %s", outer.Manifests, releaseVersion)
	}
	idx, err := lp.ImageIndex(outer.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"org.opencontainers.image.source":   "https://" + module,
		"org.opencontainers.image.version":  releaseVersion,
		"org.opencontainers.image.revision": git(t, "rev-parse", "HEAD"),
		"org.opencontainers.image.created":  commitTime(t).Format(time.RFC3339),
	}
	checkMap(t, "index annotation", im.Annotations, want)
	labels := map[string]string{} // the config mirrors all but the time, which is its created field
	for k, v := range want {
		if k != "org.opencontainers.image.created" {
			labels[k] = v
		}
	}
	var platforms []string
	for _, d := range im.Manifests {
		platforms = append(platforms, d.Platform.String())
		img, err := idx.Image(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		m, err := img.Manifest()
		if err != nil {
			t.Fatal(err)
		}
		checkMap(t, d.Platform.String()+" manifest annotation", m.Annotations, want)
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if cf.OS != d.Platform.OS || cf.Architecture != d.Platform.Architecture || cf.Config.User != "65532:65532" ||
			strings.Join(cf.Config.Entrypoint, " ") != "/usr/local/bin/agent" || !cf.Created.Time.Equal(commitTime(t)) {
			t.Errorf("%s config: %s/%s user %q entrypoint %v created %s", d.Platform, cf.OS, cf.Architecture, cf.Config.User, cf.Config.Entrypoint, cf.Created)
		}
		checkMap(t, d.Platform.String()+" label", cf.Config.Labels, labels)
	}
	if strings.Join(platforms, " ") != "linux/amd64 linux/arm64" {
		t.Errorf("index platforms %v, want linux/amd64 linux/arm64", platforms)
	}
}

// Every ELF file in each platform's image is built for that platform's CPU (the agent, iptables'
// xtables-nft-multi, the C library and every shared library), and the dynamic loader each names
// (PT_INTERP: /lib64/ld-linux-x86-64.so.2, /lib/ld-linux-aarch64.so.1) exists in the image, through
// the merged-/usr links, as an ELF of the same CPU.
func TestAgentImageBinariesMatchTheirPlatform(t *testing.T) {
	dist := releaseDir(t)
	lp, err := layout.ImageIndexFromPath(filepath.Join(dist, "agent-image"))
	if err != nil {
		t.Fatal(err)
	}
	outer, err := lp.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	idx, err := lp.ImageIndex(outer.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range im.Manifests {
		arch := d.Platform.Architecture
		img, err := idx.Image(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		fs := readImageFS(t, img)
		var elfs []string
		for p, e := range fs {
			if e.elf == nil {
				continue
			}
			elfs = append(elfs, p)
			if got := elfArch(e.elf.machine); got != arch {
				t.Errorf("linux/%s image: /%s is an ELF for %s", arch, p, got)
			}
			if e.elf.interp != "" {
				target, ok := fs.resolve(e.elf.interp)
				if !ok || fs[target].elf == nil || elfArch(fs[target].elf.machine) != arch {
					t.Errorf("linux/%s image: /%s's loader %s does not resolve to a %s ELF in the image (got %q)", arch, p, e.elf.interp, arch, target)
				}
			}
		}
		sort.Strings(elfs)
		for _, must := range []string{"usr/local/bin/agent", "usr/sbin/xtables-nft-multi", "usr/sbin/xtables-legacy-multi"} {
			if e, ok := fs[must]; !ok || e.elf == nil {
				t.Errorf("linux/%s image: /%s is missing or not an ELF file", arch, must)
			}
		}
		if e := fs["usr/local/bin/agent"]; e.elf != nil && e.elf.interp != "" {
			t.Errorf("linux/%s image: the agent names a loader (%s); it must be static", arch, e.elf.interp)
		}
		for _, link := range []string{"usr/sbin/iptables", "usr/sbin/ip6tables"} {
			if target, ok := fs.resolve("/" + link); !ok || !strings.HasSuffix(target, "xtables-nft-multi") {
				t.Errorf("linux/%s image: /%s resolves to %q, want xtables-nft-multi", arch, link, target)
			}
		}
		if len(elfs) < 10 {
			t.Errorf("linux/%s image: only %d ELF files (%v); the iptables userspace has more", arch, len(elfs), elfs)
		}
		t.Logf("linux/%s: %d ELF files, all %s", arch, len(elfs), arch)
	}
}

// agent-image.oci.tar is the layout directory as one file: the same files with the same contents.
func TestLayoutArchiveMatchesLayout(t *testing.T) {
	dist := releaseDir(t)
	f, err := os.Open(filepath.Join(dist, "agent-image.oci.tar"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	inTar := map[string]bool{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		onDisk, err := os.ReadFile(filepath.Join(dist, "agent-image", filepath.FromSlash(h.Name)))
		if err != nil || !bytes.Equal(data, onDisk) {
			t.Errorf("agent-image.oci.tar: %s differs from the layout directory's (%v)", h.Name, err)
		}
		inTar[h.Name] = true
	}
	err = filepath.WalkDir(filepath.Join(dist, "agent-image"), func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(filepath.Join(dist, "agent-image"), p)
		if !inTar[filepath.ToSlash(rel)] {
			t.Errorf("agent-image.oci.tar lacks %s", rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !inTar["index.json"] || !inTar["oci-layout"] {
		t.Errorf("agent-image.oci.tar has no index.json or oci-layout at its top")
	}
}

// imageFS is a flattened image filesystem, by path without the leading slash.
type imageFS map[string]fsEntry

type fsEntry struct {
	typ  byte
	link string
	elf  *elfInfo
}

type elfInfo struct {
	machine elf.Machine
	interp  string
}

func readImageFS(t *testing.T, img v1.Image) imageFS {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	fs := imageFS{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return fs
		}
		if err != nil {
			t.Fatal(err)
		}
		name := strings.TrimSuffix(strings.TrimPrefix(path.Clean("/"+h.Name), "/"), "/")
		e := fsEntry{typ: h.Typeflag, link: h.Linkname}
		if h.Typeflag == tar.TypeReg {
			data, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			if bytes.HasPrefix(data, []byte(elf.ELFMAG)) {
				f, err := elf.NewFile(bytes.NewReader(data))
				if err != nil {
					t.Errorf("/%s starts like an ELF file but is not one: %v", name, err)
				} else {
					e.elf = &elfInfo{machine: f.Machine, interp: interpreter(f)}
				}
			}
		}
		fs[name] = e
	}
}

// interpreter is the ELF's PT_INTERP, the dynamic loader the kernel starts it with.
func interpreter(f *elf.File) string {
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			data, err := io.ReadAll(p.Open())
			if err == nil {
				return strings.TrimRight(string(data), "\x00")
			}
		}
	}
	return ""
}

// resolve follows symbolic links, in every path component, as the kernel does inside the image; it
// returns the final path (no leading slash) and whether it exists.
func (fs imageFS) resolve(p string) (string, bool) {
	parts := strings.Split(strings.Trim(path.Clean("/"+p), "/"), "/")
	cur := ""
	for hops := 0; len(parts) > 0; {
		next := path.Join(cur, parts[0])
		parts = parts[1:]
		e, ok := fs[next]
		if !ok {
			return next, false
		}
		if e.typ != tar.TypeSymlink {
			cur = next
			continue
		}
		if hops++; hops > 40 {
			return next, false
		}
		target := e.link
		if !strings.HasPrefix(target, "/") {
			target = path.Join("/"+cur, target)
		}
		parts = append(strings.Split(strings.Trim(path.Clean(target), "/"), "/"), parts...)
		cur = ""
	}
	return cur, true
}

func checkMap(t *testing.T, what string, got, want map[string]string) {
	t.Helper()
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s %s = %q, want %q", what, k, got[k], v)
		}
	}
}
