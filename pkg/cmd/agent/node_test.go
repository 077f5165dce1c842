package agent

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/apiproxy/apiproxy/pkg/node/netif"
	"github.com/apiproxy/apiproxy/test/harness"
	"github.com/apiproxy/apiproxy/test/testnet"
)

// Bad input is rejected before anything on the node is touched, so these need no root.
func TestNodeBadInput(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{}, "--ip-address is required"},
		{[]string{"--ip-address", "not-an-ip"}, `"not-an-ip" is not an IP address`},
		{[]string{"--ip-address", "10.96.0.2/32"}, "without a prefix length"},
		{[]string{"--ip-address", "0.0.0.0"}, "give a unicast address"},
		{[]string{"--ip-address", "10.96.0.2", "--interface", "this-name-is-too-long"}, "at most 15"},
		{[]string{"--ip-address", "10.96.0.2", "--interface", "a/b"}, "does not allow"},
		{[]string{"--ip-address", "10.96.0.2", "--port", "0"}, "between 1 and 65535"},
		{[]string{"--ip-address", "10.96.0.2", "--port", "70000"}, "between 1 and 65535"},
		{[]string{"--ip-address", "10.96.0.2", "--sync-interval", "0s"}, "must be positive"},
		{[]string{"--ip-address", "10.96.0.2", "--daemon=false", "--cleanup"}, "drop one of the two flags"},
		{[]string{"--ip-address", "10.96.0.2", "--cleanup", "--cleanup-when-owner-deleted", "ns/ds"}, "drop one of the two flags"},
		{[]string{"--ip-address", "10.96.0.2", "--daemon=false", "--cleanup-when-owner-deleted", "ns/ds"}, "nothing to clean later"},
		{[]string{"--ip-address", "10.96.0.2", "--cleanup-when-owner-deleted", "apiproxy-node"}, "is not NAMESPACE/NAME of a DaemonSet"},
		{[]string{"--ip-address", "10.96.0.2", "--cleanup-when-owner-deleted", "Bad_NS/ds"}, "is not NAMESPACE/NAME of a DaemonSet"},
		{[]string{"--ip-address", "10.96.0.2", "--kubeconfig", "/x"}, "only used by --cleanup-when-owner-deleted"},
	}
	for _, c := range cases {
		var out, errOut bytes.Buffer
		root := NewRootCommand(&out, &errOut)
		root.SetArgs(append([]string{"node"}, c.args...))
		err := root.Execute()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("agent node %v: got %v, want an error containing %q", c.args, err, c.want)
		}
	}
}

func TestNodeFlagDefaults(t *testing.T) {
	cmd := newNodeCommand(&bytes.Buffer{}, &bytes.Buffer{})
	for flag, want := range map[string]string{
		"interface": "lo", "port": "443", "daemon": "true", "sync-interval": "1m0s",
		"setup-iptables": "false", "cleanup": "false", "ip-address": "", "metrics-addr": "",
		"cleanup-when-owner-deleted": "", "kubeconfig": "",
	} {
		f := cmd.Flags().Lookup(flag)
		if f == nil || f.DefValue != want {
			t.Errorf("--%s default = %v, want %q", flag, f, want)
		}
	}
}

// ---- real network namespaces, real binary ----

// nodeAgentBinary is the real agent for the namespace tests. It runs under `ip netns exec`, so the
// whole process, including the iptables binaries go-iptables execs, lives in the test's namespace.
func nodeAgentBinary(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and changes addresses and iptables in them")
	}
	bin := harness.Binary(t, "./cmd/agent")
	if _, err := exec.LookPath("iptables"); err != nil {
		t.Fatal("iptables is not installed: apt-get install -y iptables")
	}
	return bin
}

// testNetns creates a fresh named network namespace, deleted at the end of the test.
func testNetns(t *testing.T) string {
	t.Helper()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	name := "apiproxy-test-" + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v\n%s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "delete", name).Run() })
	return name
}

// inNetns runs a command in the namespace and returns its combined output and error.
func inNetns(ns string, args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...).CombinedOutput()
	return string(out), err
}

func mustInNetns(t *testing.T, ns string, args ...string) string {
	t.Helper()
	out, err := inNetns(ns, args...)
	if err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
	return out
}

