package proxy

import (
	"strings"
	"testing"
)

func TestParseAllowListErrors(t *testing.T) {
	for in, msg := range map[string]string{
		"10.0.0.0/8":               "want HOST:PORT or CIDR:PORT",
		"10.0.0.0/33:443":          "bad CIDR",
		"host:0":                   "port must be 1-65535",
		"host:https":               "port must be 1-65535",
		"host:+443":                "port must be 1-65535",
		"fd00::/64:443":            "want HOST:PORT or CIDR:PORT",
		"bad host:443":             "bad host name",
		"a..b:443":                 "bad host name",
		".a:443":                   "bad host name",
		":443":                     "want HOST:PORT",
		"[fe80::1%eth0]:443":       "zone",
		"[::ffff:10.0.0.0/95]:443": "shorter than /96",
		"[::ffff:0:0/64]:443":      "write the IPv4 CIDR instead",
		"[::ffff:10.9.0.0]/95:443": "shorter than /96",
	} {
		if _, err := ParseAllowList([]string{in}); err == nil || !strings.Contains(err.Error(), msg) || !strings.Contains(err.Error(), in) {
			t.Errorf("%q: got %v, want error containing %q and the entry", in, err, msg)
		}
	}
}

func TestAllowListMatches(t *testing.T) {
	al, err := ParseAllowList([]string{"Kubernetes.Default.SVC:443", "abs.example.:443", "10.96.0.0/12:443",
		"[fd00::/64]:6443", "127.0.0.2:8443", "[::1]:9443", "10.0.0.5:443", "[::ffff:10.9.0.0]/112:443"})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		host   string
		port   uint16
		target string // "" = not allowed
	}{
		// Names: case folded, but dialed as the entry is written (lower-cased), never as sent.
		{"kubernetes.default.svc", 443, "kubernetes.default.svc:443"},
		{"KUBERNETES.default.SVC", 443, "kubernetes.default.svc:443"},
		// A trailing dot is another name: absolute, not the search-list name that was allowed.
		{"kubernetes.default.svc.", 443, ""},
		{"abs.example.", 443, "abs.example.:443"},
		{"abs.example", 443, ""},
		{"kubernetes.default.svc", 444, ""},
		{"kubernetes.default", 443, ""},
		// Addresses: dialed in canonical form.
		{"10.96.0.1", 443, "10.96.0.1:443"},
		{"10.111.255.255", 443, "10.111.255.255:443"},
		{"10.112.0.1", 443, ""},
		{"10.96.0.1", 80, ""},
		{"::ffff:10.96.0.1", 443, "10.96.0.1:443"}, // the same IPv4 address, mapped
		{"fd00::1", 6443, "[fd00::1]:6443"},
		{"fd00:0000::0001", 6443, "[fd00::1]:6443"},
		{"fd00:0:0:1::1", 6443, ""},
		{"127.0.0.2", 8443, "127.0.0.2:8443"},
		{"127.0.0.3", 8443, ""},
		{"::1", 9443, "[::1]:9443"},
		{"0:0::1", 9443, "[::1]:9443"},
		// Names and addresses apart: a dotted IP is a name, and no IP entry matches it.
		{"10.0.0.5", 443, "10.0.0.5:443"},
		{"10.0.0.5.", 443, ""},
		{"127.0.0.2.", 8443, ""},
		// A name is never resolved into a CIDR.
		{"10.96.0.1.nip.io", 443, ""},
		// An IPv4-mapped CIDR entry matches mapped and plain clients alike.
		{"10.9.0.7", 443, "10.9.0.7:443"},
		{"::ffff:10.9.255.255", 443, "10.9.255.255:443"},
		{"10.10.0.1", 443, ""},
	}
	for _, c := range cases {
		got, ok := al.Match(c.host, c.port)
		if ok != (c.target != "") || got != c.target {
			t.Errorf("Match(%q, %d) = %q, %v; want %q", c.host, c.port, got, ok, c.target)
		}
	}
	var none *AllowList
	if _, ok := none.Match("10.96.0.1", 443); ok {
		t.Error("nil list allows")
	}
}

// FuzzAllowListMatch: whatever authority a client sends, an allowed one is dialed as an entry's
// canonical form (a name entry exactly, or an address inside an address entry), never as sent.
func FuzzAllowListMatch(f *testing.F) {
	for _, s := range []string{"kubernetes.default.svc:443", "KUBERNETES.default.svc.:443", "10.96.0.1:443",
		"[::ffff:10.96.0.1]:443", "[fd00::1]:6443", "10.0.0.5.:443", "[::1]:9443", "a:1", "[1.2.3.4]:443"} {
		f.Add(s)
	}
	entries := []string{"kubernetes.default.svc:443", "10.96.0.0/12:443", "[fd00::/64]:6443", "10.0.0.5:443", "[::ffff:10.9.0.0/112]:443"}
	al, err := ParseAllowList(entries)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, authority string) {
		host, port, err := ParseAuthority(authority)
		if err != nil {
			return
		}
		target, ok := al.Match(host, port)
		if !ok {
			return
		}
		// The target is a valid authority that is itself allowed and is its own canonical form.
		th, tp, err := ParseAuthority(target)
		if err != nil {
			t.Fatalf("%q allowed as %q, which does not parse: %v", authority, target, err)
		}
		again, ok := al.Match(th, tp)
		if !ok || again != target || tp != port {
			t.Fatalf("%q → %q → %q, %v: not canonical", authority, target, again, ok)
		}
		if target == authority && strings.ToLower(host) != host {
			t.Fatalf("%q dialed with the client's spelling", authority)
		}
		if strings.HasSuffix(host, ".") != strings.HasSuffix(th, ".") {
			t.Fatalf("%q allowed as %q: trailing dot changed", authority, target)
		}
	})
}
