package realnode

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/coreos/go-iptables/iptables"
	"github.com/vishvananda/netlink"
)

// Our own iptables chains (filter table), jumped to first from OUTPUT and FORWARD.
const (
	chainOutput  = "APXNODE-OUTPUT"
	chainForward = "APXNODE-FORWARD"
	ruleComment  = "apiproxy-realnode"
	// ipForwardFile keeps net.ipv4.ip_forward as it was before the first run (the bridge plugin turns
	// it on), so teardown restores it.
	ipForwardFile = "ip_forward.orig"
	ipForwardPath = "/proc/sys/net/ipv4/ip_forward"
)

type network struct {
	pod, service, local  *net.IPNet
	linkLocal            *net.IPNet
	nodeIP, kubernetesIP net.IP
	defaultIf            string
}

// planNetwork checks the ranges against this machine: none may overlap an address or route that
// exists here, nor the DNS resolvers, so the node's traffic can never reach a real network.
func planNetwork(o Options) (*network, error) {
	nw := &network{}
	for _, r := range []struct {
		name, cidr string
		dst        **net.IPNet
	}{{"PodCIDR", o.PodCIDR, &nw.pod}, {"ServiceCIDR", o.ServiceCIDR, &nw.service}, {"LocalCIDR", o.LocalCIDR, &nw.local}, {"LinkLocalCIDR", o.LinkLocalCIDR, &nw.linkLocal}} {
		ip, n, err := net.ParseCIDR(r.cidr)
		if err != nil || ip.To4() == nil {
			return nil, fmt.Errorf("realnode.Options.%s %q: use an IPv4 CIDR such as 10.244.0.0/24", r.name, r.cidr)
		}
		*r.dst = n
	}
	nw.nodeIP = nextIP(nw.pod.IP)
	nw.kubernetesIP = nextIP(nw.service.IP)
	ranges := map[string]*net.IPNet{"PodCIDR": nw.pod, "ServiceCIDR": nw.service, "LocalCIDR": nw.local, "LinkLocalCIDR": nw.linkLocal}
	for a, an := range ranges {
		for b, bn := range ranges {
			if a < b && overlaps(an, bn) {
				return nil, fmt.Errorf("realnode.Options: %s %s overlaps %s %s", a, an, b, bn)
			}
		}
	}

	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("listing routes: %w", err)
	}
	for _, r := range routes {
		if r.Dst == nil || r.Dst.IP.IsUnspecified() && isZeroMask(r.Dst.Mask) {
			if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil && nw.defaultIf == "" {
				nw.defaultIf = l.Attrs().Name
			}
			continue
		}
		for name, n := range ranges {
			if overlaps(r.Dst, n) {
				return nil, fmt.Errorf("realnode.Options.%s %s overlaps this machine's route to %s: pick a range that is unused here", name, n, r.Dst)
			}
		}
	}
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("listing addresses: %w", err)
	}
	for _, a := range addrs {
		for name, n := range ranges {
			if n.Contains(a.IP) && !a.IP.IsLoopback() {
				return nil, fmt.Errorf("realnode.Options.%s %s holds this machine's address %s: pick a range that is unused here", name, n, a.IP)
			}
		}
	}
	for _, ns := range resolvers() {
		for name, n := range ranges {
			if n.Contains(ns) {
				return nil, fmt.Errorf("realnode.Options.%s %s holds this machine's DNS resolver %s (/etc/resolv.conf): pick another range", name, n, ns)
			}
		}
	}
	return nw, nil
}

func nextIP(ip net.IP) net.IP {
	out := make(net.IP, 4)
	copy(out, ip.To4())
	for i := 3; i >= 0; i-- {
		out[i]++
		if out[i] != 0 {
			break
		}
	}
	return out
}

func overlaps(a, b *net.IPNet) bool { return a.Contains(b.IP) || b.Contains(a.IP) }

func isZeroMask(m net.IPMask) bool {
	ones, _ := m.Size()
	return ones == 0
}

func resolvers() []net.IP {
	f, err := os.Open("/etc/resolv.conf")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []net.IP
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "nameserver" {
			if ip := net.ParseIP(fields[1]); ip != nil {
				out = append(out, ip)
			}
		}
	}
	return out
}

