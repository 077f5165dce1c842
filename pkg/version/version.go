// Package version holds the build identity stamped into both binaries by `make build` (ldflags).
package version

import (
	"fmt"
	"runtime"
)

// These are overwritten at link time: -X github.com/apiproxy/apiproxy/pkg/version.Version=v0.1.0 ...
var (
	Version   = "v0.0.0-dev"
	GitCommit = "unknown"
	BuildDate = "unknown"
	// AgentImage is the agent image this plugin installs by default, pinned by the digest of the
	// image index `make release` built (ghcr.io/apiproxy/agent:vX.Y.Z@sha256:…). It can only be
	// stamped after the index exists, so dev builds leave it empty and install falls back to the
	// tag of Version.
	AgentImage = ""
)

// Info is the version as printed by `version -o json`.
type Info struct {
	Version    string `json:"version"`
	GitCommit  string `json:"gitCommit"`
	BuildDate  string `json:"buildDate"`
	GoVersion  string `json:"goVersion"`
	Platform   string `json:"platform"`
	AgentImage string `json:"agentImage,omitempty"`
}

// Get returns the stamped build identity.
func Get() Info {
	return Info{
		Version:    Version,
		GitCommit:  GitCommit,
		BuildDate:  BuildDate,
		GoVersion:  runtime.Version(),
		Platform:   runtime.GOOS + "/" + runtime.GOARCH,
		AgentImage: AgentImage,
	}
}

// String is the one-line human form.
func (i Info) String() string {
	s := fmt.Sprintf("%s (commit %s, built %s, %s, %s", i.Version, i.GitCommit, i.BuildDate, i.GoVersion, i.Platform)
	if i.AgentImage != "" {
		s += ", agent image " + i.AgentImage
	}
	return s + ")"
}
