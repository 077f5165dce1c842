// Package remap moves an address from one network to another of the same size, the way a
// cluster-to-cluster fabric (Liqo) NATs a peer's CIDR into a locally unused one: the host bits of
// the address are kept and its network bits are taken from the destination CIDR.
//
// 10.70.0.3 in 10.70.0.0/16 remapped to 10.81.0.0/16 gives 10.81.0.3.
package remap

import (
	"errors"
	"fmt"
	"net/netip"
)

// Sentinel errors, wrapped by Addr so callers can tell the failures apart with errors.Is.
var (
	// ErrFamilyMismatch: the address and the CIDRs are not all IPv4 or all IPv6.
	ErrFamilyMismatch = errors.New("address family mismatch")
	// ErrPrefixLengthMismatch: the two CIDRs have different sizes, so no one-to-one mapping exists.
	ErrPrefixLengthMismatch = errors.New("prefix lengths differ")
	// ErrOutside: the address does not lie in the source CIDR.
	ErrOutside = errors.New("address outside the CIDR")
	// ErrInvalid: a zero (unset) address or prefix.
	ErrInvalid = errors.New("invalid address or prefix")
)

// Addr returns ip moved from the network from into the network to: the bits of ip beyond from's
// prefix length (the host part) are kept, the leading bits come from to. from and to must be of the
// same family and prefix length, and from must contain ip. When from equals to, ip is returned
// unchanged. An IPv4-mapped IPv6 address is treated as IPv4 when the CIDRs are IPv4.
func Addr(ip netip.Addr, from, to netip.Prefix) (netip.Addr, error) {
	if !ip.IsValid() || !from.IsValid() || !to.IsValid() {
		return netip.Addr{}, fmt.Errorf("remapping %v from %v to %v: %w", ip, from, to, ErrInvalid)
	}
	if from.Addr().Is4() && ip.Is4In6() {
		ip = ip.Unmap()
	}
	if ip.Is4() != from.Addr().Is4() || from.Addr().Is4() != to.Addr().Is4() {
		return netip.Addr{}, fmt.Errorf("remapping %s from %s to %s: %w", ip, from, to, ErrFamilyMismatch)
	}
	if from.Bits() != to.Bits() {
		return netip.Addr{}, fmt.Errorf("remapping %s from %s to %s: %w (/%d vs /%d)", ip, from, to, ErrPrefixLengthMismatch, from.Bits(), to.Bits())
	}
	if !from.Contains(ip) {
		return netip.Addr{}, fmt.Errorf("remapping %s from %s to %s: %w %s", ip, from, to, ErrOutside, from.Masked())
	}

	// Work on the 16-byte form for both families; an IPv4 address sits in the last 4 bytes, so its
	// prefix length counts from bit 96.
	offset := 0
	if ip.Is4() {
		offset = 96
	}
	networkBits := offset + to.Bits()
	host := ip.As16()
	network := to.Masked().Addr().As16()
	var out [16]byte
	for i := range out {
		out[i] = network[i]&byteMask(networkBits, i) | host[i]&^byteMask(networkBits, i)
	}
	res := netip.AddrFrom16(out)
	if ip.Is4() {
		res = res.Unmap()
	}
	return res, nil
}

// byteMask is the byte i of a network mask networkBits long over 16 bytes.
func byteMask(networkBits, i int) byte {
	switch n := networkBits - 8*i; {
	case n >= 8:
		return 0xff
	case n <= 0:
		return 0
	default:
		return ^byte(0xff >> n)
	}
}
