package main

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Bad flags are refused before anything is built, each with what to pass instead.
func TestCompleteRejectsBadInput(t *testing.T) {
	for _, c := range []struct {
		name                 string
		o                    options
		platforms, imagePlat string
		want                 string
	}{
		{"no version", options{imageRepo: "ghcr.io/a/b", dist: "d"}, "linux/amd64", "linux/amd64", "VERSION=v1.2.3"},
		{"unprefixed version", options{version: "1.2.3", imageRepo: "ghcr.io/a/b", dist: "d"}, "linux/amd64", "linux/amd64", "v-prefixed"},
		{"repo with tag", options{version: "v1.2.3", imageRepo: "ghcr.io/a/b:v1", dist: "d"}, "linux/amd64", "linux/amd64", "without tag or digest"},
		{"repo without registry", options{version: "v1.2.3", imageRepo: "apiproxy/agent", dist: "d"}, "linux/amd64", "linux/amd64", "-image-repo"},
		{"platform without arch", options{version: "v1.2.3", imageRepo: "ghcr.io/a/b", dist: "d"}, "linux", "linux/amd64", "not OS/ARCH"},
		{"windows image", options{version: "v1.2.3", imageRepo: "ghcr.io/a/b", dist: "d"}, "linux/amd64", "windows/amd64", "linux only"},
		{"platform twice", options{version: "v1.2.3", imageRepo: "ghcr.io/a/b", dist: "d"}, "linux/amd64 linux/amd64", "linux/amd64", "twice"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := c.o.complete(c.platforms, c.imagePlat)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("err = %v, want one saying %q", err, c.want)
			}
		})
	}
}

// A reused dist directory loses what an earlier release wrote; a directory holding anything else is
// refused, with the names, and left as it was.
func TestPrepareDist(t *testing.T) {
	dist := t.TempDir()
	for _, f := range []string{"kubectl-apiproxy_v0.1.0_linux_amd64.tar.gz", "checksums.txt", "agent-image.tar", "agent_v0.1.0_linux_amd64.cdx.json"} {
		writeFile(t, filepath.Join(dist, f), "old")
	}
	writeFile(t, filepath.Join(dist, "agent-image", "index.json"), "{}")
	if err := prepareDist(dist); err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(dist); len(entries) != 0 {
		t.Errorf("%d entries left from the earlier release", len(entries))
	}

	writeFile(t, filepath.Join(dist, "notes.txt"), "mine")
	writeFile(t, filepath.Join(dist, "checksums.txt"), "old")
	err := prepareDist(dist)
	if err == nil || !strings.Contains(err.Error(), "notes.txt") || !strings.Contains(err.Error(), "DIST=") {
		t.Errorf("err = %v, want a refusal naming notes.txt and DIST", err)
	}
	if _, err := os.Stat(filepath.Join(dist, "checksums.txt")); err != nil {
		t.Errorf("a refused directory was changed: %v", err)
	}
}

// The archives depend on the files' contents and the release time only: not on the files' times or
// owners on this machine. The executable keeps its mode in both formats.
func TestArchivesAreReproducible(t *testing.T) {
	dir := t.TempDir()
	bin, lic := filepath.Join(dir, "kubectl-apiproxy"), filepath.Join(dir, "LICENSE")
	writeFile(t, bin, "binary")
	writeFile(t, lic, "license")
	files := []archiveFile{{"kubectl-apiproxy", bin, 0o755}, {"LICENSE", lic, 0o644}}
	when := time.Unix(1700000000, 0)
	for _, ext := range []string{".tar.gz", ".zip"} {
		a, b := filepath.Join(dir, "a"+ext), filepath.Join(dir, "b"+ext)
		if err := writeArchive(a, files, when); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(bin, time.Now(), time.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		if err := writeArchive(b, files, when); err != nil {
			t.Fatal(err)
		}
		ab, _ := os.ReadFile(a)
		bb, _ := os.ReadFile(b)
		if !bytes.Equal(ab, bb) {
			t.Errorf("%s: two archives of the same files differ", ext)
		}
		modes := archiveModes(t, a)
		if modes["kubectl-apiproxy"] != 0o755 || modes["LICENSE"] != 0o644 || len(modes) != 2 {
			t.Errorf("%s: modes %v", ext, modes)
		}
	}
}

// The manifest is rendered as the bot renders it, with the archives' sha256; a URL the release did
// not build, or an archive no platform downloads, is an error naming it.
func TestRenderKrewManifest(t *testing.T) {
	dir := t.TempDir()
	archives := map[string]string{}
	for _, p := range []platform{{"linux", "amd64"}, {"linux", "arm64"}, {"darwin", "amd64"}, {"darwin", "arm64"}, {"windows", "amd64"}} {
		name := archiveName("v1.2.3", p)
		writeFile(t, filepath.Join(dir, name), p.String())
		archives[name] = filepath.Join(dir, name)
	}
	tmpl := filepath.Join("..", "..", "plugins", "krew.yaml")
	out := filepath.Join(dir, "apiproxy.yaml")
	if err := renderKrewManifest(tmpl, "v1.2.3", archives, out); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(out)
	sum, _ := sha256File(archives["kubectl-apiproxy_v1.2.3_linux_arm64.tar.gz"])
	want := "uri: https://github.com/apiproxy/apiproxy/releases/download/v1.2.3/kubectl-apiproxy_v1.2.3_linux_arm64.tar.gz\n    sha256: " + sum + "\n"
	if !strings.Contains(string(data), want) || !strings.Contains(string(data), "version: v1.2.3\n") {
		t.Errorf("rendered manifest lacks %q:\n%s", want, data)
	}

	missing := map[string]string{}
	for k, v := range archives {
		if !strings.Contains(k, "windows") {
			missing[k] = v
		}
	}
	if err := renderKrewManifest(tmpl, "v1.2.3", missing, out); err == nil || !strings.Contains(err.Error(), "kubectl-apiproxy_v1.2.3_windows_amd64.zip") {
		t.Errorf("err = %v, want one naming the windows archive the release did not build", err)
	}
	extra := map[string]string{"kubectl-apiproxy_v1.2.3_linux_riscv64.tar.gz": archives["kubectl-apiproxy_v1.2.3_linux_amd64.tar.gz"]}
	for k, v := range archives {
		extra[k] = v
	}
	if err := renderKrewManifest(tmpl, "v1.2.3", extra, out); err == nil || !strings.Contains(err.Error(), "linux_riscv64") {
		t.Errorf("err = %v, want one naming the archive no platform downloads", err)
	}
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func archiveModes(t *testing.T, path string) map[string]os.FileMode {
	t.Helper()
	modes := map[string]os.FileMode{}
	if strings.HasSuffix(path, ".zip") {
		zr, err := zip.OpenReader(path)
		if err != nil {
			t.Fatal(err)
		}
		defer zr.Close()
		for _, f := range zr.File {
			modes[f.Name] = f.Mode().Perm()
		}
		return modes
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return modes
		}
		if err != nil {
			t.Fatal(err)
		}
		modes[h.Name] = os.FileMode(h.Mode).Perm()
	}
}
