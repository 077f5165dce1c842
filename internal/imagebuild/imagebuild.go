// Package imagebuild builds single-layer container images from files on this machine, without a
// Docker daemon or a registry, with go-containerregistry, and writes them as image archives that
// `ctr images import`, `kind load image-archive`, `docker load` and `crane push` all accept, or, for
// the multi-platform agent image of a release (AgentIndex), as an OCI image layout (WriteLayout).
//
// `make image` (hack/image) and `make release` (hack/release) build the agent image with it, and the
// real-node tests build their images (the pause image, the test app and the agent image itself) with
// the same code.
package imagebuild

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// File is one entry of the image's filesystem. Exactly one of Source, Data, Link or Dir says what it is.
type File struct {
	// Path is the absolute path in the image ("/usr/local/bin/agent").
	Path string
	// Source is a regular file on this machine whose contents are copied.
	Source string
	// Data are literal contents.
	Data []byte
	// Link makes the entry a symbolic link to this target.
	Link string
	// Dir makes the entry a directory.
	Dir bool
	// Mode is the permission bits; 0 means 0755 for directories and for Source files that are
	// executable on this machine, 0644 otherwise.
	Mode fs.FileMode
}

// Spec describes an image.
type Spec struct {
	// Files make up the image's single layer. Parent directories are added as needed.
	Files []File
	// Entrypoint, Cmd, Env, User and WorkingDir go into the image config.
	Entrypoint []string
	Cmd        []string
	Env        []string
	User       string
	WorkingDir string
	// Arch is the GOARCH the files were built for; empty means this machine's.
	Arch string
	// Labels go into the image config.
	Labels map[string]string
}

// Build assembles the image. Timestamps are zero and owners root, so the same files give the same
// digest.
func Build(spec Spec) (v1.Image, error) {
	layerTar, err := layerTar(spec.Files)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithCompressionLevel(gzip.BestSpeed), tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("image layer: %w", err)
	}
	// OCI media types throughout: containerd, kind, docker and registries all take them.
	base := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err := mutate.AppendLayers(base, layer)
	if err != nil {
		return nil, fmt.Errorf("image layer: %w", err)
	}
	arch := spec.Arch
	if arch == "" {
		arch = runtime.GOARCH
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS = "linux"
	cf.Architecture = arch
	cf.Created = v1.Time{Time: time.Unix(0, 0).UTC()}
	cf.Config.Entrypoint = spec.Entrypoint
	cf.Config.Cmd = spec.Cmd
	cf.Config.Env = spec.Env
	cf.Config.User = spec.User
	cf.Config.WorkingDir = spec.WorkingDir
	cf.Config.Labels = spec.Labels
	return mutate.ConfigFile(img, cf)
}

