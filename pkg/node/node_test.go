package node

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/apiproxy/apiproxy/pkg/node/netif"
	"github.com/apiproxy/apiproxy/pkg/node/rules"
)

var ip = net.ParseIP("10.96.0.2").To4()

func newSyncer(t *testing.T, link netif.Interface, r Rules, name string) (*Syncer, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	s, err := New(Config{IP: ip, Interface: name, Rules: r}, link, reg)
	if err != nil {
		t.Fatal(err)
	}
	return s, reg
}

func TestSyncCreatesLinkAddressAndRulesOnce(t *testing.T) {
	link, table := netif.NewFake("lo"), rules.NewFake()
	s, reg := newSyncer(t, link, rules.NewManager(table, "fake", ip, 443), "apiproxy0")
	for i := 0; i < 2; i++ {
		if err := s.Sync(context.Background()); err != nil {
			t.Fatalf("sync %d: %v", i, err)
		}
	}
	if exists, up := link.Has("apiproxy0"); !exists || !up {
		t.Fatalf("link apiproxy0 exists=%v up=%v, want both", exists, up)
	}
	if got := link.Addresses("apiproxy0"); len(got) != 1 || got[0] != "10.96.0.2/32" {
		t.Fatalf("addresses = %v, want [10.96.0.2/32]", got)
	}
	if table.Count() != 5 {
		t.Fatalf("%d rules after two syncs, want 5", table.Count())
	}
	for kind, want := range map[string]float64{"link": 1, "address": 1, "rule": 5} {
		if got := testutil.ToFloat64(s.metrics.repairs.WithLabelValues(kind)); got != want {
			t.Errorf("repairs{kind=%s} = %v, want %v", kind, got, want)
		}
	}
	if testutil.ToFloat64(s.metrics.lastSuccess) == 0 || s.Ready() != nil {
		t.Error("a successful sync must set the last-success timestamp and readiness")
	}
	if n, _ := testutil.GatherAndCount(reg, "apiproxy_node_repairs_total", "apiproxy_node_last_successful_sync_timestamp_seconds", "apiproxy_node_sync_errors_total"); n < 3 {
		t.Errorf("metrics not registered on the given registry (%d series)", n)
	}
}

func TestSyncMovesAddressAwayFromOtherLinks(t *testing.T) {
	link := netif.NewFake("lo", "eth0")
	link.AddExternal("eth0", "10.96.0.2/32")
	link.AddExternal("eth0", "192.168.1.5/24")
	s, _ := newSyncer(t, link, nil, "lo")
	if err := s.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := link.Addresses("eth0"); len(got) != 1 || got[0] != "192.168.1.5/24" {
		t.Errorf("eth0 = %v: the moved IP must be gone and nothing else touched", got)
	}
	if got := link.Addresses("lo"); len(got) != 1 {
		t.Errorf("lo = %v, want the IP", got)
	}
	if len(link.Created) != 0 {
		t.Errorf("existing lo must not be created: %v", link.Created)
	}
}

func TestSyncErrorIsCountedAndNotReady(t *testing.T) {
	link := netif.NewFake("lo")
	link.Err = errors.New("add 10.96.0.2/32 to lo: " + netif.ErrPermission.Error())
	s, _ := newSyncer(t, link, nil, "lo")
	if err := s.Sync(context.Background()); err == nil {
		t.Fatal("want the error")
	}
	if testutil.ToFloat64(s.metrics.errors) != 1 || s.Ready() == nil {
		t.Error("a failed sync must count an error and make the syncer not ready")
	}
}

func TestCleanup(t *testing.T) {
	cases := []struct {
		name, iface  string
		preexisting  bool
		wantLinkGone bool
	}{
		{"created by us", "apiproxy0", false, true},
		{"pre-existing device stays", "apiproxy0", true, false},
		{"lo stays", "lo", true, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			link := netif.NewFake("lo")
			if c.preexisting && c.iface != "lo" {
				link = netif.NewFake("lo", c.iface)
			}
			table := rules.NewFake()
			s, _ := newSyncer(t, link, rules.NewManager(table, "fake", ip, 443), c.iface)
			if err := s.Sync(context.Background()); err != nil {
				t.Fatal(err)
			}
			if err := s.Cleanup(); err != nil {
				t.Fatal(err)
			}
			exists, _ := link.Has(c.iface)
			if exists == c.wantLinkGone {
				t.Errorf("link %s exists=%v after cleanup, want gone=%v", c.iface, exists, c.wantLinkGone)
			}
			if got := link.Addresses(c.iface); len(got) != 0 {
				t.Errorf("address left: %v", got)
			}
			if table.Count() != 0 {
				t.Errorf("%d rules left", table.Count())
			}
		})
	}
}

func TestRunRepairsOnKernelEventWithoutWaitingForTheInterval(t *testing.T) {
	link := netif.NewFake("lo")
	s, _ := newSyncer(t, link, nil, "lo")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, time.Hour) }()
	defer func() { cancel(); <-done }()

	waitFor(t, func() bool { return len(link.Addresses("lo")) == 1 }, "initial sync")
	// The interval is an hour: only the event can bring the address back within the deadline.
	link.DeleteExternal("lo", ip)
	waitFor(t, func() bool { return len(link.Addresses("lo")) == 1 }, "repair after an external deletion")
	if got := testutil.ToFloat64(s.metrics.repairs.WithLabelValues("address")); got != 2 {
		t.Errorf("address repairs = %v, want 2 (setup + repair)", got)
	}
}

func TestRunIgnoresUnrelatedEvents(t *testing.T) {
	s, _ := newSyncer(t, netif.NewFake("lo"), nil, "lo")
	for _, e := range []netif.Event{{IP: net.ParseIP("10.0.0.9")}, {Link: "eth1"}} {
		if s.relevant(e) {
			t.Errorf("%+v must not trigger a sync", e)
		}
	}
	for _, e := range []netif.Event{{IP: ip, Deleted: true}, {Link: "lo", Deleted: true}} {
		if !s.relevant(e) {
			t.Errorf("%+v must trigger a sync", e)
		}
	}
}

func TestNewRejectsBadInterfaceName(t *testing.T) {
	_, err := New(Config{IP: ip, Interface: "much-too-long-name0"}, netif.NewFake(), nil)
	if err == nil || !strings.Contains(err.Error(), "at most 15") {
		t.Fatalf("want a length error, got %v", err)
	}
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