// saved returns iptables-save (or ip6tables-save) output without its timestamped comments.
func saved(t *testing.T, ns, bin string) string {
	var keep []string
	for _, l := range strings.Split(mustInNetns(t, ns, bin), "\n") {
		if !strings.HasPrefix(l, "#") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

func wantRules(ip, port string) []string {
	return []string{
		"-A PREROUTING -d " + ip + " -p tcp -m tcp --dport " + port + " -j NOTRACK",
		"-A OUTPUT -d " + ip + " -p tcp -m tcp --dport " + port + " -j NOTRACK",
		"-A OUTPUT -s " + ip + " -p tcp -m tcp --sport " + port + " -j NOTRACK",
		"-A INPUT -d " + ip + " -p tcp -m tcp --dport " + port + " -j ACCEPT",
		"-A OUTPUT -s " + ip + " -p tcp -m tcp --sport " + port + " -j ACCEPT",
	}
}

func countRules(save string, rules []string) (present, total int) {
	for _, r := range rules {
		n := strings.Count(save, r+"\n")
		total += n
		if n > 0 {
			present++
		}
	}
	return present, total
}

// kernelHasDummy says whether this kernel can create dummy devices (some VM kernels are built
// without CONFIG_DUMMY; the agent then uses a port-less bridge).
func kernelHasDummy(t *testing.T, ns string) bool {
	if _, err := inNetns(ns, "ip", "link", "add", "probe0", "type", "dummy"); err != nil {
		return false
	}
	mustInNetns(t, ns, "ip", "link", "del", "probe0")
	return true
}

func TestNodeOneShotIsIdempotent(t *testing.T) {
	for _, c := range []struct{ ip, cidr, save, iface string }{
		{"10.96.0.2", "10.96.0.2/32", "iptables-save", "apiproxy0"},
		{"fd00::2", "fd00::2/128", "ip6tables-save", "apiproxy6"},
	} {
		t.Run(c.save, func(t *testing.T) {
			agent := nodeAgentBinary(t)
			ns := testNetns(t)
			dummy := kernelHasDummy(t, ns)
			args := []string{agent, "node", "--ip-address", c.ip, "--interface", c.iface, "--port", "6443", "--setup-iptables", "--daemon=false"}
			if out, err := inNetns(ns, args...); err != nil {
				t.Fatalf("one-shot sync failed: %v\n%s", err, out)
			}
			link := mustInNetns(t, ns, "ip", "-d", "addr", "show", c.iface)
			if !strings.Contains(link, c.cidr) || !strings.Contains(link, ",UP") || !strings.Contains(link, netif.OwnerAlias) {
				t.Fatalf("want %s up with %s and our mark:\n%s", c.iface, c.cidr, link)
			}
			if dummy && !strings.Contains(link, "\n    dummy ") {
				t.Errorf("want a dummy device:\n%s", link)
			}
			first := saved(t, ns, c.save)
			if present, total := countRules(first, wantRules(c.cidr, "6443")); present != 5 || total != 5 {
				t.Fatalf("want the five rules once each, got %d present / %d total:\n%s", present, total, first)
			}
			if out, err := inNetns(ns, args...); err != nil {
				t.Fatalf("second run failed: %v\n%s", err, out)
			}
			if second := saved(t, ns, c.save); second != first {
				t.Errorf("second run changed the rules:\n--- first\n%s\n--- second\n%s", first, second)
			}
			if n := strings.Count(mustInNetns(t, ns, "ip", "addr", "show", c.iface), c.cidr); n != 1 {
				t.Errorf("address present %d times after two runs", n)
			}
		})
	}
}

func TestNodeOneShotFailures(t *testing.T) {
	agent := nodeAgentBinary(t)
	ns := testNetns(t)
	cases := []struct {
		name string
		cmd  []string
		want string
	}{
		{"no privileges", []string{"setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
			agent, "node", "--ip-address", "10.96.0.2", "--daemon=false"}, "needs CAP_NET_ADMIN"},
		{"iptables missing", []string{"env", "PATH=/nonexistent", agent, "node", "--ip-address", "10.96.0.2",
			"--setup-iptables", "--daemon=false"}, "install iptables"},
		{"bad ip", []string{agent, "node", "--ip-address", "not-an-ip", "--daemon=false"}, "not an IP address"},
	}
	for _, c := range cases {
		out, err := inNetns(ns, c.cmd...)
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() == 0 || !strings.Contains(out, c.want) {
			t.Errorf("%s: want a non-zero exit saying %q, got %v:\n%s", c.name, c.want, err, out)
		}
	}
	if out := mustInNetns(t, ns, "ip", "addr"); strings.Contains(out, "10.96.0.2") {
		t.Errorf("a failed run left the address behind:\n%s", out)
	}
}

// nodeDaemon is an agent started by startNodeDaemon.
type nodeDaemon struct {
	cmd  *exec.Cmd
	logs *testnet.SyncBuffer
	done chan struct{} // closed once the process has exited and been reaped
}

// startNodeDaemon runs the agent as a daemon in ns; it is stopped (SIGTERM, then SIGKILL) at the
// end of the test unless the test stops it first with stop.
func startNodeDaemon(t *testing.T, ns string, args ...string) *nodeDaemon {
	t.Helper()
	agent := nodeAgentBinary(t)
	// `ip netns exec` execs the agent in place, so the PID we signal is the agent's.
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, agent, "node"}, args...)...)
	logs := &testnet.SyncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &nodeDaemon{cmd: cmd, logs: logs, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(d.done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-d.done
		}
		if t.Failed() {
			t.Logf("agent logs:\n%s", logs.String())
		}
	})
	return d
}

