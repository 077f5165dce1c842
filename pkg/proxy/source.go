package proxy

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// SourceList holds the --allow-source CIDRs: the only client addresses a listener serves. Clients
// are compared unmapped, so an IPv4 client of a dual-stack listener (::ffff:10.0.0.1) matches
// 10.0.0.0/8.
type SourceList struct {
	prefixes []netip.Prefix
}

// ParseSourceList parses CIDRs ("10.0.0.0/8", "fd00::/64") or single addresses.
func ParseSourceList(entries []string) (*SourceList, error) {
	sl := &SourceList{}
	for _, e := range entries {
		s := strings.TrimSpace(e)
		if !strings.Contains(s, "/") {
			a, err := netip.ParseAddr(s)
			if err != nil || a.Zone() != "" {
				return nil, fmt.Errorf("invalid --allow-source %q: want a CIDR (10.0.0.0/8, fd00::/64) or an IP address", e)
			}
			a = a.Unmap()
			s = netip.PrefixFrom(a, a.BitLen()).String()
		}
		p, err := ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("invalid --allow-source %q: %v", e, err)
		}
		sl.prefixes = append(sl.prefixes, p)
	}
	return sl, nil
}

// Allows reports whether a client at addr may connect. A nil list allows everyone.
func (sl *SourceList) Allows(addr net.Addr) bool {
	if sl == nil {
		return true
	}
	ta, ok := addr.(*net.TCPAddr)
	if !ok {
		return false
	}
	a, ok := netip.AddrFromSlice(ta.IP)
	if !ok {
		return false
	}
	a = a.Unmap()
	for _, p := range sl.prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// Len is the number of entries.
func (sl *SourceList) Len() int {
	if sl == nil {
		return 0
	}
	return len(sl.prefixes)
}

// sometimes lets one event through per interval and counts the ones it held back, so a flood of
// refused sources costs one log line per interval, not one per connection.
type sometimes struct {
	interval time.Duration
	mu       sync.Mutex
	last     time.Time
	held     int
}

// allow reports whether to log now, and how many events were held back since the last line.
func (s *sometimes) allow(now time.Time) (bool, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.last.IsZero() && now.Sub(s.last) < s.interval {
		s.held++
		return false, 0
	}
	held := s.held
	s.last, s.held = now, 0
	return true, held
}
