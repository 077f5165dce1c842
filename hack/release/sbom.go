package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// buildCycloneDX builds cyclonedx-gomod at the version hack/tools/cyclonedx pins, from the Go module
// proxy (the build cache makes it quick after the first time).
func buildCycloneDX(work string) (string, error) {
	out := filepath.Join(work, "cyclonedx-gomod")
	logf("go build cyclonedx-gomod (hack/tools/cyclonedx)")
	cmd := exec.Command("go", "build", "-o", out, "github.com/CycloneDX/cyclonedx-gomod/cmd/cyclonedx-gomod")
	cmd.Dir = filepath.Join("hack", "tools", "cyclonedx")
	cmd.Env = append(os.Environ(), "GOFLAGS=", "GOOS=", "GOARCH=")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("building cyclonedx-gomod: %w", err)
	}
	return out, nil
}

// sbomTarget is one binary of the release: its main package and platform.
type sbomTarget struct {
	main string
	p    platform
	out  string
}

// sboms writes the CycloneDX JSON SBOM of each binary, two at a time. One per platform, because
// the platform changes the modules linked in (Windows adds two); with their go.sum hashes and
// detected licenses, and no serial number nor timestamp, so the same commit gives the same files.
func sboms(tool string, targets []sbomTarget) error {
	errs := make(chan error, len(targets))
	sem := make(chan struct{}, 2)
	for _, tg := range targets {
		go func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			errs <- sbom(tool, tg)
		}()
	}
	var first error
	for range targets {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

func sbom(tool string, tg sbomTarget) error {
	logf("cyclonedx-gomod app -main %s for %s", tg.main, tg.p)
	cmd := exec.Command(tool, "app", "-json", "-licenses", "-noserial", "-notimestamp", "-main", tg.main, "-output", tg.out, ".")
	cmd.Env = append(os.Environ(), "GOOS="+tg.p.os, "GOARCH="+tg.p.arch, "CGO_ENABLED=0", "GOFLAGS=")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("SBOM of %s for %s: %w\n%s", tg.main, tg.p, err, out.String())
	}
	return nil
}
