package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/apiproxy/apiproxy/internal/imagebuild"
)

// Names of what the release writes into the dist directory.
const (
	layoutDir     = "agent-image"
	layoutArchive = "agent-image.oci.tar"
	krewManifest  = "apiproxy.yaml"
	checksumsFile = "checksums.txt"
)

// archiveName is the plugin archive of one platform, the name plugins/krew.yaml downloads.
func archiveName(version string, p platform) string {
	ext := ".tar.gz"
	if p.os == "windows" {
		ext = ".zip"
	}
	return fmt.Sprintf("kubectl-apiproxy_%s_%s_%s%s", version, p.os, p.arch, ext)
}

// sbomName is the SBOM of one binary: kubectl-apiproxy_<version>_<os>_<arch>.cdx.json beside the
// archive, agent_<version>_linux_<arch>.cdx.json for each image platform.
func sbomName(binary, version string, p platform) string {
	return fmt.Sprintf("%s_%s_%s_%s.cdx.json", binary, version, p.os, p.arch)
}

func run(o options) error {
	start := time.Now()
	if !o.pluginsOnly {
		// Before any build: the arm64 packages are the prerequisite most likely missing.
		for _, arch := range o.imageArches {
			if err := imagebuild.AptReady(arch); err != nil {
				return err
			}
		}
	}
	if err := prepareDist(o.dist); err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "apiproxy-release-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	ldflags := []string{"-s", "-w",
		"-X", module + "/pkg/version.Version=" + o.version,
		"-X", module + "/pkg/version.GitCommit=" + o.commit,
		"-X", module + "/pkg/version.BuildDate=" + o.created.Format(time.RFC3339),
	}

	var pinned, digest string
	if !o.pluginsOnly {
		binaries := map[string]string{}
		for _, arch := range o.imageArches {
			out := filepath.Join(work, "agent-linux-"+arch)
			if err := goBuild(platform{"linux", arch}, ldflags, "./cmd/agent", out); err != nil {
				return err
			}
			binaries[arch] = out
		}
		logf("building the agent image index for %s (Debian packages in %s)", strings.Join(o.imageArches, ", "), o.debCache)
		idx, err := imagebuild.AgentIndex(imagebuild.IndexOptions{
			Binaries: binaries, License: "LICENSE", DebCache: o.debCache,
			Version: o.version, Revision: o.revision, Source: o.source, Created: o.created,
		})
		if err != nil {
			return err
		}
		d, err := idx.Digest()
		if err != nil {
			return err
		}
		digest = d.String()
		if err := imagebuild.WriteLayout(filepath.Join(o.dist, layoutDir), idx, o.version); err != nil {
			return err
		}
		if err := imagebuild.WriteLayoutArchive(filepath.Join(o.dist, layoutDir), filepath.Join(o.dist, layoutArchive)); err != nil {
			return err
		}
		pinned = o.imageRepo + ":" + o.version + "@" + digest
	}

	pluginFlags := ldflags
	if pinned != "" {
		pluginFlags = append(append([]string(nil), ldflags...), "-X", module+"/pkg/version.AgentImage="+pinned)
	}
	archives := map[string]string{}
	for _, p := range o.platforms {
		bin := "kubectl-apiproxy"
		if p.os == "windows" {
			bin += ".exe"
		}
		out := filepath.Join(work, p.os+"-"+p.arch, bin)
		if err := goBuild(p, pluginFlags, "./cmd/kubectl-apiproxy", out); err != nil {
			return err
		}
		name := archiveName(o.version, p)
		files := []archiveFile{{name: bin, path: out, mode: 0o755}, {name: "LICENSE", path: "LICENSE", mode: 0o644}}
		if err := writeArchive(filepath.Join(o.dist, name), files, o.created); err != nil {
			return err
		}
		archives[name] = filepath.Join(o.dist, name)
	}

	if err := renderKrewManifest(o.krewTemplate, o.version, archives, filepath.Join(o.dist, krewManifest)); err != nil {
		return err
	}

	if !o.pluginsOnly {
		tool, err := buildCycloneDX(work)
		if err != nil {
			return err
		}
		var targets []sbomTarget
		for _, p := range o.platforms {
			targets = append(targets, sbomTarget{"cmd/kubectl-apiproxy", p, filepath.Join(o.dist, sbomName("kubectl-apiproxy", o.version, p))})
		}
		for _, arch := range o.imageArches {
			p := platform{"linux", arch}
			targets = append(targets, sbomTarget{"cmd/agent", p, filepath.Join(o.dist, sbomName("agent", o.version, p))})
		}
		if err := sboms(tool, targets); err != nil {
			return err
		}
	}

	sums, err := writeChecksums(o.dist)
	if err != nil {
		return err
	}

	fmt.Printf("release %s of %s (commit %s, created %s", o.version, module, o.revision, o.created.Format(time.RFC3339))
	if o.createdFromGit {
		fmt.Printf(", the commit's time")
	}
	fmt.Printf(") in %s, %s\n", o.dist, time.Since(start).Round(time.Second))
	if pinned != "" {
		fmt.Printf("  agent image index  %s (%s)\n", digest, strings.Join(prefixed("linux/", o.imageArches), ", "))
		fmt.Printf("  plugin's agent     %s\n", pinned)
		fmt.Printf("  push with          crane push %s %s:%s   (or skopeo copy --all oci:%s docker://%s:%s)\n",
			filepath.Join(o.dist, layoutDir), o.imageRepo, o.version, filepath.Join(o.dist, layoutDir), o.imageRepo, o.version)
	} else {
		fmt.Printf("  no agent image (-plugins-only): the plugin's default agent is %s:%s\n", o.imageRepo, o.version)
	}
	for _, s := range sums {
		fmt.Printf("  %s  %s\n", s.sum, s.name)
	}
	if d := dirty(); len(d) > 0 {
		fmt.Fprintf(os.Stderr, "release: warning: %d tracked files have uncommitted changes; this release is not commit %s as it is (git status)\n", len(d), o.revision)
	}
	return nil
}

// goBuild builds a package for a platform the same way every time: static, -trimpath, the baseline
// instruction set (GOAMD64=v1, GOARM64=v8.0) whatever the environment asks, and fixed ldflags.
func goBuild(p platform, ldflags []string, pkg, out string) error {
	logf("go build %s for %s", pkg, p)
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", strings.Join(ldflags, " "), "-o", out, pkg)
	cmd.Env = append(os.Environ(), "GOOS="+p.os, "GOARCH="+p.arch, "CGO_ENABLED=0", "GOAMD64=v1", "GOARM64=v8.0", "GOFLAGS=")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build %s for %s: %w", pkg, p, err)
	}
	return nil
}

func prefixed(prefix string, ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = prefix + s
	}
	return out
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, ">> "+format+"\n", args...)
}
