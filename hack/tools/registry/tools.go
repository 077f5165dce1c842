//go:build tools

// Package tools pins the OCI registry of the real-node tests: the CNCF distribution registry
// (cmd/registry), built from the Go module proxy. The harness runs it on the node's bridge with TLS,
// and the node's containerd pulls the agent image from it by digest.
package tools

import (
	_ "github.com/distribution/distribution/v3/cmd/registry"
)
