package realnode

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/coreos/go-iptables/iptables"
)

// Teardown removes everything a real-node cluster made, whether this process started it or a run
// that was killed: components and the registry (by the PIDs recorded in StateDir; the registry's
// blobs are under StateDir too), pod processes (the kubepods
// cgroups), the containerd shims of our socket, mounts, cgroups, iptables chains and rules, the
// bridge, and files. It is idempotent; Start calls it first, and t.Cleanup after the test.
// nodeAssets is the directory holding kube-proxy (its --cleanup removes its rules).
func Teardown(nodeAssets string) error {
	_, err := os.Stat(StateDir)
	ours := err == nil // the cluster-wide pieces (kubepods, KUBE-* chains) are ours only if we ran
	var errs []error

	for _, name := range []string{"kube-proxy", "kubelet", "kube-scheduler", "kube-controller-manager"} {
		errs = append(errs, stopRecorded(name, 5*time.Second))
	}
	if ours {
		killKubepods()
	}
	errs = append(errs, stopRecorded("containerd", 5*time.Second))
	for pid, argv := range cmdlines() {
		if isShimOf(argv, containerdSocket) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	errs = append(errs, stopRecorded("kube-apiserver", 5*time.Second), stopRecorded("etcd", 5*time.Second),
		stopRecorded("registry", 5*time.Second))
	// Anything else still running from our directories (a component started just before a kill, so
	// without a pid file).
	for pid, argv := range cmdlines() {
		if pid != os.Getpid() && mentions(argv, StateDir, RunDir) {
			stopPID(pid, 0)
		}
	}

	errs = append(errs, unmountUnder(StateDir, RunDir))
	if ours {
		errs = append(errs, removeKubepodsCgroups())
		errs = append(errs, cleanIPTables(nodeAssets))
	}
	errs = append(errs, tearDownNetwork())
	errs = append(errs, removePodLeftovers())
	if ours {
		removeHardcodedLeftovers()
	}
	// Never delete through a mount that is still there.
	if m := mountsUnder(StateDir, RunDir); len(m) > 0 {
		errs = append(errs, fmt.Errorf("mounts still present, leaving %s and %s in place: %s", StateDir, RunDir, strings.Join(m, ", ")))
	} else {
		for _, d := range []string{RunDir, StateDir} {
			if err := os.RemoveAll(d); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

func isShimOf(argv []string, socket string) bool {
	if len(argv) == 0 || !strings.HasSuffix(argv[0], "containerd-shim-runc-v2") {
		return false
	}
	for i, a := range argv {
		if (a == "-address" || a == "--address") && i+1 < len(argv) && argv[i+1] == socket {
			return true
		}
	}
	return false
}

func mentions(argv []string, dirs ...string) bool {
	for _, a := range argv {
		for _, d := range dirs {
			if strings.Contains(a, d) {
				return true
			}
		}
	}
	return false
}

// kubepodsDirs are the kubelet's "kubepods" cgroups in every hierarchy (cgroup v1 and v2).
func kubepodsDirs() []string {
	dirs, _ := filepath.Glob("/sys/fs/cgroup/*/kubepods")
	if _, err := os.Stat("/sys/fs/cgroup/kubepods"); err == nil {
		dirs = append(dirs, "/sys/fs/cgroup/kubepods")
	}
	return dirs
}

// killKubepods SIGKILLs every process in the kubepods cgroups: the pods' processes, which a dead
// kubelet and containerd leave running.
func killKubepods() {
	for range 5 {
		found := false
		for _, root := range kubepodsDirs() {
			_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
				if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
					return nil
				}
				b, _ := os.ReadFile(p)
				for _, f := range strings.Fields(string(b)) {
					var pid int
					if _, err := fmt.Sscan(f, &pid); err == nil && pid > 1 {
						found = true
						_ = syscall.Kill(pid, syscall.SIGKILL)
					}
				}
				return nil
			})
		}
		if !found {
			return
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// removeKubepodsCgroups removes the (now empty) kubepods trees, deepest first.
func removeKubepodsCgroups() error {
	var errs []error
	for _, root := range kubepodsDirs() {
		var dirs []string
		_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
		for _, d := range dirs {
			var err error
			for range 20 { // a killed process leaves its cgroup a moment later
				if err = syscall.Rmdir(d); err == nil || errors.Is(err, syscall.ENOENT) {
					err = nil
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("removing cgroup %s: %w", d, err))
			}
		}
	}
	return errors.Join(errs...)
}

// mountsUnder lists the mount points below the directories, deepest first.
func mountsUnder(dirs ...string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	seen := map[string]bool{}
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		for _, d := range dirs {
			if (mp == d || strings.HasPrefix(mp, d+"/")) && !seen[mp] {
				seen[mp] = true
				out = append(out, mp)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

func unescapeMount(s string) string {
	return strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`).Replace(s)
}

// unmountUnder unmounts the overlay root filesystems, sandbox shm, network namespace pins, and the
// kubelet's volumes and self bind mount, deepest first (lazily when busy).
func unmountUnder(dirs ...string) error {
	for range 3 {
		mps := mountsUnder(dirs...)
		if len(mps) == 0 {
			return nil
		}
		for _, mp := range mps {
			if err := syscall.Unmount(mp, 0); err != nil {
				_ = syscall.Unmount(mp, syscall.MNT_DETACH)
			}
		}
	}
	if m := mountsUnder(dirs...); len(m) > 0 {
		return fmt.Errorf("cannot unmount %s", strings.Join(m, ", "))
	}
	return nil
}

// Chains the kubelet makes and kube-proxy --cleanup leaves (not configurable off in 1.36).
var kubeletChains = []string{"KUBE-FIREWALL", "KUBE-KUBELET-CANARY", "KUBE-IPTABLES-HINT"}

// cleanIPTables removes kube-proxy's chains (kube-proxy --cleanup), the kubelet's, and the CNI
// portmap plugin's chains of our network (left when a hard teardown skipped CNI DEL).
func cleanIPTables(nodeAssets string) error {
	var errs []error
	if nodeAssets != "" {
		if _, err := os.Stat(filepath.Join(nodeAssets, "kube-proxy")); err == nil {
			// It reports (harmless) errors for the modes it was not using; the leak check is the judge.
			_ = exec.Command(filepath.Join(nodeAssets, "kube-proxy"), "--cleanup").Run()
		}
	}
	for _, proto := range []iptables.Protocol{iptables.ProtocolIPv4, iptables.ProtocolIPv6} {
		ipt, err := iptables.New(iptables.IPFamily(proto))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, parent := range []string{"INPUT", "OUTPUT"} {
			_ = ipt.DeleteIfExists("filter", parent, "-j", "KUBE-FIREWALL")
		}
		for _, table := range []string{"filter", "nat", "mangle"} {
			for _, chain := range kubeletChains {
				if ok, _ := ipt.ChainExists(table, chain); ok {
					if err := ipt.ClearAndDeleteChain(table, chain); err != nil {
						errs = append(errs, fmt.Errorf("%v %s/%s: %w", proto, table, chain, err))
					}
				}
			}
		}
		if proto == iptables.ProtocolIPv4 {
			errs = append(errs, cleanPortmap(ipt))
		}
	}
	return errors.Join(errs...)
}

// cleanPortmap removes the portmap plugin's per-container chains of our network, and its top chains
// when no other network uses them any more.
func cleanPortmap(ipt *iptables.IPTables) error {
	const top = "CNI-HOSTPORT-DNAT"
	if ok, _ := ipt.ChainExists("nat", top); !ok {
		return nil
	}
	rules, err := ipt.List("nat", top)
	if err != nil {
		return err
	}
	var errs []error
	for _, r := range rules {
		if !strings.HasPrefix(r, "-A "+top+" ") || !strings.Contains(r, `dnat name: \"`+CNINetwork+`\"`) {
			continue
		}
		args := splitRule(r) // "-A", top, rulespec...
		chain := args[len(args)-1]
		if err := ipt.Delete("nat", top, args[2:]...); err != nil {
			errs = append(errs, fmt.Errorf("portmap rule %q: %w", r, err))
		}
		_ = ipt.ClearAndDeleteChain("nat", chain)
	}
	if rest, _ := ipt.List("nat", top); len(rest) <= 1 { // only "-N CNI-HOSTPORT-DNAT": nobody else uses portmap
		_ = ipt.DeleteIfExists("nat", "PREROUTING", "-m", "addrtype", "--dst-type", "LOCAL", "-j", top)
		_ = ipt.DeleteIfExists("nat", "OUTPUT", "-m", "addrtype", "--dst-type", "LOCAL", "-j", top)
		_ = ipt.DeleteIfExists("nat", "POSTROUTING", "-m", "comment", "--comment", "CNI portfwd requiring masquerade", "-j", "CNI-HOSTPORT-MASQ")
		for _, c := range []string{top, "CNI-HOSTPORT-MASQ", "CNI-HOSTPORT-SETMARK"} {
			if ok, _ := ipt.ChainExists("nat", c); ok {
				_ = ipt.ClearAndDeleteChain("nat", c)
			}
		}
	}
	return errors.Join(errs...)
}

// splitRule splits an `iptables -S` line into arguments, honouring double quotes.
func splitRule(r string) []string {
	var out []string
	var cur strings.Builder
	inQ := false
	for i := 0; i < len(r); i++ {
		ch := r[i]
		switch {
		case ch == '\\' && i+1 < len(r) && r[i+1] == '"':
			cur.WriteByte('"')
			i++
		case ch == '"':
			inQ = !inQ
		case ch == ' ' && !inQ:
			if cur.Len() > 0 {
				out = append(out, cur.String())
				cur.Reset()
			}
		default:
			cur.WriteByte(ch)
		}
	}
	if cur.Len() > 0 {
		out = append(out, cur.String())
	}
	return out
}

// removeHardcodedLeftovers removes what the kubelet, containerd and libcni write to fixed paths even
// with our directories configured, and the fixed directories when they end up empty.
func removeHardcodedLeftovers() {
	_ = os.Remove("/var/lib/kubelet/device-plugins/kubelet.sock")
	for _, d := range []string{"/var/lib/kubelet/device-plugins", "/var/lib/kubelet/plugins_registry", "/var/lib/kubelet/plugins", "/var/lib/kubelet/pod-resources", "/var/lib/kubelet"} {
		_ = syscall.Rmdir(d)
	}
	if links, _ := os.ReadDir("/var/log/containers"); links != nil {
		for _, l := range links {
			p := filepath.Join("/var/log/containers", l.Name())
			if target, err := os.Readlink(p); err == nil && strings.HasPrefix(target, StateDir+"/") {
				_ = os.Remove(p)
			}
		}
	}
	_ = syscall.Rmdir("/var/log/containers")
	otherContainerd := false
	for _, argv := range cmdlines() {
		if len(argv) > 0 && filepath.Base(argv[0]) == "containerd" {
			otherContainerd = true
		}
	}
	results, _ := filepath.Glob("/var/lib/cni/results/" + CNINetwork + "-*")
	if !otherContainerd {
		loop, _ := filepath.Glob("/var/lib/cni/results/cni-loopback-*")
		results = append(results, loop...)
		// Shim sockets and runc state of containerd's fixed paths.
		_ = os.RemoveAll("/run/containerd/s")
		_ = os.RemoveAll("/run/containerd/runc")
		_ = syscall.Rmdir("/run/containerd")
	}
	for _, r := range results {
		_ = os.Remove(r)
	}
	for _, d := range []string{"/var/lib/cni/results", "/var/lib/cni"} {
		_ = syscall.Rmdir(d)
	}
	// The node role's hostPath where its agents hand their listening sockets over (kubectl-apiproxy
	// install), created by the kubelet; uninstall empties it.
	_ = os.RemoveAll(nodeHandoffRoot)
}

// nodeHandoffRoot is install's handoff hostPath (pkg/install's handoffHostRoot).
const nodeHandoffRoot = "/run/apiproxy"
