// Package rules keeps the five iptables rules that let traffic reach the node-local API server IP
// untouched by conntrack (the Gardener sidecar's rules, see design.md), through go-iptables:
// iptables for IPv4, ip6tables for IPv6, each rule appended only after an exists-check.
package rules

import (
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"

	"github.com/coreos/go-iptables/iptables"
)

// Rule is one rule in one table and chain, as iptables arguments.
type Rule struct {
	Table, Chain string
	Spec         []string
}

func (r Rule) String() string {
	return fmt.Sprintf("-t %s -A %s %s", r.Table, r.Chain, strings.Join(r.Spec, " "))
}

// For builds the five rules for ip and port: NOTRACK both directions in raw, ACCEPT in filter.
func For(ip net.IP, port int) []Rule {
	host := (&net.IPNet{IP: ip, Mask: hostMask(ip)}).String()
	p := strconv.Itoa(port)
	to := []string{"-d", host, "-p", "tcp", "-m", "tcp", "--dport", p}
	from := []string{"-s", host, "-p", "tcp", "-m", "tcp", "--sport", p}
	with := func(spec []string, target string) []string {
		return append(append([]string(nil), spec...), "-j", target)
	}
	return []Rule{
		{"raw", "PREROUTING", with(to, "NOTRACK")},
		{"raw", "OUTPUT", with(to, "NOTRACK")},
		{"raw", "OUTPUT", with(from, "NOTRACK")},
		{"filter", "INPUT", with(to, "ACCEPT")},
		{"filter", "OUTPUT", with(from, "ACCEPT")},
	}
}

func hostMask(ip net.IP) net.IPMask {
	if ip.To4() != nil {
		return net.CIDRMask(32, 32)
	}
	return net.CIDRMask(128, 128)
}

// Table is the part of *iptables.IPTables the Manager uses (Fake implements it for tests).
type Table interface {
	Exists(table, chain string, rulespec ...string) (bool, error)
	Append(table, chain string, rulespec ...string) error
	DeleteIfExists(table, chain string, rulespec ...string) error
}

// Manager ensures and removes one IP's rules.
type Manager struct {
	table   Table
	rules   []Rule
	backend string
}

// NewManager works on the given table (tests pass a Fake); backend is reported by Backend.
func NewManager(t Table, backend string, ip net.IP, port int) *Manager {
	return &Manager{table: t, rules: For(ip, port), backend: backend}
}

// New opens iptables (IPv4) or ip6tables (IPv6) and finds out which backend it drives.
func New(ip net.IP, port int) (*Manager, error) {
	proto, bin := iptables.ProtocolIPv4, "iptables"
	if ip.To4() == nil {
		proto, bin = iptables.ProtocolIPv6, "ip6tables"
	}
	path, err := exec.LookPath(bin)
	if err != nil {
		return nil, fmt.Errorf("%s not found in PATH (%v): install iptables (e.g. apt-get install iptables, apk add iptables) or use an image that ships it, or run without --setup-iptables", bin, err)
	}
	// Wait at most 5 s for the xtables lock rather than forever: a stuck lock holder must show up
	// as a sync error, not as a silent hang.
	ipt, err := iptables.New(iptables.IPFamily(proto), iptables.Path(path), iptables.Timeout(5))
	if err != nil {
		return nil, fmt.Errorf("%s at %s is unusable: %w", bin, path, err)
	}
	out, err := exec.Command(path, "--version").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --version: %w", path, err)
	}
	return NewManager(ipt, fmt.Sprintf("%s (%s)", path, ParseBackend(string(out))), ip, port), nil
}

// ParseBackend reads the backend from `iptables --version`: "nf_tables" or "legacy" (old
// versions print no mode and are always legacy).
func ParseBackend(version string) string {
	switch {
	case strings.Contains(version, "(nf_tables)"):
		return "nf_tables"
	case strings.Contains(version, "(legacy)"):
		return "legacy"
	case strings.Contains(version, "("):
		i := strings.Index(version, "(")
		if j := strings.Index(version[i:], ")"); j > 0 {
			return version[i+1 : i+j]
		}
	}
	return "legacy"
}

// Backend names the binary and its backend, e.g. "/usr/sbin/iptables (nf_tables)".
func (m *Manager) Backend() string { return m.backend }

// Rules are the rules this manager keeps.
func (m *Manager) Rules() []Rule { return m.rules }

// Ensure appends every missing rule and returns how many it added. It goes on after a failure so
// one broken rule does not keep the others away.
func (m *Manager) Ensure() (added int, err error) {
	var errs []error
	for _, r := range m.rules {
		ok, err := m.table.Exists(r.Table, r.Chain, r.Spec...)
		if err != nil {
			errs = append(errs, fmt.Errorf("check %s: %w", r, explain(err)))
			continue
		}
		if ok {
			continue
		}
		if err := m.table.Append(r.Table, r.Chain, r.Spec...); err != nil {
			errs = append(errs, fmt.Errorf("add %s: %w", r, explain(err)))
			continue
		}
		added++
	}
	return added, errors.Join(errs...)
}

// Missing lists the rules that are not in place now (readiness; nothing is changed).
func (m *Manager) Missing() ([]string, error) {
	var missing []string
	var errs []error
	for _, r := range m.rules {
		ok, err := m.table.Exists(r.Table, r.Chain, r.Spec...)
		if err != nil {
			errs = append(errs, fmt.Errorf("check %s: %w", r, explain(err)))
			continue
		}
		if !ok {
			missing = append(missing, r.String())
		}
	}
	return missing, errors.Join(errs...)
}

// Delete removes every rule; absent rules are fine.
func (m *Manager) Delete() error {
	var errs []error
	for _, r := range m.rules {
		if err := m.table.DeleteIfExists(r.Table, r.Chain, r.Spec...); err != nil {
			errs = append(errs, fmt.Errorf("delete %s: %w", r, explain(err)))
		}
	}
	return errors.Join(errs...)
}

// explain adds what to do when iptables says it lacks privileges.
func explain(err error) error {
	var e *iptables.Error
	if errors.As(err, &e) && (e.ExitStatus() == 4 || strings.Contains(e.Error(), "Permission denied")) {
		return fmt.Errorf("%w (needs CAP_NET_ADMIN: run as root or add the NET_ADMIN capability)", err)
	}
	return err
}