// setUpNetwork creates the bridge with the node IP, routes the Service and local ranges to it, and
// adds the DROP rules that keep the node's ranges off the default interface.
func setUpNetwork(nw *network) error {
	if err := rememberIPForward(); err != nil {
		return err
	}
	if err := recordNetwork(nw); err != nil {
		return err
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: Bridge}}
	if err := netlink.LinkAdd(br); err != nil {
		return fmt.Errorf("creating bridge %s: %w", Bridge, err)
	}
	link, err := netlink.LinkByName(Bridge)
	if err != nil {
		return err
	}
	ones, _ := nw.pod.Mask.Size()
	addr, _ := netlink.ParseAddr(fmt.Sprintf("%s/%d", nw.nodeIP, ones))
	if err := netlink.AddrAdd(link, addr); err != nil {
		return fmt.Errorf("node IP %s on %s: %w", addr, Bridge, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return err
	}
	// Un-NATed packets to a ClusterIP or a local address stay on the bridge instead of taking the
	// default route.
	for _, dst := range []*net.IPNet{nw.service, nw.local} {
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: dst, Scope: netlink.SCOPE_LINK}); err != nil {
			return fmt.Errorf("route %s dev %s: %w", dst, Bridge, err)
		}
	}
	// Pods reach each other through ClusterIPs (DNAT, then routed back onto the bridge).
	if err := os.WriteFile(ipForwardPath, []byte("1\n"), 0o644); err != nil {
		return err
	}
	if nw.defaultIf == "" {
		return nil
	}
	ipt, err := iptables.New()
	if err != nil {
		return err
	}
	out := nw.defaultIf
	rules := map[string][][]string{
		chainOutput: {
			{"-o", out, "-d", nw.pod.String()}, {"-o", out, "-d", nw.service.String()}, {"-o", out, "-d", nw.local.String()},
			{"-o", out, "-s", nw.pod.String()}, {"-o", out, "-s", nw.local.String()},
			{"-o", out, "-d", nw.linkLocal.String()}, {"-o", out, "-s", nw.linkLocal.String()},
		},
		chainForward: {{"-i", Bridge, "-o", out}, {"-i", out, "-o", Bridge}},
	}
	for chain, specs := range rules {
		if err := ipt.NewChain("filter", chain); err != nil {
			return fmt.Errorf("iptables chain %s: %w", chain, err)
		}
		for _, s := range specs {
			if err := ipt.Append("filter", chain, append(s, "-m", "comment", "--comment", ruleComment, "-j", "DROP")...); err != nil {
				return fmt.Errorf("iptables rule in %s: %w", chain, err)
			}
		}
	}
	for parent, chain := range map[string]string{"OUTPUT": chainOutput, "FORWARD": chainForward} {
		if err := ipt.Insert("filter", parent, 1, "-m", "comment", "--comment", ruleComment, "-j", chain); err != nil {
			return fmt.Errorf("iptables jump %s -> %s: %w", parent, chain, err)
		}
	}
	return nil
}

func rememberIPForward() error {
	f := filepath.Join(StateDir, ipForwardFile)
	if _, err := os.Stat(f); err == nil {
		return nil // a killed run already recorded the original value
	}
	b, err := os.ReadFile(ipForwardPath)
	if err != nil {
		return err
	}
	return os.WriteFile(f, b, 0o600)
}

