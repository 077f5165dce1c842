package imagebuild

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// The OCI annotation keys the agent index and its images carry (and the config labels mirror).
const (
	AnnotationSource   = "org.opencontainers.image.source"
	AnnotationVersion  = "org.opencontainers.image.version"
	AnnotationRevision = "org.opencontainers.image.revision"
	AnnotationCreated  = "org.opencontainers.image.created"
	AnnotationRefName  = "org.opencontainers.image.ref.name"
)

// IndexOptions are the inputs of the multi-platform agent image. The same inputs give the same
// index digest: nothing in it depends on the clock or on where it is built.
type IndexOptions struct {
	// Binaries maps a GOARCH ("amd64", "arm64") to the agent built static for linux/GOARCH
	// (CGO_ENABLED=0). One image per entry; at least one.
	Binaries map[string]string
	// License is copied to /licenses/LICENSE in every image when set.
	License string
	// DebCache is where the Debian packages are downloaded to and reused from (per architecture).
	DebCache string
	// Version, Revision and Source go into the org.opencontainers.image.* annotations of the index
	// and of every image manifest, and into the config labels. Empty ones are left out.
	Version, Revision, Source string
	// Created is the images' creation time (config and annotation); a release takes it from
	// SOURCE_DATE_EPOCH so that one commit gives one digest. The zero time means the Unix epoch.
	Created time.Time
}

// AgentIndex builds the agent image for every architecture in o.Binaries (AgentSpec with that
// architecture's iptables packages) and returns them as one OCI image index whose descriptors carry
// the linux/<arch> platform, so a node pulls the image of its own architecture by the index's
// digest.
func AgentIndex(o IndexOptions) (v1.ImageIndex, error) {
	if len(o.Binaries) == 0 {
		return nil, fmt.Errorf("agent index: no agent binaries given (one per GOARCH)")
	}
	created := o.Created.UTC()
	if o.Created.IsZero() {
		created = time.Unix(0, 0).UTC()
	}
	annotations := map[string]string{AnnotationCreated: created.Format(time.RFC3339)}
	labels := map[string]string{}
	for k, v := range map[string]string{AnnotationSource: o.Source, AnnotationVersion: o.Version, AnnotationRevision: o.Revision} {
		if v != "" {
			annotations[k], labels[k] = v, v
		}
	}

	arches := make([]string, 0, len(o.Binaries))
	for arch := range o.Binaries {
		arches = append(arches, arch)
	}
	sort.Strings(arches)
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, arch := range arches {
		spec, err := AgentSpec(AgentOptions{Binary: o.Binaries[arch], License: o.License, DebCache: o.DebCache, Arch: arch, Labels: labels})
		if err != nil {
			return nil, fmt.Errorf("agent image for linux/%s: %w", arch, err)
		}
		img, err := Build(spec)
		if err != nil {
			return nil, fmt.Errorf("agent image for linux/%s: %w", arch, err)
		}
		if img, err = mutate.CreatedAt(img, v1.Time{Time: created}); err != nil {
			return nil, err
		}
		img = mutate.Annotations(img, annotations).(v1.Image)
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{
			Add:        withoutArtifactType{img},
			Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: arch}},
		})
	}
	return mutate.Annotations(idx, annotations).(v1.ImageIndex), nil
}

// withoutArtifactType keeps artifactType out of the image's index entry. go-containerregistry fills
// it in from the config's media type, and skopeo before 1.16 (containers/image before v5.32; Debian
// 12 ships 1.9.3) drops that field when it copies an index: `skopeo copy --all` then pushed another
// index than the one the plugin pins, and refused with --preserve-digests. For an image the field
// says nothing its manifest does not (test/release's push tests run Debian's skopeo).
type withoutArtifactType struct{ v1.Image }

func (withoutArtifactType) ArtifactType() (string, error) { return "", nil }

// WriteLayout writes idx as an OCI image layout directory (oci-layout, index.json, blobs/sha256/)
// whose index.json has one entry, the image index, named refName (org.opencontainers.image.ref.name,
// e.g. the version tag): what `skopeo copy --all oci:DIR docker://REF`, `crane push DIR REF` and
// `oras cp --from-oci-layout DIR:TAG` push as is. The layout is assembled next to dir and renamed
// into place; an existing dir is replaced only when it is itself an OCI layout.
func WriteLayout(dir string, idx v1.ImageIndex, refName string) error {
	if fi, err := os.Stat(dir); err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("OCI layout %s: exists and is not a directory", dir)
		}
		if _, err := os.Stat(filepath.Join(dir, "oci-layout")); err != nil {
			if entries, _ := os.ReadDir(dir); len(entries) > 0 {
				return fmt.Errorf("OCI layout %s: the directory exists and is not an OCI layout; remove it or choose another", dir)
			}
		}
	}
	parent := filepath.Dir(dir)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return err
	}
	stage, err := os.MkdirTemp(parent, ".layout-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(stage)
	var opts []layout.Option
	if refName != "" {
		opts = append(opts, layout.WithAnnotations(map[string]string{AnnotationRefName: refName}))
	}
	lp, err := layout.Write(stage, empty.Index)
	if err != nil {
		return fmt.Errorf("OCI layout %s: %w", dir, err)
	}
	if err := lp.AppendIndex(idx, opts...); err != nil {
		return fmt.Errorf("OCI layout %s: %w", dir, err)
	}
	// MkdirTemp made the stage 0700 and the layout package writes its files executable: a layout
	// is data, for everyone to read.
	err = filepath.WalkDir(stage, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		mode := fs.FileMode(0o644)
		if d.IsDir() {
			mode = 0o755
		}
		return os.Chmod(p, mode)
	})
	if err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	return os.Rename(stage, dir)
}

// WriteLayoutArchive writes the layout directory as one tar file (entries sorted by name, zero
// times, root-owned, fixed modes), so the same layout always gives the same bytes: a release asset
// for hosts without the directory, read by `skopeo copy --all oci-archive:FILE docker://REF`.
func WriteLayoutArchive(dir, dest string) error {
	if _, err := os.Stat(filepath.Join(dir, "oci-layout")); err != nil {
		return fmt.Errorf("%s is not an OCI layout: %w", dir, err)
	}
	tmp := dest + ".tmp"
	if err := tarDir(dir, tmp); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("writing %s: %w", dest, err)
	}
	return os.Rename(tmp, dest)
}
