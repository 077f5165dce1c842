package realnode

import (
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
)

// Ranges that could send the node's traffic somewhere real are refused before anything is set up,
// with the option to change in the message.
func TestPlanNetworkRefusesUnsafeRanges(t *testing.T) {
	// Documentation ranges, so the cases do not depend on what this machine (or a running real-node
	// cluster) uses.
	base := Options{PodCIDR: "198.51.100.0/24", ServiceCIDR: "203.0.113.0/24", LocalCIDR: "198.18.0.0/24"}
	base.defaults()
	cases := map[string]struct {
		mutate func(*Options)
		want   string
	}{
		"not a CIDR":     {func(o *Options) { o.PodCIDR = "198.51.100.1" }, "Options.PodCIDR"},
		"IPv6":           {func(o *Options) { o.ServiceCIDR = "fd00:96::/112" }, "Options.ServiceCIDR"},
		"ranges overlap": {func(o *Options) { o.LocalCIDR = "203.0.113.128/25" }, "overlaps"},
	}
	// A range holding this machine's own route (e.g. the default interface's subnet).
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		if r.Dst != nil && !r.Dst.IP.IsLoopback() && !isZeroMask(r.Dst.Mask) {
			dst := r.Dst.String()
			cases["machine route "+dst] = struct {
				mutate func(*Options)
				want   string
			}{func(o *Options) { o.ServiceCIDR = dst }, "overlaps this machine's route"}
			break
		}
	}
	for _, ns := range resolvers() {
		if ns.To4() != nil {
			cidr := ns.String() + "/32"
			cases["resolver "+cidr] = struct {
				mutate func(*Options)
				want   string
			}{func(o *Options) { o.LocalCIDR = cidr }, "DNS resolver"}
			break
		}
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			o := base
			tc.mutate(&o)
			_, err := planNetwork(o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("planNetwork(%+v) = %v, want an error with %q", o, err, tc.want)
			}
		})
	}
}

func TestPlanNetworkDefaults(t *testing.T) {
	o := Options{}
	o.defaults()
	nw, err := planNetwork(o)
	if err != nil {
		t.Skipf("the default ranges are in use on this machine: %v", err)
	}
	if nw.nodeIP.String() != "10.244.0.1" || nw.kubernetesIP.String() != "10.96.0.1" {
		t.Errorf("node IP %s, kubernetes Service IP %s", nw.nodeIP, nw.kubernetesIP)
	}
}
