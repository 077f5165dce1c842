// Package deploy holds the manifests `kubectl apiproxy install` applies, as Go text/template YAML,
// embedded into the plugin so the binary is all a user needs. Rendering (values, labels, which files
// for which role) lives in pkg/install; this package only exists because go:embed cannot reach files
// outside the embedding package's directory.
package deploy

import "embed"

// Manifests holds every *.yaml template of this directory.
//
//go:embed *.yaml
var Manifests embed.FS
