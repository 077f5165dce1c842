package rules

import (
	"errors"
	"net"
	"strings"
	"testing"
)

func TestForIPv4(t *testing.T) {
	got := For(net.ParseIP("10.96.0.2").To4(), 443)
	want := []string{
		"-t raw -A PREROUTING -d 10.96.0.2/32 -p tcp -m tcp --dport 443 -j NOTRACK",
		"-t raw -A OUTPUT -d 10.96.0.2/32 -p tcp -m tcp --dport 443 -j NOTRACK",
		"-t raw -A OUTPUT -s 10.96.0.2/32 -p tcp -m tcp --sport 443 -j NOTRACK",
		"-t filter -A INPUT -d 10.96.0.2/32 -p tcp -m tcp --dport 443 -j ACCEPT",
		"-t filter -A OUTPUT -s 10.96.0.2/32 -p tcp -m tcp --sport 443 -j ACCEPT",
	}
	if len(got) != len(want) {
		t.Fatalf("got %d rules, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i].String() != want[i] {
			t.Errorf("rule %d:\n got %s\nwant %s", i, got[i], want[i])
		}
	}
}

func TestForIPv6UsesHostPrefix(t *testing.T) {
	for _, r := range For(net.ParseIP("fd00::2"), 6443) {
		s := r.String()
		if !strings.Contains(s, "fd00::2/128") || !strings.Contains(s, "port 6443") {
			t.Errorf("IPv6 rule lacks /128 or the port: %s", s)
		}
	}
}

func TestEnsureIsIdempotentAndDeleteRemovesAll(t *testing.T) {
	f := NewFake()
	m := NewManager(f, "fake", net.ParseIP("10.96.0.2"), 443)
	if n, err := m.Ensure(); err != nil || n != 5 {
		t.Fatalf("first Ensure = %d, %v; want 5 added", n, err)
	}
	if n, err := m.Ensure(); err != nil || n != 0 || f.Count() != 5 {
		t.Fatalf("second Ensure = %d, %v with %d rules; want 0 added and still 5 rules", n, err, f.Count())
	}
	f.Remove(m.Rules()[3])
	if n, _ := m.Ensure(); n != 1 || f.Count() != 5 {
		t.Fatalf("Ensure after an external deletion added %d (rules now %d); want exactly the missing one", n, f.Count())
	}
	if err := m.Delete(); err != nil || f.Count() != 0 {
		t.Fatalf("Delete = %v, %d rules left", err, f.Count())
	}
	if err := m.Delete(); err != nil {
		t.Fatalf("Delete of absent rules must succeed: %v", err)
	}
}

func TestEnsureReportsEveryFailure(t *testing.T) {
	f := NewFake()
	f.Err = errors.New("boom")
	m := NewManager(f, "fake", net.ParseIP("10.96.0.2"), 443)
	_, err := m.Ensure()
	if err == nil || strings.Count(err.Error(), "boom") != 5 {
		t.Fatalf("want all five failures reported, got %v", err)
	}
}

func TestParseBackend(t *testing.T) {
	for in, want := range map[string]string{
		"iptables v1.8.9 (nf_tables)\n": "nf_tables",
		"iptables v1.8.7 (legacy)\n":    "legacy",
		"iptables v1.4.21\n":            "legacy",
	} {
		if got := ParseBackend(in); got != want {
			t.Errorf("ParseBackend(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestMissingBinaryIsActionable(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, err := New(net.ParseIP("fd00::2"), 443)
	if err == nil || !strings.Contains(err.Error(), "ip6tables not found") || !strings.Contains(err.Error(), "install iptables") {
		t.Fatalf("want an actionable 'install iptables' error for ip6tables, got %v", err)
	}
}
