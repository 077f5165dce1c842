package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
)

// complete checks the flags and fills in what comes from git: the commit and its time.
func (o *options) complete(platforms, imagePlatforms string) error {
	if o.version == "" {
		return fmt.Errorf("-version is required: the version being released, e.g. make release VERSION=v1.2.3")
	}
	if !semverV.MatchString(o.version) {
		return fmt.Errorf("-version %q is not a v-prefixed semantic version (v1.2.3, v1.2.3-rc.1): krew, the image tag and `version` need one", o.version)
	}
	if _, err := name.NewRepository(o.imageRepo, name.StrictValidation); err != nil {
		return fmt.Errorf("-image-repo %q is not an image repository (REGISTRY/PATH without tag or digest, e.g. ghcr.io/apiproxy/agent): %v", o.imageRepo, err)
	}
	var err error
	if o.platforms, err = parsePlatforms(platforms, "-platforms"); err != nil {
		return err
	}
	ips, err := parsePlatforms(imagePlatforms, "-image-platforms")
	if err != nil {
		return err
	}
	for _, p := range ips {
		if p.os != "linux" {
			return fmt.Errorf("-image-platforms: %s: the agent image is linux only", p)
		}
		o.imageArches = append(o.imageArches, p.arch)
	}
	if o.dist == "" {
		return fmt.Errorf("-dist is empty: name the directory to write the release into")
	}

	if o.revision, err = git("rev-parse", "HEAD"); err != nil {
		return fmt.Errorf("the release is made from a git checkout (for the commit it records): %w", err)
	}
	if o.commit, err = git("rev-parse", "--short", "HEAD"); err != nil {
		return err
	}
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		sec, err := strconv.ParseInt(s, 10, 64)
		if err != nil || sec < 0 {
			return fmt.Errorf("SOURCE_DATE_EPOCH=%q is not a Unix time in seconds", s)
		}
		o.created = time.Unix(sec, 0).UTC()
	} else {
		ct, err := git("log", "-1", "--format=%ct")
		if err != nil {
			return err
		}
		sec, err := strconv.ParseInt(ct, 10, 64)
		if err != nil {
			return fmt.Errorf("git log -1 --format=%%ct printed %q: %v", ct, err)
		}
		o.created, o.createdFromGit = time.Unix(sec, 0).UTC(), true
	}
	return nil
}

func parsePlatforms(list, flagName string) ([]platform, error) {
	var ps []platform
	seen := map[string]bool{}
	for _, f := range strings.Fields(list) {
		osName, arch, ok := strings.Cut(f, "/")
		if !ok || osName == "" || arch == "" || strings.Contains(arch, "/") {
			return nil, fmt.Errorf("%s: %q is not OS/ARCH (linux/amd64)", flagName, f)
		}
		if seen[f] {
			return nil, fmt.Errorf("%s: %s is listed twice", flagName, f)
		}
		seen[f] = true
		ps = append(ps, platform{osName, arch})
	}
	if len(ps) == 0 {
		return nil, fmt.Errorf("%s is empty", flagName)
	}
	return ps, nil
}

// git runs git in the current directory and returns its trimmed output.
func git(args ...string) (string, error) {
	out, err := exec.Command("git", args...).Output()
	if err != nil {
		var stderr string
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = strings.TrimSpace(string(ee.Stderr))
		}
		return "", fmt.Errorf("git %s: %v %s", strings.Join(args, " "), err, stderr)
	}
	return strings.TrimSpace(string(out)), nil
}

// dirty lists the tracked files with uncommitted changes: a release of such a tree does not match its
// commit, which the summary says.
func dirty() []string {
	out, err := git("status", "--porcelain", "--untracked-files=no")
	if err != nil || out == "" {
		return nil
	}
	return strings.Split(out, "\n")
}

func defaultDebCache() string {
	dir, err := os.UserCacheDir()
	if err != nil {
		dir = os.TempDir()
	}
	return filepath.Join(dir, "apiproxy", "debs")
}
