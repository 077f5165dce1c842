// Command release writes everything a release publishes into one directory, without Docker, from the
// Go module proxy and Debian's packages: `make release VERSION=vX.Y.Z` runs it.
//
//	go run ./hack/release -version v1.2.3 [-dist dist] [-image-repo ghcr.io/apiproxy/agent]
//
// It writes, in this order (each step needs the one before):
//
//	agent-image/                      the agent as a multi-platform OCI image index (linux/amd64,
//	                                  linux/arm64) in an OCI image layout, pushed as is by
//	                                  `crane push` or `skopeo copy --all oci:dist/agent-image ...`
//	agent-image.oci.tar               the same layout as one file (air-gapped hosts, skopeo oci-archive:)
//	kubectl-apiproxy_<v>_<os>_<arch>  the plugin archives (.tar.gz, .zip for Windows); the plugin
//	                                  carries IMAGE_REPO:<v>@sha256:<index digest> as its default agent
//	apiproxy.yaml                     the krew manifest, plugins/krew.yaml rendered with each archive's
//	                                  uri and sha256 (what krew-release-bot submits)
//	kubectl-apiproxy_<v>_<os>_<arch>.cdx.json   CycloneDX SBOMs (cyclonedx-gomod) of each plugin
//	agent_<v>_linux_<arch>.cdx.json             binary and of the agent of each image platform
//	checksums.txt                     sha256 of every other file in the directory (sha256sum -c)
//
// The same commit gives the same bytes: times come from SOURCE_DATE_EPOCH (default: the commit's
// time), builds are -trimpath with fixed flags, and archives and layers have fixed owners, modes and
// order. Progress goes to stderr; the summary (index digest, pinned reference, files) to stdout.
package main

import (
	"flag"
	"fmt"
	"os"
	"regexp"
	"time"
)

const module = "github.com/apiproxy/apiproxy"

// semverV is a v-prefixed semantic version, what krew and `version` want.
var semverV = regexp.MustCompile(`^v(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?$`)

// options are the release's inputs, from flags and git.
type options struct {
	version        string
	dist           string
	imageRepo      string
	source         string
	platforms      []platform // of the plugin
	imageArches    []string   // GOARCHes of the agent image
	debCache       string
	pluginsOnly    bool
	krewTemplate   string
	revision       string    // full commit hash: the image's revision annotation
	commit         string    // short commit hash: `version`'s gitCommit, as `make build` stamps it
	created        time.Time // SOURCE_DATE_EPOCH
	createdFromGit bool
}

type platform struct{ os, arch string }

func (p platform) String() string { return p.os + "/" + p.arch }

func main() {
	var o options
	var platforms, imagePlatforms string
	flag.StringVar(&o.version, "version", "", "the version being released, a v-prefixed semantic version (v1.2.3); the git tag it is published under")
	flag.StringVar(&o.dist, "dist", "dist", "directory to write the release into (files a release writes are replaced; any other file is an error)")
	flag.StringVar(&o.imageRepo, "image-repo", "ghcr.io/apiproxy/agent", "repository the agent image is pushed to; the plugin defaults to REPO:VERSION@sha256:DIGEST")
	flag.StringVar(&o.source, "source", "https://"+module, "org.opencontainers.image.source of the agent image")
	flag.StringVar(&platforms, "platforms", "linux/amd64 linux/arm64 darwin/amd64 darwin/arm64 windows/amd64", "the plugin's os/arch list (keep in step with plugins/krew.yaml)")
	flag.StringVar(&imagePlatforms, "image-platforms", "linux/amd64 linux/arm64", "the agent image's platforms (linux only)")
	flag.StringVar(&o.debCache, "deb-cache", defaultDebCache(), "where the Debian packages are downloaded to and reused from")
	flag.BoolVar(&o.pluginsOnly, "plugins-only", false, "only the plugin archives, the krew manifest and checksums.txt (no image, no SBOMs; the plugin's default agent image stays the version's tag): `make dist`")
	flag.StringVar(&o.krewTemplate, "krew-template", "plugins/krew.yaml", "the krew manifest template (krew-release-bot's format)")
	flag.Parse()
	if err := o.complete(platforms, imagePlatforms); err != nil {
		fmt.Fprintln(os.Stderr, "release:", err)
		os.Exit(2)
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "release:", err)
		fmt.Fprintf(os.Stderr, "release: %s is incomplete (no checksums.txt is written before the end); the next run replaces it\n", o.dist)
		os.Exit(1)
	}
}
