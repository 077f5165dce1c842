package plugin

import (
	"context"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/apiproxy/apiproxy/test/testnet"
)

// Flag combinations that cannot work are refused before any cluster is contacted.
func TestConnectValidation(t *testing.T) {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["c"] = &clientcmdapi.Cluster{Server: "https://127.0.0.1:1"}
	kc.AuthInfos["u"] = &clientcmdapi.AuthInfo{}
	kc.Contexts["cl02"] = &clientcmdapi.Context{Cluster: "c", AuthInfo: "u"}
	kc.CurrentContext = "cl02"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"connect"}, "--remote"},
		{[]string{"connect", "--proxy-url", "https://p:1"}, "scheme"},
		{[]string{"connect", "--proxy-url", "http://p:1", "--print-kubeconfig", "--merge"}, "exclusive"},
		{[]string{"connect", "--proxy-url", "http://p:1", "--print-kubeconfig", "--", "kubectl"}, "local listener"},
		{[]string{"connect", "--proxy-url", "http://p:1", "stray"}, "after \"--\""},
		{[]string{"connect", "--proxy-url", "http://p:1", "--listen", "nope"}, "--listen"},
		{[]string{"--context", "missing", "connect", "--proxy-url", "http://p:1"}, `"missing"`},
		{[]string{"connect", "--proxy-url", "http://p:1", "--via", "cl01", "--print-kubeconfig"}, "cannot express the port-forward hop"},
		{[]string{"connect", "--proxy-url", "http://p:1", "--via", "cl01", "--merge"}, "cannot be combined with --print-kubeconfig, --write-kubeconfig or --merge"},
		{[]string{"connect", "--proxy-url", "http://p:1", "--via", "cl01", "--write-kubeconfig", "x"}, "proxy-url names one proxy"},
		{[]string{"connect", "--proxy-url", "http://p:1", "--via", "cl01", "--via-namespace", ""}, "--via-namespace"},
		{[]string{"connect", "--proxy-url", "http://p:1", "--via", "nowhere", "--", "true"}, `"nowhere"`},
	} {
		streams, _, out, _ := genericiooptions.NewTestIOStreams()
		root := NewRootCommand(streams)
		root.SetArgs(append([]string{"--kubeconfig", path}, tc.args...))
		err := root.Execute()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err = %v, want one mentioning %q", tc.args, err, tc.want)
		}
		if out.Len() != 0 {
			t.Errorf("%v: printed %q on stdout although it failed", tc.args, out.String())
		}
	}

	// --print-kubeconfig with --proxy-url needs no cluster at all.
	streams, _, out, _ := genericiooptions.NewTestIOStreams()
	root := NewRootCommand(streams)
	root.SetArgs([]string{"--kubeconfig", path, "connect", "--proxy-url", "http://127.0.0.9:8118", "--print-kubeconfig"})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	got, err := clientcmd.Load(out.Bytes())
	if err != nil || got.Clusters["c"].ProxyURL != "http://127.0.0.9:8118" {
		t.Fatalf("printed kubeconfig: %v %+v", err, got)
	}
}

// A listener that fails while the command runs ends connect with an error (non-zero status) that
// says so, and the command, which can no longer reach the API server, is stopped.
func TestConnectListenerFailureStopsCommand(t *testing.T) {
	// Not a bytes.Buffer: exec copies the command's stderr into it from another goroutine with
	// ReadFrom, which can truncate away a line connect writes meanwhile.
	var errOut testnet.SyncBuffer
	o := &ConnectOptions{IOStreams: genericiooptions.IOStreams{In: strings.NewReader(""), Out: io.Discard, ErrOut: &errOut},
		Command: []string{"sleep", "600"}}
	served := make(chan error, 1)
	served <- errors.New("accept tcp 127.0.0.1:1: too many open files")
	done := make(chan error, 1)
	go func() { done <- o.runCommand(context.Background(), "/nonexistent", func() {}, served) }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "listener failed") || !strings.Contains(err.Error(), "too many open files") {
			t.Fatalf("runCommand = %v, want the listener's failure", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("connect kept waiting for the command after its listener failed")
	}
	if !strings.Contains(errOut.String(), "stopping \"sleep\"") {
		t.Fatalf("stderr does not say the command is stopped: %q", errOut.String())
	}
}
