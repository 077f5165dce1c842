package remap

import (
	"errors"
	"net/netip"
	"testing"
)

func TestAddr(t *testing.T) {
	for _, tc := range []struct {
		name, ip, from, to, want string
		err                      error
	}{
		{name: "seed example", ip: "10.70.0.3", from: "10.70.0.0/16", to: "10.81.0.0/16", want: "10.81.0.3"},
		{name: "seed REMAPPED IPS", ip: "10.70.0.2", from: "10.70.0.0/16", to: "10.81.0.0/16", want: "10.81.0.2"},
		{name: "same CIDR leaves the address", ip: "10.70.12.34", from: "10.70.0.0/16", to: "10.70.0.0/16", want: "10.70.12.34"},
		{name: "unmasked CIDRs are masked", ip: "10.70.1.2", from: "10.70.9.9/16", to: "10.81.7.7/16", want: "10.81.1.2"},
		{name: "prefix not on a byte boundary", ip: "192.168.13.77", from: "192.168.8.0/21", to: "172.16.248.0/21", want: "172.16.253.77"},
		{name: "/32", ip: "10.0.0.1", from: "10.0.0.1/32", to: "10.9.9.9/32", want: "10.9.9.9"},
		{name: "/0 keeps everything", ip: "1.2.3.4", from: "0.0.0.0/0", to: "0.0.0.0/0", want: "1.2.3.4"},
		{name: "IPv6", ip: "fd00:70::3", from: "fd00:70::/64", to: "fd00:81::/64", want: "fd00:81::3"},
		{name: "IPv6 odd prefix", ip: "2001:db8:abcd:12ff::1", from: "2001:db8:abcd:1280::/57", to: "fd00:0:0:80::/57", want: "fd00:0:0:ff::1"},
		{name: "IPv4-mapped address with IPv4 CIDRs", ip: "::ffff:10.70.0.3", from: "10.70.0.0/16", to: "10.81.0.0/16", want: "10.81.0.3"},
		{name: "prefix lengths differ", ip: "10.70.0.3", from: "10.70.0.0/16", to: "10.81.0.0/24", err: ErrPrefixLengthMismatch},
		{name: "outside", ip: "10.71.0.3", from: "10.70.0.0/16", to: "10.81.0.0/16", err: ErrOutside},
		{name: "IPv4 address, IPv6 CIDRs", ip: "10.70.0.3", from: "fd00::/64", to: "fd01::/64", err: ErrFamilyMismatch},
		{name: "CIDRs of different families", ip: "10.70.0.3", from: "10.70.0.0/16", to: "fd00::/16", err: ErrFamilyMismatch},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Addr(netip.MustParseAddr(tc.ip), netip.MustParsePrefix(tc.from), netip.MustParsePrefix(tc.to))
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("Addr(%s, %s, %s) = %v, %v; want error %v", tc.ip, tc.from, tc.to, got, err, tc.err)
				}
				return
			}
			if err != nil || got != netip.MustParseAddr(tc.want) {
				t.Fatalf("Addr(%s, %s, %s) = %v, %v; want %s", tc.ip, tc.from, tc.to, got, err, tc.want)
			}
		})
	}
}

func TestAddrRejectsZeroValues(t *testing.T) {
	if _, err := Addr(netip.Addr{}, netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("11.0.0.0/8")); !errors.Is(err, ErrInvalid) {
		t.Errorf("zero address: err = %v, want ErrInvalid", err)
	}
	if _, err := Addr(netip.MustParseAddr("10.0.0.1"), netip.Prefix{}, netip.MustParsePrefix("11.0.0.0/8")); !errors.Is(err, ErrInvalid) {
		t.Errorf("zero prefix: err = %v, want ErrInvalid", err)
	}
}

// FuzzRemap checks the two properties that define a remap for any address and CIDR pair: the
// result lies in the destination CIDR, and its host bits are those of the input.
func FuzzRemap(f *testing.F) {
	f.Add([]byte{10, 70, 0, 3}, []byte{10, 81, 0, 0}, uint8(16))
	f.Add([]byte{0xfd, 0, 0, 0x70, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3}, []byte{0xfd, 0, 0, 0x81, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, uint8(64))
	f.Add([]byte{192, 168, 13, 77}, []byte{172, 16, 248, 0}, uint8(21))
	f.Fuzz(func(t *testing.T, ipBytes, toBytes []byte, bits uint8) {
		ip, ok := addrOf(ipBytes)
		if !ok {
			return
		}
		to, ok := addrOf(toBytes)
		if !ok || to.Is4() != ip.Is4() {
			return
		}
		b := int(bits) % (ip.BitLen() + 1)
		from := netip.PrefixFrom(ip, b).Masked()
		dst := netip.PrefixFrom(to, b).Masked()

		got, err := Addr(ip, from, dst)
		if err != nil {
			t.Fatalf("Addr(%s, %s, %s): %v", ip, from, dst, err)
		}
		if !dst.Contains(got) {
			t.Fatalf("Addr(%s, %s, %s) = %s, outside the destination", ip, from, dst, got)
		}
		if hostBits(got, b) != hostBits(ip, b) {
			t.Fatalf("Addr(%s, %s, %s) = %s: host bits changed", ip, from, dst, got)
		}
		// Remapping is a bijection between the two CIDRs: going back gives the input.
		if back, err := Addr(got, dst, from); err != nil || back != ip {
			t.Fatalf("Addr(%s, %s, %s) = %v, %v; want %s back", got, dst, from, back, err, ip)
		}
		// A destination of another size must be refused, never silently truncated.
		if b > 0 {
			if _, err := Addr(ip, from, netip.PrefixFrom(to, b-1).Masked()); !errors.Is(err, ErrPrefixLengthMismatch) {
				t.Fatalf("Addr with /%d and /%d: err = %v, want ErrPrefixLengthMismatch", b, b-1, err)
			}
		}
	})
}

func addrOf(b []byte) (netip.Addr, bool) {
	switch len(b) {
	case 4:
		return netip.AddrFrom4([4]byte(b)), true
	case 16:
		return netip.AddrFrom16([16]byte(b)), true
	}
	return netip.Addr{}, false
}

// hostBits returns the address with its first bits zeroed: what a remap must keep. It is written
// bit by bit, independently of the byte masks in Addr.
func hostBits(a netip.Addr, bits int) string {
	raw := a.AsSlice()
	for i := 0; i < bits; i++ {
		raw[i/8] &^= 0x80 >> (i % 8)
	}
	out, _ := netip.AddrFromSlice(raw)
	return out.String()
}
