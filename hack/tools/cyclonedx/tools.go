//go:build tools

// Package tools pins the SBOM generator of `make release`: cyclonedx-gomod (CycloneDX), built from the
// Go module proxy by hack/release.
package tools

import (
	_ "github.com/CycloneDX/cyclonedx-gomod/cmd/cyclonedx-gomod"
)