// stop sends SIGTERM and waits (bounded) for the process to exit with status 0.
func (d *nodeDaemon) stop(t *testing.T) {
	t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the agent did not exit within 10 s of SIGTERM")
	}
	if code := d.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("agent exited with %d after SIGTERM", code)
	}
}

func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestNodeDaemonRepairsAddressOnKernelEventsAndCleansUp(t *testing.T) {
	ns := testNetns(t)
	rules := wantRules("10.96.0.2/32", "443")
	hasAddr := func(iface string) bool {
		out, _ := inNetns(ns, "ip", "-4", "addr", "show", "dev", iface)
		return strings.Contains(out, "10.96.0.2/32")
	}
	// The interval is an hour: every repair below can only come from a kernel event.
	cmd := startNodeDaemon(t, ns, "--ip-address", "10.96.0.2", "--interface", "apiproxy0",
		"--setup-iptables", "--cleanup", "--sync-interval", "1h")
	waitUntil(t, 5*time.Second, "the address and the five rules", func() bool {
		p, _ := countRules(saved(t, ns, "iptables-save"), rules)
		return hasAddr("apiproxy0") && p == 5
	})

	for i := 0; i < 3; i++ {
		mustInNetns(t, ns, "ip", "addr", "del", "10.96.0.2/32", "dev", "apiproxy0")
		waitUntil(t, 5*time.Second, "the deleted address to come back", func() bool { return hasAddr("apiproxy0") })
	}

	// A copy of the IP on another interface is removed (a moved IP must not linger).
	mustInNetns(t, ns, "ip", "link", "add", "other0", "type", "bridge")
	mustInNetns(t, ns, "ip", "addr", "add", "10.96.0.2/32", "dev", "other0")
	waitUntil(t, 5*time.Second, "the stray copy on other0 to be removed", func() bool { return !hasAddr("other0") })

	// The device itself deleted: recreated with the address.
	mustInNetns(t, ns, "ip", "link", "del", "apiproxy0")
	waitUntil(t, 5*time.Second, "the deleted device and its address to come back", func() bool { return hasAddr("apiproxy0") })

	cmd.stop(t)
	if p, _ := countRules(saved(t, ns, "iptables-save"), rules); p != 0 {
		t.Errorf("%d rules left after cleanup", p)
	}
	if out, err := inNetns(ns, "ip", "link", "show", "apiproxy0"); err == nil {
		t.Errorf("the device the agent created is still there after cleanup:\n%s", out)
	}
	if _, err := inNetns(ns, "ip", "link", "show", "lo"); err != nil {
		t.Error("lo is gone")
	}
	if out, _ := inNetns(ns, "ip", "addr", "show", "dev", "other0"); !strings.Contains(out, "other0") {
		t.Errorf("cleanup touched other0:\n%s", out)
	}
}

