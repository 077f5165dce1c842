// Package imageref reads the agent's image references the way a container runtime will, checks the
// values of install's --image and --registry with messages that name the flag, moves a reference to
// a mirror (--registry), and compares the digests a runtime reports with a pinned one.
package imageref

import (
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Reference is an image reference split into what a registry rewrite replaces (Repository's
// registry and path prefix) and what it keeps (the last path component, Tag and Digest).
type Reference struct {
	// Repository is everything before the tag and digest, as written: ghcr.io/apiproxy/agent.
	Repository string
	// Tag is "" when the reference has none.
	Tag string
	// Digest is "" when the reference has none, else e.g. sha256:<64 hex digits>.
	Digest string
}

// Parse reads an image reference as given to flag (named in every error), with go-containerregistry's
// parser, which accepts what containerd pulls: [REGISTRY/]PATH[:TAG][@DIGEST].
func Parse(flag, s string) (Reference, error) {
	if strings.TrimSpace(s) == "" {
		return Reference{}, fmt.Errorf("%s is empty: give an image reference, e.g. %s", flag, exampleImage)
	}
	if strings.ContainsFunc(s, isSpace) {
		return Reference{}, fmt.Errorf("%s %q contains spaces: give an image reference, e.g. %s", flag, s, exampleImage)
	}
	if strings.Contains(s, "://") {
		return Reference{}, fmt.Errorf("%s %q has a URL scheme: an image reference has none, e.g. %s", flag, s, exampleImage)
	}
	if _, err := name.ParseReference(s); err != nil {
		return Reference{}, fmt.Errorf("%s %q is not an image reference (%v): use [REGISTRY/]PATH[:TAG][@DIGEST], e.g. %s", flag, s, err, exampleImage)
	}
	var r Reference
	base, dig, hasDigest := strings.Cut(s, "@")
	if hasDigest {
		r.Digest = dig
	}
	// No default tag: a reference without one keeps having none (the runtime then means latest).
	tag, err := name.NewTag(base, name.WithDefaultTag(""))
	if err != nil {
		return Reference{}, fmt.Errorf("%s %q is not an image reference (%v): use [REGISTRY/]PATH[:TAG][@DIGEST], e.g. %s", flag, s, err, exampleImage)
	}
	r.Tag = tag.TagStr()
	r.Repository = strings.TrimSuffix(base, ":"+r.Tag)
	if r.Tag == "" {
		r.Repository = base
	}
	if strings.Contains(r.Repository, "//") || strings.HasSuffix(r.Repository, "/") || strings.HasPrefix(r.Repository, "/") {
		return Reference{}, fmt.Errorf("%s %q has an empty path component: use [REGISTRY/]PATH[:TAG][@DIGEST], e.g. %s", flag, s, exampleImage)
	}
	return r, nil
}

// String is the reference as a runtime reads it.
func (r Reference) String() string {
	s := r.Repository
	if r.Tag != "" {
		s += ":" + r.Tag
	}
	if r.Digest != "" {
		s += "@" + r.Digest
	}
	return s
}

// Name is the last path component, which a registry rewrite keeps: agent in ghcr.io/apiproxy/agent.
func (r Reference) Name() string {
	return r.Repository[strings.LastIndex(r.Repository, "/")+1:]
}

// WithRegistry moves the reference to registry (HOST[:PORT][/PATH], as ParseRegistry returns it),
// keeping its name, tag and digest: ghcr.io/apiproxy/agent:v1@sha256:… with mirror.example:5000/team
// becomes mirror.example:5000/team/agent:v1@sha256:….
func (r Reference) WithRegistry(registry string) Reference {
	r.Repository = registry + "/" + r.Name()
	return r
}

const (
	exampleImage    = "ghcr.io/apiproxy/agent:v1.2.3"
	exampleRegistry = "mirror.example:5000/team"
)

// pathComponent is the distribution spec's rule for one path component of a repository name.
var pathComponent = regexp.MustCompile(`^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$`)

// hostLabel is one DNS label of a registry host.
var hostLabel = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?$`)

// ParseRegistry checks a --registry value, HOST[:PORT][/PATH], and returns it in the form
// WithRegistry takes. flag names the flag in errors.
func ParseRegistry(flag, s string) (string, error) {
	bad := func(why string) error {
		return fmt.Errorf("%s %q %s: use HOST[:PORT][/PATH], e.g. %s", flag, s, why, exampleRegistry)
	}
	switch {
	case strings.TrimSpace(s) == "":
		return "", bad("is empty")
	case strings.ContainsFunc(s, isSpace):
		return "", bad("contains spaces")
	case strings.Contains(s, "://"):
		return "", bad("has a URL scheme (the runtime chooses https, or http for registries it is told are insecure)")
	case strings.Contains(s, "@"):
		return "", bad("has a digest: the digest of the agent image is kept, give only where it moves")
	}
	host, path, _ := strings.Cut(s, "/")
	if err := checkHost(host); err != nil {
		return "", bad(err.Error())
	}
	if path != "" || strings.HasSuffix(s, "/") {
		for _, c := range strings.Split(path, "/") {
			switch {
			case c == "":
				return "", bad("has an empty path component")
			case strings.Contains(c, ":"):
				return "", bad("has a tag: the tag of the agent image is kept, give only where it moves")
			case !pathComponent.MatchString(c):
				return "", bad(fmt.Sprintf("has the path component %q: use lower-case letters, digits and single separators (. _ -)", c))
			}
		}
	}
	// Whatever passed the checks above must also make references the parser of --image accepts.
	if _, err := name.NewTag(s + "/agent:v1"); err != nil {
		return "", bad(fmt.Sprintf("does not make an image reference (%v)", err))
	}
	return s, nil
}

// checkHost accepts what containerd takes as a registry host: a name with a dot, localhost, an IP
// address (IPv6 in brackets), each with an optional port. A bare word (mirror) would be read as the
// first path component of a Docker Hub repository.
func checkHost(hostport string) error {
	host := hostport
	if strings.Contains(hostport, ":") && !strings.HasSuffix(hostport, "]") {
		h, port, err := net.SplitHostPort(hostport)
		if err != nil {
			if net.ParseIP(hostport) != nil {
				return fmt.Errorf("has an IPv6 address without brackets: write [%s]", hostport)
			}
			return fmt.Errorf("has the host %q, which is not HOST:PORT", hostport)
		}
		if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
			return fmt.Errorf("has the port %q: use 1-65535", port)
		}
		if strings.HasPrefix(hostport, "[") { // [IPv6]:PORT
			if ip := net.ParseIP(h); ip == nil || ip.To4() != nil {
				return fmt.Errorf("has the host %q, which is not an IPv6 address", h)
			}
			return nil
		}
		host = h
	}
	if inner, ok := strings.CutPrefix(host, "["); ok {
		inner, closed := strings.CutSuffix(inner, "]")
		if ip := net.ParseIP(inner); !closed || ip == nil || ip.To4() != nil {
			return fmt.Errorf("has the host %q, which is not an IPv6 address in brackets", host)
		}
		return nil
	}
	switch {
	case host == "":
		return fmt.Errorf("has no host")
	case host == "localhost" || net.ParseIP(host) != nil:
		return nil
	case !strings.Contains(host, ".") && host == hostport:
		return fmt.Errorf("has the host %q, which runtimes read as a Docker Hub path, not a registry: give a host with a dot or a port (or docker.io/%s)", host, host)
	}
	for _, l := range strings.Split(host, ".") {
		if len(l) > 63 || !hostLabel.MatchString(l) {
			return fmt.Errorf("has the host %q, which is not a DNS name or IP address", host)
		}
	}
	return nil
}

func isSpace(r rune) bool {
	return r == ' ' || r == '\t' || r == '\n' || r == '\r' || r == '\v' || r == '\f'
}

// ParseDigest reads a digest (sha256:<hex>); ok is false for anything else.
func ParseDigest(s string) (v1.Hash, bool) {
	h, err := v1.NewHash(s)
	return h, err == nil
}

// RunningDigest is the registry digest in a container status's imageID, which containerd reports as
// repo@sha256:… (the digest the image was pulled by; for a pull by tag the digest the tag resolved
// to). Older runtimes prefix a scheme (docker-pullable://). An image known to the runtime only by
// its local ID (sha256:… without a repository, e.g. imported without a repo digest) has no
// registry digest: ok is false then.
func RunningDigest(imageID string) (v1.Hash, bool) {
	if _, rest, found := strings.Cut(imageID, "://"); found {
		imageID = rest
	}
	_, dig, found := strings.Cut(imageID, "@")
	if !found {
		return v1.Hash{}, false
	}
	return ParseDigest(dig)
}

// Short abbreviates a digest for a line a person reads: sha256: and the first 12 hex digits.
func Short(h v1.Hash) string {
	if len(h.Hex) <= 12 {
		return h.String()
	}
	return h.Algorithm + ":" + h.Hex[:12] + "…"
}
