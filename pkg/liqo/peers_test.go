package liqo

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"

	fixtures "github.com/apiproxy/apiproxy/test/fixtures/liqo"
)

func TestPeers(t *testing.T) {
	ctx := context.Background()
	two := fakeCluster("cl01", true,
		seedConfiguration("10.70.0.0/16", "10.81.0.0/16"),
		fixtures.Configuration("liqo-tenant-cl03", "cl03", "cl03-id",
			fixtures.CIDRs{External: []string{"10.70.0.0/16", "fd00:70::/64"}},
			&fixtures.CIDRs{External: []string{"10.82.0.0/16", "fd00:82::/64"}}))
	peers, err := Peers(ctx, two)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]netip.Prefix{}
	for _, p := range peers {
		got[p.RemoteClusterID] = p.RemappedExternal
	}
	if len(got) != 2 || got[providerID][0].String() != "10.81.0.0/16" || len(got["cl03-id"]) != 2 || got["cl03-id"][1].String() != "fd00:82::/64" {
		t.Fatalf("peers = %+v", peers)
	}

	if _, err := Peers(ctx, fakeCluster("bare", false)); !errors.Is(err, ErrNotServed) {
		t.Errorf("no Liqo: err = %v, want ErrNotServed", err)
	}
	if _, err := Peers(ctx, fakeCluster("lonely", true)); !errors.Is(err, ErrNoConfiguration) {
		t.Errorf("no peers: err = %v, want ErrNoConfiguration", err)
	}
	pending := fakeCluster("cl01", true, fixtures.Configuration("t", "cl02", providerID, fixtures.CIDRs{External: "10.70.0.0/16"}, nil))
	if _, err := Peers(ctx, pending); !errors.Is(err, ErrStatusNotSet) || !strings.Contains(err.Error(), "t/cl02") {
		t.Errorf("status not set: err = %v, want ErrStatusNotSet naming the Configuration", err)
	}
	bad := fakeCluster("cl01", true, seedConfiguration("10.70.0.0/16", "10.81.0.0/99"))
	if _, err := Peers(ctx, bad); !errors.Is(err, ErrInvalidValue) {
		t.Errorf("bad CIDR: err = %v, want ErrInvalidValue", err)
	}
}
