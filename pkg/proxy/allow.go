package proxy

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// AllowList holds the --allow-target entries: authorities that a CONNECT may name and that are then
// dialed as named. Everything else goes to the upstream. Host names are matched literally (never
// resolved), so a name can't sneak into an allowed CIDR.
type AllowList struct {
	hosts    map[string]bool // "host:port", host lower-cased; IPs in canonical form
	prefixes []prefixPort
}

type prefixPort struct {
	prefix netip.Prefix
	port   uint16
}

// ParseAllowList parses entries "host:port", "IP:port", "CIDR:port" ("[IPv6]:port", "[CIDR6]:port").
func ParseAllowList(entries []string) (*AllowList, error) {
	al := &AllowList{hosts: map[string]bool{}}
	for _, e := range entries {
		host, portStr, err := net.SplitHostPort(e)
		if err != nil || host == "" {
			return nil, fmt.Errorf("invalid --allow-target %q: want HOST:PORT or CIDR:PORT (IPv6 in brackets, e.g. [fd00::/64]:443)", e)
		}
		port, err := strconv.ParseUint(portStr, 10, 16)
		if err != nil || port == 0 {
			return nil, fmt.Errorf("invalid --allow-target %q: port must be 1-65535", e)
		}
		if strings.Contains(host, "/") {
			p, err := netip.ParsePrefix(host)
			if err != nil {
				return nil, fmt.Errorf("invalid --allow-target %q: bad CIDR: %v", e, err)
			}
			al.prefixes = append(al.prefixes, prefixPort{prefix: p.Masked(), port: uint16(port)})
			continue
		}
		if a, err := netip.ParseAddr(host); err == nil {
			al.hosts[net.JoinHostPort(a.Unmap().String(), portStr)] = true
			continue
		}
		if !isHostname(host) {
			return nil, fmt.Errorf("invalid --allow-target %q: bad host name", e)
		}
		al.hosts[net.JoinHostPort(normalizeName(host), portStr)] = true
	}
	return al, nil
}

// Allows reports whether the CONNECT authority (already validated by ParseAuthority) may be dialed
// as named.
func (al *AllowList) Allows(host string, port uint16) bool {
	if al == nil {
		return false
	}
	portStr := strconv.Itoa(int(port))
	if a, err := netip.ParseAddr(host); err == nil {
		a = a.Unmap()
		if a.Zone() != "" {
			return false
		}
		if al.hosts[net.JoinHostPort(a.String(), portStr)] {
			return true
		}
		for _, p := range al.prefixes {
			if p.port == port && p.prefix.Contains(a) {
				return true
			}
		}
		return false
	}
	return al.hosts[net.JoinHostPort(normalizeName(host), portStr)]
}

// Len is the number of entries.
func (al *AllowList) Len() int {
	if al == nil {
		return 0
	}
	return len(al.hosts) + len(al.prefixes)
}

func normalizeName(h string) string { return strings.TrimSuffix(strings.ToLower(h), ".") }
