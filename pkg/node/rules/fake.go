package rules

import (
	"strings"
	"sync"
)

// Fake is an in-memory Table: one ordered list of rules per "table/chain".
type Fake struct {
	mu     sync.Mutex
	chains map[string][]string
	Err    error // returned by Append when set
}

var _ Table = (*Fake)(nil)

// NewFake returns an empty Fake.
func NewFake() *Fake { return &Fake{chains: map[string][]string{}} }

func key(table, chain string) string { return table + "/" + chain }

func (f *Fake) Exists(table, chain string, spec ...string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	want := strings.Join(spec, " ")
	for _, r := range f.chains[key(table, chain)] {
		if r == want {
			return true, nil
		}
	}
	return false, nil
}

func (f *Fake) Append(table, chain string, spec ...string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.Err != nil {
		return f.Err
	}
	k := key(table, chain)
	f.chains[k] = append(f.chains[k], strings.Join(spec, " "))
	return nil
}

func (f *Fake) DeleteIfExists(table, chain string, spec ...string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	k, want := key(table, chain), strings.Join(spec, " ")
	for i, r := range f.chains[k] {
		if r == want {
			f.chains[k] = append(f.chains[k][:i], f.chains[k][i+1:]...)
			return nil
		}
	}
	return nil
}

// Count is the total number of rules in all chains.
func (f *Fake) Count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, rs := range f.chains {
		n += len(rs)
	}
	return n
}

// Remove deletes a rule as someone else would.
func (f *Fake) Remove(r Rule) { _ = f.DeleteIfExists(r.Table, r.Chain, r.Spec...) }
