// Package plugins holds the krew manifest template; this test renders it the way krew-release-bot
// does and checks it against krew's rules and against the archives `make release` produces.
package plugins

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"text/template"

	"sigs.k8s.io/yaml"
)

type krewPlugin struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Spec struct {
		Version          string `json:"version"`
		Homepage         string `json:"homepage"`
		ShortDescription string `json:"shortDescription"`
		Description      string `json:"description"`
		Caveats          string `json:"caveats"`
		Platforms        []struct {
			Selector struct {
				MatchLabels      map[string]string `json:"matchLabels"`
				MatchExpressions []any             `json:"matchExpressions"`
			} `json:"selector"`
			URI    string `json:"uri"`
			Sha256 string `json:"sha256"`
			Files  []struct {
				From string `json:"from"`
				To   string `json:"to"`
			} `json:"files"`
			Bin string `json:"bin"`
		} `json:"platforms"`
	} `json:"spec"`
}

// render mimics krew-release-bot: addURIAndSha expands {{ .TagName }} inside the URL and emits the
// uri and a sha256 (here a stub derived from the URL) at the platform's indentation.
func render(t *testing.T, tag string) []byte {
	t.Helper()
	src, err := os.ReadFile("krew.yaml")
	if err != nil {
		t.Fatal(err)
	}
	funcs := template.FuncMap{"addURIAndSha": func(url, tagName string) (string, error) {
		var u bytes.Buffer
		if err := template.Must(template.New("url").Parse(url)).Execute(&u, map[string]string{"TagName": tagName}); err != nil {
			return "", err
		}
		return fmt.Sprintf("uri: %s\n    sha256: %x", u.String(), sha256.Sum256(u.Bytes())), nil
	}}
	tmpl, err := template.New("krew").Funcs(funcs).Parse(string(src))
	if err != nil {
		t.Fatalf("krew.yaml is not a valid template: %v", err)
	}
	var out bytes.Buffer
	if err := tmpl.Execute(&out, map[string]string{"TagName": tag}); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

var (
	semverV = regexp.MustCompile(`^v(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?$`)
	hex64   = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// distArchives reads the Makefile's PLATFORMS and hack/release's archive naming, so the manifest and
// the release cannot drift apart (test/release checks the archives a real `make release` writes).
func distArchives(t *testing.T, tag string) map[string]string {
	t.Helper()
	mk, err := os.ReadFile("../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^PLATFORMS\s*\?=\s*(.+)$`).FindSubmatch(mk)
	if m == nil {
		t.Fatal("Makefile has no PLATFORMS list")
	}
	if n := bytes.Count(mk, []byte(`go run ./hack/release `)); n != 2 || bytes.Count(mk, []byte(`-platforms "$(PLATFORMS)"`)) != 2 {
		t.Fatalf("the Makefile's release and dist targets no longer both run hack/release with -platforms \"$(PLATFORMS)\": update this test and plugins/krew.yaml together")
	}
	naming, err := os.ReadFile("../hack/release/run.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"kubectl-apiproxy_%s_%s_%s%s", version, p.os, p.arch, ext`, `ext = ".zip"`, `ext := ".tar.gz"`} {
		if !bytes.Contains(naming, []byte(want)) {
			t.Fatalf("hack/release's archiveName no longer contains %q: update this test and plugins/krew.yaml together", want)
		}
	}
	archives := map[string]string{}
	for _, p := range strings.Fields(string(m[1])) {
		osName, arch, _ := strings.Cut(p, "/")
		ext := ".tar.gz"
		if osName == "windows" {
			ext = ".zip"
		}
		archives[osName+"/"+arch] = fmt.Sprintf("kubectl-apiproxy_%s_%s_%s%s", tag, osName, arch, ext)
	}
	return archives
}

func TestKrewManifestFollowsKrewRules(t *testing.T) {
	for _, tag := range []string{"v0.1.0", "v1.2.3-rc.1"} {
		t.Run(tag, func(t *testing.T) {
			var p krewPlugin
			if err := yaml.UnmarshalStrict(render(t, tag), &p); err != nil {
				t.Fatalf("rendered manifest: %v", err)
			}
			if p.APIVersion != "krew.googlecontainertools.github.com/v1alpha2" || p.Kind != "Plugin" || p.Metadata.Name != "apiproxy" {
				t.Errorf("header: %s %s %s", p.APIVersion, p.Kind, p.Metadata.Name)
			}
			if p.Spec.ShortDescription == "" || len(p.Spec.ShortDescription) > 50 {
				t.Errorf("shortDescription %q: krew wants one, short", p.Spec.ShortDescription)
			}
			if !semverV.MatchString(p.Spec.Version) || p.Spec.Version != tag {
				t.Errorf("version %q is not the v-prefixed semver tag %s", p.Spec.Version, tag)
			}
			archives := distArchives(t, tag)
			seen := map[string]bool{}
			for i, pl := range p.Spec.Platforms {
				if len(pl.Selector.MatchExpressions) > 0 || len(pl.Selector.MatchLabels) != 2 {
					t.Errorf("platform %d: selector must be exactly os and arch: %+v", i, pl.Selector)
				}
				key := pl.Selector.MatchLabels["os"] + "/" + pl.Selector.MatchLabels["arch"]
				if seen[key] {
					t.Errorf("platform %s selected twice: selectors overlap", key)
				}
				seen[key] = true
				want, ok := archives[key]
				if !ok {
					t.Errorf("platform %s is not built by make release", key)
				}
				if pl.URI != "https://github.com/apiproxy/apiproxy/releases/download/"+tag+"/"+want {
					t.Errorf("platform %s uri %s, want the make release archive %s", key, pl.URI, want)
				}
				if !hex64.MatchString(pl.Sha256) {
					t.Errorf("platform %s sha256 %q is not 64 lowercase hex digits", key, pl.Sha256)
				}
				wantBin := "kubectl-apiproxy"
				if pl.Selector.MatchLabels["os"] == "windows" {
					wantBin += ".exe"
				}
				if pl.Bin != wantBin {
					t.Errorf("platform %s bin %q, want %q", key, pl.Bin, wantBin)
				}
				found := false
				for _, f := range pl.Files {
					found = found || (f.From == pl.Bin && f.To == ".")
				}
				if !found {
					t.Errorf("platform %s does not install its bin %s: files %+v", key, pl.Bin, pl.Files)
				}
			}
			for key := range archives {
				if !seen[key] {
					t.Errorf("make release builds %s but the manifest has no platform for it", key)
				}
			}
			if len(seen) != 5 {
				t.Errorf("%d platforms, want linux/darwin amd64+arm64 and windows/amd64", len(seen))
			}
		})
	}
}
