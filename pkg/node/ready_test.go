package node

import (
	"context"
	"strings"
	"testing"

	"github.com/apiproxy/apiproxy/pkg/node/netif"
	"github.com/apiproxy/apiproxy/pkg/node/rules"
)

// Readiness asks the node as it is now, not the last sync: an address or a rule that went away is
// reported at once (naming what is missing) and asks the loop for a repair; a stray copy of the
// address on another link is reported too.
func TestReadinessChecksTheNodeNow(t *testing.T) {
	link, table := netif.NewFake("lo", "eth0"), rules.NewFake()
	m := rules.NewManager(table, "fake", ip, 443)
	s, _ := newSyncer(t, link, m, "apiproxy0")
	if err := s.AddressReady(); err == nil || !strings.Contains(err.Error(), "10.96.0.2/32 is not on apiproxy0") {
		t.Errorf("before the first sync: AddressReady = %v", err)
	}
	<-s.repair // the check asked for a repair; drain it for the checks below
	if err := s.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := s.AddressReady(); err != nil {
		t.Errorf("after a sync: AddressReady = %v", err)
	}
	if err := s.RulesReady(); err != nil {
		t.Errorf("after a sync: RulesReady = %v", err)
	}
	if len(s.repair) != 0 {
		t.Fatal("a passing check asked for a repair")
	}

	// Someone deletes the address: the last sync was fine, readiness is not.
	link.DeleteExternal("apiproxy0", ip)
	if s.Ready() != nil {
		t.Fatal("the last sync's verdict changed by itself")
	}
	if err := s.AddressReady(); err == nil || !strings.Contains(err.Error(), "not on apiproxy0") {
		t.Errorf("address deleted: AddressReady = %v", err)
	}
	if len(s.repair) != 1 {
		t.Error("a missing address did not ask for a repair")
	}
	<-s.repair
	link.AddExternal("apiproxy0", "10.96.0.2/32")
	link.AddExternal("eth0", "10.96.0.2/32")
	if err := s.AddressReady(); err == nil || !strings.Contains(err.Error(), "also on [eth0]") {
		t.Errorf("stray copy: AddressReady = %v", err)
	}
	<-s.repair

	// Someone deletes a rule (iptables raises no event): reported, repair asked.
	table.Remove(m.Rules()[3])
	if err := s.RulesReady(); err == nil || !strings.Contains(err.Error(), "1 rule(s) missing: -t filter -A INPUT -d 10.96.0.2/32") {
		t.Errorf("rule deleted: RulesReady = %v", err)
	}
	if len(s.repair) != 1 {
		t.Error("a missing rule did not ask for a repair")
	}
	if err := s.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := s.RulesReady(); err != nil {
		t.Errorf("after the repair: RulesReady = %v", err)
	}

	// Without rules to keep, the rules check passes.
	s2, _ := newSyncer(t, netif.NewFake("lo"), nil, "lo")
	if err := s2.RulesReady(); err != nil {
		t.Errorf("no rules: RulesReady = %v", err)
	}
}
