package proxy

import (
	"strings"
	"testing"
)

func TestParseAllowListErrors(t *testing.T) {
	for in, msg := range map[string]string{
		"10.0.0.0/8":      "want HOST:PORT or CIDR:PORT",
		"10.0.0.0/33:443": "bad CIDR",
		"host:0":          "port must be 1-65535",
		"host:https":      "port must be 1-65535",
		"fd00::/64:443":   "want HOST:PORT or CIDR:PORT",
		"bad host:443":    "bad host name",
		":443":            "want HOST:PORT",
	} {
		if _, err := ParseAllowList([]string{in}); err == nil || !strings.Contains(err.Error(), msg) || !strings.Contains(err.Error(), in) {
			t.Errorf("%q: got %v, want error containing %q and the entry", in, err, msg)
		}
	}
}

func TestAllowListMatches(t *testing.T) {
	al, err := ParseAllowList([]string{"Kubernetes.Default.SVC.:443", "10.96.0.0/12:443", "[fd00::/64]:6443", "127.0.0.2:8443", "[::1]:9443"})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		host string
		port uint16
		want bool
	}{
		{"kubernetes.default.svc", 443, true},
		{"KUBERNETES.default.svc.", 443, true},
		{"kubernetes.default.svc", 444, false},
		{"kubernetes.default", 443, false},
		{"10.96.0.1", 443, true},
		{"10.111.255.255", 443, true},
		{"10.112.0.1", 443, false},
		{"10.96.0.1", 80, false},
		{"::ffff:10.96.0.1", 443, true}, // the same IPv4 address, mapped
		{"fd00::1", 6443, true},
		{"fd00:0:0:1::1", 6443, false},
		{"127.0.0.2", 8443, true},
		{"127.0.0.3", 8443, false},
		{"::1", 9443, true},
		{"0:0::1", 9443, true},
		// A name is never resolved into a CIDR.
		{"10.96.0.1.nip.io", 443, false},
	}
	for _, c := range cases {
		if got := al.Allows(c.host, c.port); got != c.want {
			t.Errorf("Allows(%q, %d) = %v, want %v", c.host, c.port, got, c.want)
		}
	}
	var none *AllowList
	if none.Allows("10.96.0.1", 443) {
		t.Error("nil list allows")
	}
}
