package netif

import (
	"context"
	"fmt"
	"net"
	"sort"
	"sync"
)

// Fake is an in-memory Interface for unit tests. Links map to their addresses; Err, when set,
// is returned by every mutating call.
type Fake struct {
	mu      sync.Mutex
	links   map[string]*fakeLink
	subs    []chan<- Event
	Err     error
	Created []string // links created by EnsureLink, in order
}

type fakeLink struct {
	up    bool
	owned bool
	addrs []string // CIDR strings
}

var _ Interface = (*Fake)(nil)

// NewFake returns a Fake with the given pre-existing links (down, not owned, no addresses).
func NewFake(links ...string) *Fake {
	f := &Fake{links: map[string]*fakeLink{}}
	for _, l := range links {
		f.links[l] = &fakeLink{}
	}
	return f
}

func (f *Fake) EnsureLink(name string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.Err != nil {
		return false, f.Err
	}
	l, ok := f.links[name]
	if !ok {
		l = &fakeLink{owned: true}
		f.links[name] = l
		f.Created = append(f.Created, name)
	}
	l.up = true
	return !ok, nil
}

func (f *Fake) OwnedLink(name string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	l, ok := f.links[name]
	return ok && l.owned, nil
}

func (f *Fake) EnsureAddress(name string, ip net.IP) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.Err != nil {
		return false, f.Err
	}
	l, ok := f.links[name]
	if !ok {
		return false, fmt.Errorf("interface %s does not exist", name)
	}
	cidr := (&net.IPNet{IP: ip, Mask: HostMask(ip)}).String()
	for _, a := range l.addrs {
		if a == cidr {
			return false, nil
		}
	}
	l.addrs = append(l.addrs, cidr)
	return true, nil
}

func (f *Fake) LinksWithAddress(ip net.IP) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var names []string
	for name, l := range f.links {
		for _, a := range l.addrs {
			if aip, _, _ := net.ParseCIDR(a); aip.Equal(ip) {
				names = append(names, name)
				break
			}
		}
	}
	sort.Strings(names)
	return names, nil
}

func (f *Fake) DeleteAddress(name string, ip net.IP) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.Err != nil {
		return f.Err
	}
	l, ok := f.links[name]
	if !ok {
		return nil
	}
	kept := l.addrs[:0]
	for _, a := range l.addrs {
		if aip, _, _ := net.ParseCIDR(a); !aip.Equal(ip) {
			kept = append(kept, a)
		}
	}
	l.addrs = kept
	return nil
}

func (f *Fake) DeleteLink(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.Err != nil {
		return f.Err
	}
	delete(f.links, name)
	return nil
}

func (f *Fake) Subscribe(ctx context.Context, ch chan<- Event) error {
	f.mu.Lock()
	f.subs = append(f.subs, ch)
	f.mu.Unlock()
	go func() { <-ctx.Done() }()
	return nil
}

// Addresses returns the CIDRs on a link (nil when it does not exist).
func (f *Fake) Addresses(name string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if l, ok := f.links[name]; ok {
		return append([]string(nil), l.addrs...)
	}
	return nil
}

// Has reports whether the link exists, and whether it is up.
func (f *Fake) Has(name string) (exists, up bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	l, ok := f.links[name]
	return ok, ok && l.up
}

// AddExternal puts cidr on link as someone else would, and notifies subscribers.
func (f *Fake) AddExternal(link, cidr string) {
	f.mu.Lock()
	l, ok := f.links[link]
	if !ok {
		l = &fakeLink{}
		f.links[link] = l
	}
	l.addrs = append(l.addrs, cidr)
	f.mu.Unlock()
	ip, _, _ := net.ParseCIDR(cidr)
	f.notify(Event{IP: ip})
}

// DeleteExternal removes ip from link as someone else would, and notifies subscribers.
func (f *Fake) DeleteExternal(link string, ip net.IP) {
	f.mu.Lock()
	if l, ok := f.links[link]; ok {
		kept := l.addrs[:0]
		for _, a := range l.addrs {
			if aip, _, _ := net.ParseCIDR(a); !aip.Equal(ip) {
				kept = append(kept, a)
			}
		}
		l.addrs = kept
	}
	f.mu.Unlock()
	f.notify(Event{IP: ip, Deleted: true})
}

func (f *Fake) notify(e Event) {
	f.mu.Lock()
	subs := append([]chan<- Event(nil), f.subs...)
	f.mu.Unlock()
	for _, ch := range subs {
		ch <- e
	}
}
