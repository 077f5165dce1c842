package main

import (
	"bytes"
	"fmt"
	"os"
	"path"
	"regexp"
	"sort"
	"strings"
	"text/template"

	"sigs.k8s.io/yaml"
)

// krewValues are the template's data as krew-release-bot passes them: the tag, and the version
// without its v (which the bot finds as the first dotted number in the tag).
type krewValues struct {
	TagName string
	Version string
}

var dottedNumber = regexp.MustCompile(`\d+(\.\d+)+`)

// renderKrewManifest renders the krew-release-bot template the way the bot does on a release, with
// the archives written here instead of downloaded ones: addURIAndSha expands the URL (its own
// {{ .TagName }} included) and emits `uri:` and `sha256:` at the platform's indentation. A URL whose
// archive the release did not build, or an archive no platform downloads, is an error: the manifest
// and the build must list the same platforms.
func renderKrewManifest(templatePath, version string, archives map[string]string, dest string) error {
	src, err := os.ReadFile(templatePath)
	if err != nil {
		return fmt.Errorf("krew manifest template: %w", err)
	}
	values := krewValues{TagName: version, Version: dottedNumber.FindString(version)}
	if values.Version == "" {
		values.Version = version
	}
	used := map[string]bool{}
	funcs := template.FuncMap{
		"addURIAndSha": func(url, tag string) (string, error) {
			var u bytes.Buffer
			t, err := template.New("url").Parse(url)
			if err != nil {
				return "", err
			}
			v := values
			v.TagName = tag
			if err := t.Execute(&u, v); err != nil {
				return "", err
			}
			name := path.Base(u.String())
			file, ok := archives[name]
			if !ok {
				return "", fmt.Errorf("%s downloads %s, which this release does not build (it builds %s)", templatePath, name, strings.Join(sortedKeys(archives), ", "))
			}
			sum, err := sha256File(file)
			if err != nil {
				return "", err
			}
			used[name] = true
			return fmt.Sprintf("uri: %s\n    sha256: %s", u.String(), sum), nil
		},
		// indent is the bot's other function: pad every line but the first.
		"indent": func(spaces int, v string) string {
			pad := strings.Repeat(" ", spaces)
			return strings.TrimSpace(pad + strings.ReplaceAll(strings.ReplaceAll(v, "    sha256:", "sha256:"), "\n", "\n"+pad))
		},
	}
	tmpl, err := template.New(path.Base(templatePath)).Funcs(funcs).Parse(string(src))
	if err != nil {
		return fmt.Errorf("krew manifest template %s: %w", templatePath, err)
	}
	var out bytes.Buffer
	if err := tmpl.Execute(&out, values); err != nil {
		return fmt.Errorf("krew manifest template %s: %w", templatePath, err)
	}
	for _, name := range sortedKeys(archives) {
		if !used[name] {
			return fmt.Errorf("this release builds %s but %s has no platform downloading it", name, templatePath)
		}
	}
	var check map[string]any
	if err := yaml.Unmarshal(out.Bytes(), &check); err != nil {
		return fmt.Errorf("the rendered krew manifest is not YAML: %w", err)
	}
	return os.WriteFile(dest, out.Bytes(), 0o644)
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
