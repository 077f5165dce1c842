package proxy

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// AllowList holds the --allow-target entries: authorities that a CONNECT may name and that are then
// dialed, in the entry's own canonical form. Everything else goes to the upstream.
//
// Names and addresses are kept apart: a name entry matches only a CONNECT that names a host (never
// an IP literal, and never resolved, so a name can't sneak into an allowed CIDR), an IP or CIDR entry
// only an IP literal. A trailing dot makes a different name: "api.prod." is absolute, "api.prod" goes
// through the resolver's search list, and the operator allowed one of them, not both.
type AllowList struct {
	names    map[string]bool // "name:port", lower-cased, trailing dot kept
	addrs    map[netip.AddrPort]bool
	prefixes []prefixPort
}

type prefixPort struct {
	prefix netip.Prefix
	port   uint16
}

// ParseAllowList parses entries "host:port", "IP:port", "CIDR:port" ("[IPv6]:port", "[CIDR6]:port").
// IPv4-mapped IPv6 entries ("[::ffff:10.9.0.0]/112:443") stand for the IPv4 addresses they map, so
// they match a client that names the address either way.
func ParseAllowList(entries []string) (*AllowList, error) {
	al := &AllowList{names: map[string]bool{}, addrs: map[netip.AddrPort]bool{}}
	for _, e := range entries {
		host, portStr, err := net.SplitHostPort(bracketedCIDR(e))
		if err != nil || host == "" {
			return nil, fmt.Errorf("invalid --allow-target %q: want HOST:PORT or CIDR:PORT (IPv6 in brackets, e.g. [fd00::/64]:443)", e)
		}
		port, err := strconv.ParseUint(portStr, 10, 16)
		if err != nil || port == 0 || portStr[0] == '+' {
			return nil, fmt.Errorf("invalid --allow-target %q: port must be 1-65535", e)
		}
		if strings.Contains(host, "/") {
			p, err := ParsePrefix(host)
			if err != nil {
				return nil, fmt.Errorf("invalid --allow-target %q: %v", e, err)
			}
			al.prefixes = append(al.prefixes, prefixPort{prefix: p, port: uint16(port)})
			continue
		}
		if a, err := netip.ParseAddr(host); err == nil {
			if a.Zone() != "" {
				return nil, fmt.Errorf("invalid --allow-target %q: an address with a zone can't be named in a CONNECT", e)
			}
			al.addrs[netip.AddrPortFrom(a.Unmap(), uint16(port))] = true
			continue
		}
		if !isHostname(host) || strings.HasPrefix(host, ".") || strings.Contains(host, "..") {
			return nil, fmt.Errorf("invalid --allow-target %q: bad host name", e)
		}
		al.names[nameKey(host, uint16(port))] = true
	}
	return al, nil
}

// ParsePrefix parses a CIDR for an allow list. An IPv4-mapped IPv6 prefix (::ffff:0:0/96 and
// longer) becomes the IPv4 prefix it maps, because clients and peers are compared in their unmapped
// form; a shorter one would mix IPv4 and IPv6 space and is refused rather than left doing nothing.
func ParsePrefix(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("bad CIDR: %v", err)
	}
	if a := p.Addr(); a.Is4In6() {
		if p.Bits() < 96 {
			return netip.Prefix{}, fmt.Errorf("bad CIDR: IPv4-mapped prefix %s is shorter than /96, so it would cover IPv6 and IPv4 space at once: write the IPv4 CIDR instead", s)
		}
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p.Masked(), nil
}

// Match reports whether the CONNECT authority (host and port as ParseAuthority returned them) is
// allowed and, if so, the target to dial: the matching entry's canonical form, never the client's
// spelling (case, IPv4-mapped form, leading zeros of IPv6 groups).
func (al *AllowList) Match(host string, port uint16) (target string, ok bool) {
	if al == nil {
		return "", false
	}
	if a, err := netip.ParseAddr(host); err == nil {
		if a.Zone() != "" {
			return "", false
		}
		ap := netip.AddrPortFrom(a.Unmap(), port)
		if al.addrs[ap] {
			return ap.String(), true
		}
		for _, p := range al.prefixes {
			if p.port == port && p.prefix.Contains(ap.Addr()) {
				return ap.String(), true
			}
		}
		return "", false
	}
	if key := nameKey(host, port); al.names[key] {
		return key, true
	}
	return "", false
}

// Len is the number of entries.
func (al *AllowList) Len() int {
	if al == nil {
		return 0
	}
	return len(al.names) + len(al.addrs) + len(al.prefixes)
}

// nameKey is the canonical "name:port" of a host name: lower-cased (DNS names are case-insensitive),
// trailing dot kept (it changes what the name resolves to).
func nameKey(name string, port uint16) string {
	return strings.ToLower(name) + ":" + strconv.Itoa(int(port))
}

// bracketedCIDR turns "[ADDR]/BITS:PORT" (an IPv6 CIDR written with the address bracketed) into the
// "[ADDR/BITS]:PORT" form that SplitHostPort understands; other entries are returned unchanged.
func bracketedCIDR(e string) string {
	if !strings.HasPrefix(e, "[") {
		return e
	}
	addr, rest, ok := strings.Cut(e[1:], "]/")
	if !ok {
		return e
	}
	bits, port, ok := strings.Cut(rest, ":")
	if !ok {
		return e
	}
	return "[" + addr + "/" + bits + "]:" + port
}
