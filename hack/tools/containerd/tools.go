//go:build tools

// Package tools pins the container runtime of the real-node test cluster: containerd, its runc shim
// and ctr (used to import the test images), built from the Go module proxy.
package tools

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
)