func TestNodeDaemonRestoresRulesAtNextSync(t *testing.T) {
	ns := testNetns(t)
	rules := wantRules("10.96.0.3/32", "443")
	count := func() (int, int) { return countRules(saved(t, ns, "iptables-save"), rules) }
	// iptables changes raise no netlink event: the periodic sync is what repairs them.
	d := startNodeDaemon(t, ns, "--ip-address", "10.96.0.3", "--setup-iptables", "--sync-interval", "1s")
	waitUntil(t, 5*time.Second, "the rules", func() bool { p, _ := count(); return p == 5 })
	mustInNetns(t, ns, "iptables", "-t", "raw", "-D", "OUTPUT", "-s", "10.96.0.3/32", "-p", "tcp", "-m", "tcp", "--sport", "443", "-j", "NOTRACK")
	mustInNetns(t, ns, "iptables", "-t", "filter", "-F", "INPUT")
	// A sync may run between the two deletions, so the repair shows as one or two log lines; the
	// initial setup logs count=5, so any smaller count is the repair.
	waitUntil(t, 10*time.Second, "the deleted rules to come back at the next sync", func() bool {
		p, _ := count()
		logs := d.logs.String()
		return p == 5 && (strings.Contains(logs, `"Added iptables rules" count=2`) || strings.Contains(logs, `"Added iptables rules" count=1`))
	})
	time.Sleep(1500 * time.Millisecond) // at least one more sync: it must not add duplicates
	if p, total := count(); p != 5 || total != 5 {
		t.Errorf("after repair: %d rules present, %d in total; want 5 and 5", p, total)
	}
	if out := mustInNetns(t, ns, "ip", "addr", "show", "dev", "lo"); !strings.Contains(out, "10.96.0.3/32") || !strings.Contains(out, "UP") {
		t.Errorf("default interface lo must be up with the address:\n%s", out)
	}
}

func TestNodeCleanupKeepsDevicesItDidNotCreate(t *testing.T) {
	for _, iface := range []string{"lo", "keep0"} {
		t.Run(iface, func(t *testing.T) {
			ns := testNetns(t)
			if iface != "lo" {
				if _, err := inNetns(ns, "ip", "link", "add", iface, "type", "dummy"); err != nil {
					mustInNetns(t, ns, "ip", "link", "add", iface, "type", "bridge")
				}
			}
			has := func() bool {
				out, _ := inNetns(ns, "ip", "addr", "show", "dev", iface)
				return strings.Contains(out, "fd00::5/128")
			}
			cmd := startNodeDaemon(t, ns, "--ip-address", "fd00::5", "--interface", iface, "--setup-iptables", "--cleanup")
			waitUntil(t, 5*time.Second, "the address and five ip6tables rules", func() bool {
				p, _ := countRules(saved(t, ns, "ip6tables-save"), wantRules("fd00::5/128", "443"))
				return has() && p == 5
			})
			cmd.stop(t)
			if has() {
				t.Error("address left after cleanup")
			}
			if p, _ := countRules(saved(t, ns, "ip6tables-save"), wantRules("fd00::5/128", "443")); p != 0 {
				t.Errorf("%d ip6tables rules left after cleanup", p)
			}
			if out, err := inNetns(ns, "ip", "link", "show", iface); err != nil {
				t.Errorf("cleanup deleted %s, which the agent did not create: %s", iface, out)
			}
		})
	}
}

func TestNodeWithoutCleanupLeavesEverythingInPlace(t *testing.T) {
	ns := testNetns(t)
	cmd := startNodeDaemon(t, ns, "--ip-address", "10.96.0.9", "--interface", "apiproxy0")
	has := func() bool {
		out, _ := inNetns(ns, "ip", "addr", "show", "dev", "apiproxy0")
		return strings.Contains(out, "10.96.0.9/32")
	}
	waitUntil(t, 5*time.Second, "the address", has)
	cmd.stop(t)
	if !has() {
		t.Error("without --cleanup the address must survive the agent (traffic keeps flowing across restarts)")
	}
}

