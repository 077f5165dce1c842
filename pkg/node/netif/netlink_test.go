package netif

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

func TestValidateLinkName(t *testing.T) {
	for _, ok := range []string{"lo", "apiproxy0", "eth0.100", "a-b_c"} {
		if err := ValidateLinkName(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for bad, msg := range map[string]string{
		"":                      "empty",
		"this-name-is-too-long": "at most 15",
		"a/b":                   "'/'",
		"a b":                   "whitespace",
		"..":                    "reserved",
	} {
		if err := ValidateLinkName(bad); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("%q: got %v, want an error mentioning %q", bad, err, msg)
		}
	}
}

// newNamespace creates a fresh, named network namespace (so `ip -n` can reach it too) without
// leaving the test's goroutine or thread in it, and deletes it at the end.
func newNamespace(t *testing.T) (string, netns.NsHandle) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	name := "apiproxy-test-" + hex.EncodeToString(b)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.NewNamed(name) // also switches this thread into it
	if err != nil {
		t.Fatalf("create network namespace: %v", err)
	}
	if err := netns.Set(orig); err != nil {
		t.Fatalf("return to the original namespace: %v", err)
	}
	t.Cleanup(func() {
		ns.Close()
		_ = netns.DeleteNamed(name)
	})
	return name, ns
}

func ipIn(t *testing.T, ns string, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"-n", ns}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip -n %s %v: %v\n%s", ns, args, err, out)
	}
	return string(out)
}

func TestNetlinkInNamespace(t *testing.T) {
	name, ns := newNamespace(t)
	n, err := NewAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	ip := net.ParseIP("10.96.0.2").To4()

	created, err := n.EnsureLink("apiproxy0")
	if err != nil || !created {
		t.Fatalf("EnsureLink = %v, %v; want created", created, err)
	}
	link := ipIn(t, name, "-d", "link", "show", "apiproxy0")
	if !strings.Contains(link, ",UP") || !strings.Contains(link, OwnerAlias) {
		t.Fatalf("new link must be up and marked as ours:\n%s", link)
	}
	if created, err := n.EnsureLink("apiproxy0"); err != nil || created {
		t.Fatalf("second EnsureLink = %v, %v; want existing", created, err)
	}
	if owned, _ := n.OwnedLink("apiproxy0"); !owned {
		t.Error("OwnedLink(apiproxy0) = false for a link we created")
	}
	// lo exists (down) in a fresh namespace: ensured up, never reported as created or owned.
	if created, err := n.EnsureLink("lo"); err != nil || created {
		t.Fatalf("EnsureLink(lo) = %v, %v", created, err)
	}
	if owned, _ := n.OwnedLink("lo"); owned {
		t.Error("lo must never count as ours")
	}

	for i, want := range []bool{true, false} {
		if added, err := n.EnsureAddress("apiproxy0", ip); err != nil || added != want {
			t.Fatalf("EnsureAddress #%d = %v, %v; want added=%v", i, added, err, want)
		}
	}
	if out := ipIn(t, name, "-4", "addr", "show", "apiproxy0"); strings.Count(out, "10.96.0.2/32") != 1 {
		t.Fatalf("want 10.96.0.2/32 once:\n%s", out)
	}
	ipIn(t, name, "addr", "add", "10.96.0.2/24", "dev", "lo")
	links, err := n.LinksWithAddress(ip)
	if err != nil || strings.Join(links, ",") != "lo,apiproxy0" && strings.Join(links, ",") != "apiproxy0,lo" {
		t.Fatalf("LinksWithAddress = %v, %v; want lo and apiproxy0", links, err)
	}
	if err := n.DeleteAddress("lo", ip); err != nil {
		t.Fatal(err)
	}
	if err := n.DeleteAddress("lo", ip); err != nil {
		t.Fatalf("deleting an absent address must succeed: %v", err)
	}
	if out := ipIn(t, name, "-4", "addr", "show", "lo"); strings.Contains(out, "10.96.0.2") {
		t.Fatalf("address still on lo:\n%s", out)
	}

	v6 := net.ParseIP("fd00::2")
	if _, err := n.EnsureAddress("apiproxy0", v6); err != nil {
		t.Fatal(err)
	}
	if out := ipIn(t, name, "-6", "addr", "show", "apiproxy0"); !strings.Contains(out, "fd00::2/128") || strings.Contains(out, "fd00::2/128 scope global tentative") {
		t.Fatalf("want fd00::2/128, usable at once (no DAD):\n%s", out)
	}

	if err := n.DeleteLink("apiproxy0"); err != nil {
		t.Fatal(err)
	}
	if err := n.DeleteLink("apiproxy0"); err != nil {
		t.Fatalf("deleting an absent link must succeed: %v", err)
	}
}

func TestSubscribeSeesExternalChanges(t *testing.T) {
	name, ns := newNamespace(t)
	n, err := NewAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	ip := net.ParseIP("10.96.0.7").To4()
	if _, err := n.EnsureLink("lo"); err != nil {
		t.Fatal(err)
	}
	if _, err := n.EnsureAddress("lo", ip); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan Event, 16)
	if err := n.Subscribe(ctx, ch); err != nil {
		t.Fatal(err)
	}
	ipIn(t, name, "addr", "del", "10.96.0.7/32", "dev", "lo")
	deadline := time.After(5 * time.Second)
	for got := false; !got; {
		select {
		case e := <-ch:
			got = e.IP.Equal(ip) && e.Deleted
		case <-deadline:
			t.Fatal("no deletion event within 5 s")
		}
	}
	cancel()
	closed := time.After(5 * time.Second)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return // closed once ctx is done, as promised
			}
		case <-closed:
			t.Fatal("the event channel was not closed within 5 s of cancelling")
		}
	}
}
