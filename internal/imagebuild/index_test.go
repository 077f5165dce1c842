package imagebuild_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/apiproxy/apiproxy/internal/imagebuild"
)

// needApt skips (or, under CI=true, fails) when the Debian packages of the architectures cannot be
// fetched, with the command that fixes it.
func needApt(t *testing.T, arches ...string) {
	t.Helper()
	for _, a := range arches {
		if err := imagebuild.AptReady(a); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatal(err)
			}
			t.Skip(err)
		}
	}
}

func debCache(t *testing.T) string {
	cache, err := os.UserCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(cache, "apiproxy", "debs")
}

// The index is a pure function of its inputs: built twice it has one digest, and the creation time
// (from SOURCE_DATE_EPOCH in a release) is part of it. Each platform descriptor names its
// architecture and every manifest carries the annotations.
func TestAgentIndexIsReproducible(t *testing.T) {
	needApt(t, "amd64", "arm64")
	dir := t.TempDir()
	agent := filepath.Join(dir, "agent")
	if err := os.WriteFile(agent, []byte("stands in for the agent"), 0o755); err != nil {
		t.Fatal(err)
	}
	opts := imagebuild.IndexOptions{
		Binaries: map[string]string{"amd64": agent, "arm64": agent},
		DebCache: debCache(t),
		Version:  "v9.9.9", Revision: "0123456789abcdef0123456789abcdef01234567", Source: "https://github.com/apiproxy/apiproxy",
		Created: time.Unix(1700000000, 0),
	}
	digest := func(o imagebuild.IndexOptions) (v1.ImageIndex, v1.Hash) {
		t.Helper()
		idx, err := imagebuild.AgentIndex(o)
		if err != nil {
			t.Fatal(err)
		}
		d, err := idx.Digest()
		if err != nil {
			t.Fatal(err)
		}
		return idx, d
	}
	idx, d1 := digest(opts)
	if _, d2 := digest(opts); d1 != d2 {
		t.Errorf("same inputs, two digests: %s and %s", d1, d2)
	}
	later := opts
	later.Created = opts.Created.Add(time.Second)
	if _, d3 := digest(later); d3 == d1 {
		t.Errorf("a different creation time kept the digest %s", d1)
	}

	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		imagebuild.AnnotationVersion: "v9.9.9", imagebuild.AnnotationRevision: opts.Revision,
		imagebuild.AnnotationSource: opts.Source, imagebuild.AnnotationCreated: "2023-11-14T22:13:20Z",
	}
	checkAnnotations(t, "index", im.Annotations, want)
	if len(im.Manifests) != 2 || im.Manifests[0].Platform.String() != "linux/amd64" || im.Manifests[1].Platform.String() != "linux/arm64" {
		t.Fatalf("index manifests %+v, want linux/amd64 and linux/arm64", im.Manifests)
	}
	for _, desc := range im.Manifests {
		img, err := idx.Image(desc.Digest)
		if err != nil {
			t.Fatal(err)
		}
		m, err := img.Manifest()
		if err != nil {
			t.Fatal(err)
		}
		checkAnnotations(t, desc.Platform.String(), m.Annotations, want)
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if cf.Architecture != desc.Platform.Architecture || cf.OS != "linux" || !cf.Created.Time.Equal(opts.Created) || cf.Config.User != "65532:65532" {
			t.Errorf("%s config: %s/%s created %s user %q", desc.Platform, cf.OS, cf.Architecture, cf.Created, cf.Config.User)
		}
	}
}

func checkAnnotations(t *testing.T, what string, got, want map[string]string) {
	t.Helper()
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s annotation %s = %q, want %q", what, k, got[k], v)
		}
	}
}

// The layout reads back as the same index, named by the ref annotation, and its archive has the same
// bytes each time it is written.
func TestWriteLayoutRoundTrip(t *testing.T) {
	img, err := imagebuild.Build(imagebuild.Spec{Files: []imagebuild.File{{Path: "/a", Data: []byte("a")}}})
	if err != nil {
		t.Fatal(err)
	}
	idx := imagebuildIndex(t, img)
	dir := t.TempDir()
	lay := filepath.Join(dir, "layout")
	if err := imagebuild.WriteLayout(lay, idx, "v1.2.3"); err != nil {
		t.Fatal(err)
	}
	// Written again over itself: replaced, not refused.
	if err := imagebuild.WriteLayout(lay, idx, "v1.2.3"); err != nil {
		t.Fatal(err)
	}
	outer, err := layout.ImageIndexFromPath(lay)
	if err != nil {
		t.Fatal(err)
	}
	om, err := outer.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	want, _ := idx.Digest()
	if len(om.Manifests) != 1 || om.Manifests[0].Digest != want || om.Manifests[0].Annotations[imagebuild.AnnotationRefName] != "v1.2.3" {
		t.Fatalf("index.json %+v, want one entry %s named v1.2.3", om.Manifests, want)
	}

	a, b := filepath.Join(dir, "a.tar"), filepath.Join(dir, "b.tar")
	if err := imagebuild.WriteLayoutArchive(lay, a); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(filepath.Join(lay, "index.json"), time.Now(), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := imagebuild.WriteLayoutArchive(lay, b); err != nil {
		t.Fatal(err)
	}
	ab, _ := os.ReadFile(a)
	bb, _ := os.ReadFile(b)
	if len(ab) == 0 || !bytes.Equal(ab, bb) {
		t.Errorf("the layout archive differs between two writes of the same layout")
	}

	// A directory that is not a layout is never replaced.
	other := filepath.Join(dir, "other")
	if err := os.MkdirAll(other, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(other, "keep"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := imagebuild.WriteLayout(other, idx, ""); err == nil {
		t.Errorf("WriteLayout replaced a directory that was not an OCI layout")
	}
}

// imagebuildIndex wraps one image in an OCI index, as AgentIndex does, without Debian packages.
func imagebuildIndex(t *testing.T, img v1.Image) v1.ImageIndex {
	t.Helper()
	return mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex), mutate.IndexAddendum{
		Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}},
	})
}

// An architecture dpkg does not know is refused before any download, with the command that adds it.
func TestAptReadyNamesTheFix(t *testing.T) {
	if _, err := exec.LookPath("dpkg"); err != nil {
		t.Skip("not a Debian machine: no dpkg")
	}
	out, _ := exec.Command("dpkg", "--print-foreign-architectures").Output()
	if strings.Contains(string(out), "s390x") {
		t.Skip("s390x is a foreign architecture here")
	}
	err := imagebuild.AptReady("s390x")
	if err == nil || !strings.Contains(err.Error(), "dpkg --add-architecture s390x && apt-get update") {
		t.Errorf("err = %v, want one with `dpkg --add-architecture s390x && apt-get update`", err)
	}
	if _, err := imagebuild.DownloadDebsArch(t.TempDir(), "s390x", imagebuild.IPTablesPackages); err == nil || !strings.Contains(err.Error(), "dpkg --add-architecture s390x") {
		t.Errorf("DownloadDebsArch: err = %v, want the same hint", err)
	}
}