// layerTar writes the files, parents first, as an uncompressed tar.
func layerTar(files []File) ([]byte, error) {
	entries := map[string]File{}
	for _, f := range files {
		p := path.Clean("/" + f.Path)
		if p == "/" {
			continue
		}
		f.Path = p
		entries[p] = f
		for dir := path.Dir(p); dir != "/"; dir = path.Dir(dir) {
			if _, ok := entries[dir]; !ok {
				entries[dir] = File{Path: dir, Dir: true}
			}
		}
	}
	paths := make([]string, 0, len(entries))
	for p := range entries {
		paths = append(paths, p)
	}
	sort.Strings(paths)

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, p := range paths {
		f := entries[p]
		hdr := &tar.Header{Name: strings.TrimPrefix(p, "/"), ModTime: time.Unix(0, 0), Format: tar.FormatPAX}
		var data []byte
		switch {
		case f.Dir:
			hdr.Typeflag, hdr.Mode, hdr.Name = tar.TypeDir, 0o755, hdr.Name+"/"
		case f.Link != "":
			hdr.Typeflag, hdr.Mode, hdr.Linkname = tar.TypeSymlink, 0o777, f.Link
		case f.Source != "":
			st, err := os.Stat(f.Source)
			if err != nil {
				return nil, fmt.Errorf("image file %s: %w", p, err)
			}
			if !st.Mode().IsRegular() {
				return nil, fmt.Errorf("image file %s: source %s is not a regular file", p, f.Source)
			}
			if data, err = os.ReadFile(f.Source); err != nil {
				return nil, fmt.Errorf("image file %s: %w", p, err)
			}
			hdr.Typeflag, hdr.Mode = tar.TypeReg, 0o644
			if st.Mode()&0o111 != 0 {
				hdr.Mode = 0o755
			}
		default:
			hdr.Typeflag, hdr.Mode, data = tar.TypeReg, 0o644, f.Data
		}
		if f.Mode != 0 {
			hdr.Mode = int64(f.Mode.Perm())
		}
		hdr.Size = int64(len(data))
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// WriteArchive writes img as an image archive named ref at dest (written to a temporary name and
// renamed). The archive is an OCI image layout whose index carries the name in the
// io.containerd.image.name and org.opencontainers.image.ref.name annotations (what `ctr images
// import` and `kind load image-archive` read) plus a Docker manifest.json pointing at the same blobs
// (what `docker load` and `crane push` read): the layout `docker save` writes since Docker 25.
func WriteArchive(dest, ref string, img v1.Image) error {
	r, err := name.ParseReference(ref, name.WithDefaultTag("latest"))
	if err != nil {
		return fmt.Errorf("image name %q: %w", ref, err)
	}
	tagName := "latest"
	if t, ok := r.(name.Tag); ok {
		tagName = t.TagStr()
	}
	stage, err := os.MkdirTemp(filepath.Dir(dest), ".image-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(stage)
	lp, err := layout.Write(stage, empty.Index)
	if err != nil {
		return fmt.Errorf("image layout: %w", err)
	}
	if err := lp.AppendImage(img, layout.WithAnnotations(map[string]string{
		"io.containerd.image.name":          r.Name(),
		"org.opencontainers.image.ref.name": tagName,
	})); err != nil {
		return fmt.Errorf("image layout: %w", err)
	}

	cfgName, err := img.ConfigName()
	if err != nil {
		return err
	}
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	dm := []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}{{Config: blobPath(cfgName), RepoTags: []string{r.Name()}}}
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			return err
		}
		dm[0].Layers = append(dm[0].Layers, blobPath(d))
	}
	mj, err := json.Marshal(dm)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(stage, "manifest.json"), mj, 0o644); err != nil {
		return err
	}

	tmp := dest + ".tmp"
	if err := tarDir(stage, tmp); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("writing %s: %w", dest, err)
	}
	return os.Rename(tmp, dest)
}

func blobPath(h v1.Hash) string { return "blobs/" + h.Algorithm + "/" + h.Hex }

// tarDir writes the directory's regular files and directories, in name order, as a tar file. The
// headers are made here rather than from the files' stat (which brings access and change times, and
// the owner), so the same directory contents always give the same bytes.
func tarDir(dir, dest string) error {
	out, err := os.Create(dest)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(out)
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		hdr := &tar.Header{Name: filepath.ToSlash(rel), ModTime: time.Unix(0, 0), Format: tar.FormatPAX}
		switch {
		case d.IsDir():
			hdr.Typeflag, hdr.Mode, hdr.Name = tar.TypeDir, 0o755, hdr.Name+"/"
		case d.Type().IsRegular():
			info, err := d.Info()
			if err != nil {
				return err
			}
			hdr.Typeflag, hdr.Mode, hdr.Size = tar.TypeReg, 0o644, info.Size()
		default:
			return fmt.Errorf("%s is neither a file nor a directory", p)
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if hdr.Typeflag == tar.TypeReg {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			if _, err := io.Copy(tw, f); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		err = tw.Close()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}
