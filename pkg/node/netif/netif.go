// Package netif is the small slice of netlink that `agent node` needs: make sure a link exists and
// is up, keep one host address on it, find that address on other links, and hear about changes.
// It sits behind an interface so the sync logic can be unit-tested with Fake, while Netlink talks
// to the kernel (optionally inside a given network namespace).
package netif

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
)

// OwnerAlias is written as the alias (ifalias) of every link we create. Cleanup deletes a link only
// when it carries this mark, so a pre-existing device is never removed, even after an agent
// restart has forgotten what it created.
const OwnerAlias = "created-by: apiproxy agent node"

// Event is one kernel notification relevant to the sync loop: an address added or removed
// (IP set) or a link changed or removed (Link set).
type Event struct {
	IP      net.IP
	Link    string
	Deleted bool
}

// Interface is what the node syncer needs from the kernel's link layer.
type Interface interface {
	// EnsureLink makes sure the link exists and is up. A missing link is created as a dummy device
	// marked with OwnerAlias (a port-less bridge on kernels without dummy support); created
	// reports whether that happened now.
	EnsureLink(name string) (created bool, err error)
	// OwnedLink reports whether the link exists and was created by an agent (carries OwnerAlias).
	OwnedLink(name string) (bool, error)
	// EnsureAddress puts ip as a host route (/32 or /128) on the link; added is false when it was
	// already there.
	EnsureAddress(link string, ip net.IP) (added bool, err error)
	// LinksWithAddress lists the links that carry ip, with any prefix length.
	LinksWithAddress(ip net.IP) ([]string, error)
	// DeleteAddress removes ip from the link; an absent address or link is success.
	DeleteAddress(link string, ip net.IP) error
	// DeleteLink removes the link; an absent link is success.
	DeleteLink(name string) error
	// Subscribe delivers address and link events until ctx is done, then closes ch. It returns
	// once the subscription is in place, so no event after it returns can be missed.
	Subscribe(ctx context.Context, ch chan<- Event) error
}

// HostMask is the /32 (IPv4) or /128 (IPv6) mask of ip.
func HostMask(ip net.IP) net.IPMask {
	if ip.To4() != nil {
		return net.CIDRMask(32, 32)
	}
	return net.CIDRMask(128, 128)
}

// ValidateLinkName applies the kernel's rules for interface names (dev_valid_name), so a bad
// --interface is rejected with a clear message before anything is touched.
func ValidateLinkName(name string) error {
	switch {
	case name == "":
		return errors.New("interface name is empty")
	case len(name) > 15:
		return fmt.Errorf("interface name %q is %d characters long; Linux allows at most 15", name, len(name))
	case name == "." || name == "..":
		return fmt.Errorf("interface name %q is reserved", name)
	case strings.ContainsAny(name, "/: \t\n\r\x00"):
		return fmt.Errorf("interface name %q contains '/', ':' or whitespace, which Linux does not allow", name)
	}
	return nil
}

// ErrPermission marks failures caused by missing privileges, which retrying cannot fix.
var ErrPermission = errors.New("needs CAP_NET_ADMIN (run as root or add the NET_ADMIN capability)")

// wrap adds context and turns EPERM/EACCES into ErrPermission so callers can tell the user what
// to fix.
func wrap(err error, format string, args ...any) error {
	if err == nil {
		return nil
	}
	msg := fmt.Sprintf(format, args...)
	if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES) {
		return fmt.Errorf("%s: %w: %v", msg, ErrPermission, err)
	}
	return fmt.Errorf("%s: %w", msg, err)
}
