//go:build tools

// Package tools pins krew, the kubectl plugin manager (sigs.k8s.io/krew v0.4.3), and its
// validate-krew-manifest, built from the Go module proxy: test/release installs the release archive
// with the real krew from the rendered manifest and runs krew's own manifest validation. krew's
// go.mod pins Kubernetes libraries of its time; they stay in this module, away from the main one.
package tools

import (
	_ "sigs.k8s.io/krew/cmd/krew"
	_ "sigs.k8s.io/krew/cmd/validate-krew-manifest"
)
