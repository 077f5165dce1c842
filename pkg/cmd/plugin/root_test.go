package plugin

import (
	"bytes"
	"strings"
	"testing"

	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/apiproxy/apiproxy/pkg/version"
)

func TestRootShowsAsKubectlPluginWithKubeconfigFlags(t *testing.T) {
	streams, _, out, _ := genericiooptions.NewTestIOStreams()
	root := NewRootCommand(streams)
	root.SetArgs([]string{"--help"})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	help := out.String()
	for _, want := range []string{"kubectl apiproxy [command]", "--kubeconfig", "--context", "-n, --namespace"} {
		if !strings.Contains(help, want) {
			t.Errorf("help lacks %q:\n%s", want, help)
		}
	}
}

func TestVersionPrintsStampedVersion(t *testing.T) {
	old := version.Version
	version.Version = "v1.2.3-test"
	defer func() { version.Version = old }()
	for _, args := range [][]string{{"version"}, {"version", "-o", "json"}, {"version", "-o", "yaml"}} {
		streams, _, out, _ := genericiooptions.NewTestIOStreams()
		root := NewRootCommand(streams)
		root.SetArgs(args)
		if err := root.Execute(); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		if !strings.Contains(out.String(), "v1.2.3-test") {
			t.Errorf("%v printed %q, want the stamped version", args, out.String())
		}
	}
	streams, _, _, _ := genericiooptions.NewTestIOStreams()
	root := NewRootCommand(streams)
	root.SetArgs([]string{"version", "-o", "xml"})
	root.SetErr(&bytes.Buffer{})
	if err := root.Execute(); err == nil || !strings.Contains(err.Error(), "xml") {
		t.Errorf("version -o xml: err = %v, want an error naming the format", err)
	}
}