// tearDownNetwork removes our chains and jumps, the routes, the veths left on the bridge and the
// bridge, and restores ip_forward. Missing pieces are fine.
func tearDownNetwork() error {
	var errs []error
	if ipt, err := iptables.New(); err != nil {
		errs = append(errs, err)
	} else {
		for parent, chain := range map[string]string{"OUTPUT": chainOutput, "FORWARD": chainForward} {
			for {
				ok, err := ipt.Exists("filter", parent, "-m", "comment", "--comment", ruleComment, "-j", chain)
				if err != nil || !ok {
					break
				}
				if err := ipt.Delete("filter", parent, "-m", "comment", "--comment", ruleComment, "-j", chain); err != nil {
					errs = append(errs, err)
					break
				}
			}
			if ok, _ := ipt.ChainExists("filter", chain); ok {
				if err := ipt.ClearAndDeleteChain("filter", chain); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	if br, err := netlink.LinkByName(Bridge); err == nil {
		links, _ := netlink.LinkList()
		for _, l := range links {
			if l.Attrs().MasterIndex == br.Attrs().Index {
				_ = netlink.LinkDel(l)
			}
		}
		// The routes through the bridge go with it.
		if err := netlink.LinkDel(br); err != nil {
			errs = append(errs, fmt.Errorf("deleting bridge %s: %w", Bridge, err))
		}
	}
	f := filepath.Join(StateDir, ipForwardFile)
	if b, err := os.ReadFile(f); err == nil {
		if err := os.WriteFile(ipForwardPath, b, 0o644); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// lock takes LockFile, waiting while another process holds it, and returns its release.
func lock(logf func(string, ...any)) (func(), error) {
	f, err := os.OpenFile(LockFile, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		logf("another real-node cluster runs on this machine (%s is locked): waiting", LockFile)
		start := time.Now()
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
			f.Close()
			return nil, fmt.Errorf("locking %s: %w", LockFile, err)
		}
		logf("waited %s for the other real-node cluster", time.Since(start).Round(time.Second))
	}
	return func() { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
}

// networkFile records the ranges and the links that existed before the cluster, so teardown (also a
// later run's, after a kill) can remove what the cluster's pods put on the node: hostNetwork pods such
// as the node agent add interfaces, addresses and iptables rules for addresses in these ranges.
const networkFile = "network.json"

type networkRecord struct {
	CIDRs []string `json:"cidrs"`
	Links []string `json:"links"`
}

func recordNetwork(nw *network) error {
	f := filepath.Join(StateDir, networkFile)
	if _, err := os.Stat(f); err == nil {
		return nil
	}
	rec := networkRecord{CIDRs: []string{nw.pod.String(), nw.service.String(), nw.local.String(), nw.linkLocal.String()}}
	links, err := netlink.LinkList()
	if err != nil {
		return err
	}
	for _, l := range links {
		rec.Links = append(rec.Links, l.Attrs().Name)
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return os.WriteFile(f, b, 0o600)
}

func readNetworkRecord() (*networkRecord, []*net.IPNet) {
	b, err := os.ReadFile(filepath.Join(StateDir, networkFile))
	if err != nil {
		return nil, nil
	}
	var rec networkRecord
	if json.Unmarshal(b, &rec) != nil {
		return nil, nil
	}
	var nets []*net.IPNet
	for _, c := range rec.CIDRs {
		if _, n, err := net.ParseCIDR(c); err == nil {
			nets = append(nets, n)
		}
	}
	return &rec, nets
}

func inAny(ip net.IP, nets []*net.IPNet) bool {
	for _, n := range nets {
		if n.Contains(ip) {
			return true
		}
	}
	return false
}

// removePodLeftovers deletes the links created since the cluster started that hold an address in
// our ranges, removes such addresses from the other links, and deletes the iptables rules that name
// an address in our ranges (our own DROP rules are gone by then).
func removePodLeftovers() error {
	rec, nets := readNetworkRecord()
	if rec == nil {
		return nil
	}
	var errs []error
	links, err := netlink.LinkList()
	if err != nil {
		return err
	}
	for _, l := range links {
		if l.Attrs().Name == Bridge {
			continue
		}
		addrs, _ := netlink.AddrList(l, netlink.FAMILY_V4)
		var ours []netlink.Addr
		for _, a := range addrs {
			if inAny(a.IP, nets) {
				ours = append(ours, a)
			}
		}
		if len(ours) == 0 {
			continue
		}
		if !slices.Contains(rec.Links, l.Attrs().Name) {
			if err := netlink.LinkDel(l); err != nil {
				errs = append(errs, fmt.Errorf("deleting link %s: %w", l.Attrs().Name, err))
			}
			continue
		}
		for _, a := range ours {
			if err := netlink.AddrDel(l, &a); err != nil {
				errs = append(errs, fmt.Errorf("deleting %s from %s: %w", a.IPNet, l.Attrs().Name, err))
			}
		}
	}
	for _, save := range []string{"iptables-save", "ip6tables-save"} {
		out, err := exec.Command(save).Output()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", save, err))
			continue
		}
		bin := strings.TrimSuffix(save, "-save")
		table := ""
		for _, line := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(line, "*") {
				table = line[1:]
			}
			if !strings.HasPrefix(line, "-A ") || !ruleNames(line, nets) {
				continue
			}
			args := append([]string{"-w", "5", "-t", table, "-D"}, splitRule(line)[1:]...)
			if out, err := exec.Command(bin, args...).CombinedOutput(); err != nil {
				errs = append(errs, fmt.Errorf("%s %s: %v: %s", bin, strings.Join(args, " "), err, out))
			}
		}
	}
	return errors.Join(errs...)
}

// ruleNames reports whether an iptables rule's -s or -d is an address in nets.
func ruleNames(rule string, nets []*net.IPNet) bool {
	f := strings.Fields(rule)
	for i := 0; i+1 < len(f); i++ {
		if f[i] != "-s" && f[i] != "-d" {
			continue
		}
		ip, _, err := net.ParseCIDR(f[i+1])
		if err != nil {
			ip = net.ParseIP(f[i+1])
		}
		if ip != nil && inAny(ip, nets) {
			return true
		}
	}
	return false
}
