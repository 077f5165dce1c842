// Command image writes the agent image as an OCI image archive without Docker: `make image` runs it.
//
//	go run ./hack/image -agent bin/linux_amd64/agent -ref ghcr.io/apiproxy/agent:v0.1.0 -o dist/agent-image.tar
//
// The archive loads with `ctr -n k8s.io images import`, `kind load image-archive`, `docker load`, and
// pushes with `crane push dist/agent-image.tar REF`.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/apiproxy/apiproxy/internal/imagebuild"
)

func main() {
	var (
		agent   = flag.String("agent", "", "the agent binary, built static (CGO_ENABLED=0) for linux and this machine's architecture")
		ref     = flag.String("ref", "", "image name, e.g. ghcr.io/apiproxy/agent:v0.1.0")
		out     = flag.String("o", "dist/agent-image.tar", "archive to write")
		license = flag.String("license", "LICENSE", "license file copied to /licenses/LICENSE")
		debs    = flag.String("deb-cache", defaultDebCache(), "where the Debian packages are downloaded to and reused from")
		version = flag.String("version", "", "org.opencontainers.image.version label")
	)
	flag.Parse()
	if *agent == "" || *ref == "" {
		fmt.Fprintln(os.Stderr, "image: -agent and -ref are required (make image sets them)")
		os.Exit(2)
	}
	labels := map[string]string{"org.opencontainers.image.source": "https://github.com/apiproxy/apiproxy"}
	if *version != "" {
		labels["org.opencontainers.image.version"] = *version
	}
	spec, err := imagebuild.AgentSpec(imagebuild.AgentOptions{Binary: *agent, License: *license, DebCache: *debs, Labels: labels})
	if err == nil {
		err = os.MkdirAll(filepath.Dir(*out), 0o755)
	}
	if err == nil {
		err = write(spec, *ref, *out)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
	fmt.Printf("%s: %s\n", *out, *ref)
}

func write(spec imagebuild.Spec, ref, out string) error {
	img, err := imagebuild.Build(spec)
	if err != nil {
		return err
	}
	return imagebuild.WriteArchive(out, ref, img)
}

func defaultDebCache() string {
	dir, err := os.UserCacheDir()
	if err != nil {
		dir = os.TempDir()
	}
	return filepath.Join(dir, "apiproxy", "debs")
}
