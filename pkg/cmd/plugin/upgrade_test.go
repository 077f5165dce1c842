package plugin

import (
	"context"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/apiproxy/apiproxy/test/harness"
)

// TestNodeUpgradeFromAgentsWithoutHandoff: the node DaemonSet rolls with surge (the new pod takes
// the old one's sockets over) except for the one upgrade from a release whose forwarders do not
// hand their sockets over (no --handoff-dir), where a surge pod could never bind: install then
// replaces each node's pod in place, and says so; the next install surges again.
func TestNodeUpgradeFromAgentsWithoutHandoff(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a kube-apiserver")
	}
	cl := harness.Start(t, harness.Options{Name: "upgrade"})
	kc := cl.Kubeconfig
	ctx := context.Background()
	ds := cl.Clientset(t).AppsV1().DaemonSets("apiproxy-system")
	strategy := func() (surge, unavailable int) {
		t.Helper()
		d, err := ds.Get(ctx, "apiproxy-node", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ru := d.Spec.UpdateStrategy.RollingUpdate
		return ru.MaxSurge.IntValue(), ru.MaxUnavailable.IntValue()
	}
	install := func() string {
		t.Helper()
		_, errOut, err := runApiproxy(t, kc, "install", "--roles", "node")
		if err != nil {
			t.Fatalf("install: %v\n%s", err, errOut)
		}
		return errOut
	}
	if errOut := install(); strings.Contains(errOut, "in place") {
		t.Errorf("a fresh install talks of an in-place update:\n%s", errOut)
	}
	if s, u := strategy(); s != 1 || u != 0 {
		t.Errorf("fresh install: maxSurge %d, maxUnavailable %d; want 1, 0", s, u)
	}
	// What an earlier release installed: one forwarder, without --handoff-dir.
	old := `[{"op":"replace","path":"/spec/template/spec/containers/1/args","value":["proxy","--listen","169.254.20.11:8118","--listen-tcp","169.254.20.11:443","--metrics-addr","169.254.20.11:9191"]},` +
		`{"op":"remove","path":"/spec/template/spec/containers/2"}]`
	if _, err := ds.Patch(ctx, "apiproxy-node", types.JSONPatchType, []byte(old), metav1.PatchOptions{FieldManager: "earlier-release"}); err != nil {
		t.Fatal(err)
	}
	errOut := install()
	if !strings.Contains(errOut, "do not hand their listening sockets over: this update replaces each node's pod in place") {
		t.Errorf("the upgrade does not say it replaces the pods in place:\n%s", errOut)
	}
	if s, u := strategy(); s != 0 || u != 1 {
		t.Errorf("upgrade from agents without handoff: maxSurge %d, maxUnavailable %d; want 0, 1", s, u)
	}
	if errOut := install(); strings.Contains(errOut, "in place") {
		t.Errorf("the next install still updates in place:\n%s", errOut)
	}
	if s, u := strategy(); s != 1 || u != 0 {
		t.Errorf("the next install: maxSurge %d, maxUnavailable %d; want 1, 0", s, u)
	}
}