func TestNodeLegacyBackend(t *testing.T) {
	agent := nodeAgentBinary(t)
	legacy, err := exec.LookPath("iptables-legacy")
	if err != nil {
		t.Fatal("iptables-legacy is missing: install the iptables package that ships both backends")
	}
	// xtables-legacy-multi picks its mode from argv[0]: a link named "iptables" is legacy iptables.
	bin := t.TempDir()
	if err := os.Symlink(legacy, filepath.Join(bin, "iptables")); err != nil {
		t.Fatal(err)
	}
	ns := testNetns(t)
	out, err := inNetns(ns, "env", "PATH="+bin+":"+os.Getenv("PATH"), agent, "node", "--ip-address", "10.96.0.4",
		"--setup-iptables", "--daemon=false")
	if err != nil {
		t.Fatalf("one-shot with legacy iptables: %v\n%s", err, out)
	}
	if !strings.Contains(out, "(legacy)") {
		t.Errorf("the backend in use must be reported as legacy:\n%s", out)
	}
	if p, _ := countRules(saved(t, ns, "iptables-legacy-save"), wantRules("10.96.0.4/32", "443")); p != 5 {
		t.Errorf("want the five rules in the legacy tables, got %d", p)
	}
	if p, _ := countRules(saved(t, ns, "iptables-nft-save"), wantRules("10.96.0.4/32", "443")); p != 0 {
		t.Errorf("%d rules landed in nf_tables although legacy was in use", p)
	}
}

func TestNodeDaemonStopsOnMissingPrivileges(t *testing.T) {
	agent := nodeAgentBinary(t)
	ns := testNetns(t)
	cmd := exec.Command("ip", "netns", "exec", ns, "setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
		agent, "node", "--ip-address", "10.96.0.2")
	done := make(chan []byte, 1)
	var out testnet.SyncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = cmd.Wait(); done <- nil }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		t.Fatal("a daemon without CAP_NET_ADMIN kept running instead of saying what to fix")
	}
	if cmd.ProcessState.ExitCode() == 0 || !strings.Contains(out.String(), "needs CAP_NET_ADMIN") {
		t.Errorf("want a non-zero exit saying it needs CAP_NET_ADMIN, got %d:\n%s", cmd.ProcessState.ExitCode(), out.String())
	}
}

// dialInNetns connects to addr from inside the namespace.
func dialInNetns(ns, addr string) (net.Conn, error) {
	var c net.Conn
	err := onThreadInNetns(ns, func() (err error) {
		c, err = net.DialTimeout("tcp", addr, 2*time.Second)
		return err
	})
	return c, err
}

// onThreadInNetns runs f on a thread that briefly enters ns: sockets f creates keep belonging to ns
// whatever thread uses them afterwards.
func onThreadInNetns(ns string, f func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return err
	}
	defer orig.Close()
	target, err := netns.GetFromName(ns)
	if err != nil {
		return err
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		return err
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			panic("cannot return to the original network namespace: " + err.Error())
		}
	}()
	return f()
}

func TestNodeMetricsAndReadiness(t *testing.T) {
	ns := testNetns(t)
	startNodeDaemon(t, ns, "--ip-address", "10.96.0.6", "--metrics-addr", "127.0.0.1:9101")
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(_ context.Context, _, addr string) (net.Conn, error) { return dialInNetns(ns, addr) },
	}}
	get := func(path string) (int, string) {
		resp, err := client.Get("http://127.0.0.1:9101" + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	waitUntil(t, 5*time.Second, "/readyz to answer 200", func() bool { code, _ := get("/readyz"); return code == 200 })
	// Delete the address once: the repair must show in the counter.
	mustInNetns(t, ns, "ip", "addr", "del", "10.96.0.6/32", "dev", "lo")
	waitUntil(t, 5*time.Second, "the repair to be counted", func() bool {
		_, body := get("/metrics")
		return strings.Contains(body, `apiproxy_node_repairs_total{kind="address"} 2`)
	})
	_, body := get("/metrics")
	for _, want := range []string{"apiproxy_node_last_successful_sync_timestamp_seconds 1", "apiproxy_node_sync_errors_total 0"} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}
