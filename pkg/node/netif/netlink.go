package netif

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Netlink is the real Interface. All calls go through one *netlink.Handle, so a Netlink made with
// NewAt works inside another network namespace without moving any OS thread.
type Netlink struct {
	h  *netlink.Handle
	ns *netns.NsHandle // nil: the process's namespace
}

var _ Interface = (*Netlink)(nil)

// New talks to the namespace of the calling process.
func New() (*Netlink, error) {
	h, err := netlink.NewHandle()
	if err != nil {
		return nil, wrap(err, "open netlink socket")
	}
	return &Netlink{h: h}, nil
}

// NewAt talks to the network namespace ns (tests use it with a namespace they created).
func NewAt(ns netns.NsHandle) (*Netlink, error) {
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, wrap(err, "open netlink socket in namespace")
	}
	return &Netlink{h: h, ns: &ns}, nil
}

// Close releases the netlink socket.
func (n *Netlink) Close() { n.h.Close() }

func (n *Netlink) link(name string) (netlink.Link, error) {
	l, err := n.h.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) || errors.Is(err, syscall.ENODEV) {
			return nil, nil
		}
		return nil, wrap(err, "look up interface %s", name)
	}
	return l, nil
}

func (n *Netlink) EnsureLink(name string) (bool, error) {
	l, err := n.link(name)
	if err != nil {
		return false, err
	}
	created := false
	if l == nil {
		if err := n.addDummy(name); err != nil {
			return false, err
		}
		created = true
		if l, err = n.link(name); err != nil || l == nil {
			return created, fmt.Errorf("interface %s vanished right after it was created: %v", name, err)
		}
		if err := n.h.LinkSetAlias(l, OwnerAlias); err != nil {
			return created, wrap(err, "mark interface %s as ours", name)
		}
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		if err := n.h.LinkSetUp(l); err != nil {
			return created, wrap(err, "bring interface %s up", name)
		}
	}
	return created, nil
}

// addDummy creates a dummy device. Kernels built without CONFIG_DUMMY (some minimal VM kernels)
// answer EOPNOTSUPP; there a bridge without ports does the same job: a software device that is
// always up and holds local addresses.
func (n *Netlink) addDummy(name string) error {
	attrs := netlink.LinkAttrs{Name: name}
	err := n.h.LinkAdd(&netlink.Dummy{LinkAttrs: attrs})
	if errors.Is(err, syscall.EOPNOTSUPP) {
		err = n.h.LinkAdd(&netlink.Bridge{LinkAttrs: attrs})
		if err != nil && !errors.Is(err, syscall.EEXIST) {
			return wrap(err, "create interface %s (this kernel has no dummy devices; a bridge failed too)", name)
		}
		return nil
	}
	if err != nil && !errors.Is(err, syscall.EEXIST) {
		return wrap(err, "create dummy interface %s", name)
	}
	return nil
}

func (n *Netlink) OwnedLink(name string) (bool, error) {
	l, err := n.link(name)
	if err != nil || l == nil {
		return false, err
	}
	return l.Attrs().Alias == OwnerAlias, nil
}

func family(ip net.IP) int {
	if ip.To4() != nil {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

func (n *Netlink) EnsureAddress(name string, ip net.IP) (bool, error) {
	l, err := n.link(name)
	if err != nil {
		return false, err
	}
	if l == nil {
		return false, fmt.Errorf("interface %s does not exist", name)
	}
	addrs, err := n.h.AddrList(l, family(ip))
	if err != nil {
		return false, wrap(err, "list addresses of %s", name)
	}
	want := net.IPNet{IP: ip, Mask: HostMask(ip)}
	for _, a := range addrs {
		if a.IP.Equal(ip) && a.Mask.String() == want.Mask.String() {
			return false, nil
		}
	}
	addr := &netlink.Addr{IPNet: &want}
	if family(ip) == netlink.FAMILY_V6 {
		// Skip duplicate address detection: the address is ours alone and must be usable at once,
		// not "tentative" for a second or more.
		addr.Flags = unix.IFA_F_NODAD
	}
	if err := n.h.AddrAdd(l, addr); err != nil {
		if errors.Is(err, syscall.EEXIST) {
			return false, nil
		}
		return false, wrap(err, "add %s to %s", want.String(), name)
	}
	return true, nil
}

func (n *Netlink) LinksWithAddress(ip net.IP) ([]string, error) {
	addrs, err := n.h.AddrList(nil, family(ip))
	if err != nil {
		return nil, wrap(err, "list addresses")
	}
	var names []string
	seen := map[int]bool{}
	for _, a := range addrs {
		if !a.IP.Equal(ip) || seen[a.LinkIndex] {
			continue
		}
		seen[a.LinkIndex] = true
		l, err := n.h.LinkByIndex(a.LinkIndex)
		if err != nil {
			continue // the link went away meanwhile: nothing to clean there
		}
		names = append(names, l.Attrs().Name)
	}
	return names, nil
}

func (n *Netlink) DeleteAddress(name string, ip net.IP) error {
	l, err := n.link(name)
	if err != nil || l == nil {
		return err
	}
	addrs, err := n.h.AddrList(l, family(ip))
	if err != nil {
		return wrap(err, "list addresses of %s", name)
	}
	for _, a := range addrs {
		if !a.IP.Equal(ip) {
			continue
		}
		if err := n.h.AddrDel(l, &a); err != nil && !errors.Is(err, syscall.EADDRNOTAVAIL) && !errors.Is(err, syscall.ENOENT) {
			return wrap(err, "remove %s from %s", a.IPNet.String(), name)
		}
	}
	return nil
}

func (n *Netlink) DeleteLink(name string) error {
	l, err := n.link(name)
	if err != nil || l == nil {
		return err
	}
	if err := n.h.LinkDel(l); err != nil && !errors.Is(err, syscall.ENODEV) {
		return wrap(err, "delete interface %s", name)
	}
	return nil
}

func (n *Netlink) Subscribe(ctx context.Context, ch chan<- Event) error {
	addrCh := make(chan netlink.AddrUpdate, 64)
	linkCh := make(chan netlink.LinkUpdate, 64)
	// A private done channel lets us stop the first subscription if the second one fails.
	done := make(chan struct{})
	var once sync.Once
	stop := func() { once.Do(func() { close(done) }) }
	if err := netlink.AddrSubscribeWithOptions(addrCh, done, netlink.AddrSubscribeOptions{Namespace: n.ns}); err != nil {
		stop()
		return wrap(err, "subscribe to address changes")
	}
	if err := netlink.LinkSubscribeWithOptions(linkCh, done, netlink.LinkSubscribeOptions{Namespace: n.ns}); err != nil {
		stop()
		return wrap(err, "subscribe to link changes")
	}
	go func() {
		<-ctx.Done()
		stop()
	}()
	send := func(e Event) bool {
		select {
		case ch <- e:
			return true
		case <-ctx.Done():
			return false
		}
	}
	go func() {
		defer close(ch)
		// Either closed channel means the subscription broke (or ctx ended): close ch so the
		// caller re-subscribes, stop the other one and drain both so netlink's readers can exit.
		defer func() {
			stop()
			go func() {
				for range addrCh {
				}
			}()
			go func() {
				for range linkCh {
				}
			}()
		}()
		for {
			select {
			case u, ok := <-addrCh:
				if !ok || !send(Event{IP: u.LinkAddress.IP, Deleted: !u.NewAddr}) {
					return
				}
			case u, ok := <-linkCh:
				if !ok || !send(Event{Link: u.Attrs().Name, Deleted: u.Header.Type == unix.RTM_DELLINK}) {
					return
				}
			}
		}
	}()
	return nil
}
