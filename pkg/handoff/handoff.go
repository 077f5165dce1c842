// Package handoff lets the agents on one node (or in one pod) share their listening sockets, so
// that an address never goes without a listener while one agent process replaces another.
//
// Every agent that shares its listeners serves a Unix socket in a common directory (a hostPath for
// the node role, whose old and new pods overlap in a surge rollout; an emptyDir between the
// containers of one pod). A starting agent asks the running ones for the listening sockets of the
// addresses it wants and gets them over SCM_RIGHTS, as HAProxy's seamless reload does: the very
// same socket, so there is one accept queue, held open by every process that has it. An agent that
// stops (or is killed) only closes its own descriptors; the connections waiting in the queue are
// accepted by the processes that still hold it. Only an address no one offers is bound anew.
//
// Why not SO_REUSEPORT: each reuseport listener has its own accept queue, and closing one resets
// the connections waiting in it unless the kernel migrates them (net.ipv4.tcp_migrate_req, Linux ≥
// 5.14, a host sysctl that an unprivileged container cannot set). Sharing the socket needs neither.
//
// The directory's lock file serialises starts: while one agent asks its peers and binds, no other
// does, so two agents starting together never both bind (the second would fail with "address in
// use") and a stale socket left by a killed agent is recognised (connection refused) and removed.
//
// One agent at a time accepts on an address (Turn, a lock file per address): the others hold the
// same socket outside their poller and stand by, so a new connection wakes one process, not all of
// them: with two agents both polling, each connection cost 15 to 30% more CPU (3,000 loopback
// connections through the transparent listener, 3 rounds); with one standing by, the same as a
// lone agent. When the accepting agent stops, or dies (the kernel drops its lock), a standing-by one
// takes the turn within a moment; connections wait in the shared queue meanwhile.
package handoff

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/sys/unix"
)

const (
	lockName   = ".lock"
	sockSuffix = ".sock"
	// askTimeout bounds one exchange with a peer: a stuck peer (stopped, overloaded) is skipped.
	askTimeout = 2 * time.Second
	// maxFDs is the most descriptors one answer carries (an agent listens on a handful of addresses).
	maxFDs = 16
)

// Dir is this agent's membership in a handoff directory. Open it, get every listener with Listen,
// then Serve to offer them to the agents that start later; Close when the agent stops accepting.
type Dir struct {
	path, name string
	log        logr.Logger

	lock *os.File // held from Open to Serve

	mu sync.Mutex
	// offers holds, per address, a descriptor of its listening socket for the peers, outside Go's
	// poller (a polled descriptor would wake this process for every connection).
	offers map[string]int
	ln     *net.UnixListener
	sock   string
	closed bool
}

// Open joins the directory (created 0700 when missing) and takes its lock, waiting while another
// agent of the directory is starting (at most until ctx ends). name prefixes this agent's socket
// file, for people looking at the directory ("proxy", "node").
func Open(ctx context.Context, path, name string, log logr.Logger) (*Dir, error) {
	if err := os.MkdirAll(path, 0o700); err != nil {
		return nil, fmt.Errorf("handoff directory: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(path, lockName), os.O_CREATE|os.O_RDWR|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("handoff directory: %w", err)
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("locking %s: %w", f.Name(), err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("waiting for the lock %s (another agent is starting): %w", f.Name(), ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return &Dir{path: path, name: name, log: log, lock: f, offers: map[string]int{}}, nil
}

// Source says where a listener came from.
type Source string

// The sources of Listen.
const (
	Bound     Source = "bound"      // no peer had the address: bound here
	TakenOver Source = "taken-over" // a running agent handed its socket over
)

// Socket is the listening socket of one address, held by this agent.
type Socket struct {
	Addr   string
	Source Source
	d      *Dir
	bound  net.Listener // the listener bound here, until Listener hands it out
}

// Listen gets the listening socket of the TCP address addr: a running peer's, else a new one from
// bind. Call it between Open and Serve. The socket is not polled until Listener is called.
func (d *Dir) Listen(ctx context.Context, addr string, bind func(ctx context.Context, addr string) (net.Listener, error)) (*Socket, error) {
	if d.lock == nil {
		return nil, errors.New("handoff: Listen after Serve")
	}
	for _, peer := range d.peers() {
		ok, err := d.takeFrom(peer, addr)
		if err != nil {
			d.log.Info("peer did not hand over its listener", "peer", filepath.Base(peer), "addr", addr, "err", err.Error())
			continue
		}
		if ok {
			return &Socket{Addr: addr, Source: TakenOver, d: d}, nil
		}
	}
	l, err := bind(ctx, addr)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			err = fmt.Errorf("%w: a process that does not share it through %s holds it", err, d.path)
		}
		return nil, err
	}
	tl, ok := l.(*net.TCPListener)
	if !ok {
		l.Close()
		return nil, fmt.Errorf("handoff: %s is not a TCP listener", addr)
	}
	rc, err := tl.SyscallConn()
	if err != nil {
		l.Close()
		return nil, err
	}
	fd := -1
	cerr := rc.Control(func(s uintptr) { fd, err = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) })
	if err = errors.Join(cerr, err); err != nil {
		l.Close()
		return nil, fmt.Errorf("handoff: duplicating the socket of %s: %w", addr, err)
	}
	d.mu.Lock()
	d.offers[addr] = fd
	d.mu.Unlock()
	return &Socket{Addr: addr, Source: Bound, d: d, bound: l}, nil
}

// Listener returns a listener on the socket, polled from now on: the one bound here, or one made
// from the descriptor taken over. Call it when this agent is to accept (see Turn).
func (s *Socket) Listener() (net.Listener, error) {
	if l := s.bound; l != nil {
		s.bound = nil
		return l, nil
	}
	s.d.mu.Lock()
	fd, ok := s.d.offers[s.Addr]
	var nfd int
	var err error
	if ok {
		nfd, err = unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	}
	s.d.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("handoff: the socket of %s is closed", s.Addr)
	}
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(nfd), s.Addr)
	defer f.Close()
	return net.FileListener(f)
}

// Close closes a socket bound here that Listener never handed out.
func (s *Socket) Close() {
	if s.bound != nil {
		s.bound.Close()
		s.bound = nil
	}
}

// Turn waits until it is this agent's turn to accept on addr (at most until ctx ends): one agent
// of the directory at a time holds the address's lock file, the others wait on it holding the
// socket. The turn ends with release, or with the agent's death (the kernel drops the lock).
func (d *Dir) Turn(ctx context.Context, addr string) (release func(), err error) {
	name := "accept-" + strings.NewReplacer(":", "_", "[", "", "]", "", "/", "_").Replace(addr) + ".lock"
	f, err := os.OpenFile(filepath.Join(d.path, name), os.O_CREATE|os.O_RDWR|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("handoff: %w", err)
	}
	fd := int(f.Fd())
	if unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB) == nil {
		return func() { f.Close() }, nil
	}
	got := make(chan error, 1)
	go func() { got <- unix.Flock(fd, unix.LOCK_EX) }() // blocks its thread until the turn comes
	select {
	case err := <-got:
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("handoff: waiting for the turn on %s: %w", addr, err)
		}
		return func() { f.Close() }, nil
	case <-ctx.Done():
		// The lock may still come: give it back then.
		go func() { <-got; f.Close() }()
		return nil, ctx.Err()
	}
}

// peers are the socket files of the directory other than ours, newest first (the agent that
// started last is the least likely to be stopping).
func (d *Dir) peers() []string {
	matches, _ := filepath.Glob(filepath.Join(d.path, "*"+sockSuffix))
	type peer struct {
		path string
		mod  time.Time
	}
	var ps []peer
	for _, m := range matches {
		if m == d.sock {
			continue
		}
		if st, err := os.Stat(m); err == nil {
			ps = append(ps, peer{m, st.ModTime()})
		}
	}
	sort.Slice(ps, func(i, j int) bool { return ps[i].mod.After(ps[j].mod) })
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.path
	}
	return out
}

type request struct {
	Want []string `json:"want"`
}

type answer struct {
	Have []string `json:"have"`
}

// takeFrom asks one peer for addr's socket and keeps it among the offers: false when the peer does
// not have it. A socket file whose agent is gone (connection refused) is removed: the lock makes
// sure no agent is between creating its socket file and listening on it.
func (d *Dir) takeFrom(peer, addr string) (bool, error) {
	c, err := net.DialTimeout("unixpacket", peer, askTimeout)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			_ = os.Remove(peer)
			return false, nil
		}
		return false, err
	}
	defer c.Close()
	uc := c.(*net.UnixConn)
	_ = uc.SetDeadline(time.Now().Add(askTimeout))
	req, _ := json.Marshal(request{Want: []string{addr}})
	if _, err := uc.Write(req); err != nil {
		return false, err
	}
	buf, oob := make([]byte, 4096), make([]byte, unix.CmsgSpace(4*maxFDs))
	n, oobn, _, _, err := uc.ReadMsgUnix(buf, oob)
	if err != nil {
		return false, err
	}
	fds, err := parseRights(oob[:oobn])
	if err != nil {
		return false, err
	}
	defer func() {
		for _, fd := range fds {
			if fd >= 0 {
				unix.Close(fd)
			}
		}
	}()
	var a answer
	if err := json.Unmarshal(buf[:n], &a); err != nil {
		return false, fmt.Errorf("answer: %w", err)
	}
	if len(a.Have) != len(fds) {
		return false, fmt.Errorf("answer names %d addresses but carries %d descriptors", len(a.Have), len(fds))
	}
	for i, have := range a.Have {
		if have != addr {
			continue
		}
		if err := checkListening(fds[i], addr); err != nil {
			return false, err
		}
		d.mu.Lock()
		d.offers[addr] = fds[i]
		d.mu.Unlock()
		fds[i] = -1
		d.log.Info("took over a listening socket", "addr", addr, "from", filepath.Base(peer))
		return true, nil
	}
	return false, nil
}

func parseRights(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("control message: %w", err)
	}
	var out []int
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			unix.CloseOnExec(fd)
			out = append(out, fd)
		}
	}
	return out, nil
}

// checkListening makes sure a received descriptor is a listening TCP socket on addr.
func checkListening(fd int, addr string) error {
	if v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err != nil || v != 1 {
		return fmt.Errorf("descriptor for %s is not a listening socket (%v)", addr, err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return fmt.Errorf("descriptor for %s: %w", addr, err)
	}
	var got *net.TCPAddr
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		got = &net.TCPAddr{IP: net.IP(sa.Addr[:]), Port: sa.Port}
	case *unix.SockaddrInet6:
		got = &net.TCPAddr{IP: net.IP(sa.Addr[:]), Port: sa.Port}
	default:
		return fmt.Errorf("descriptor for %s is not a TCP socket", addr)
	}
	if !sameAddr(got, addr) {
		return fmt.Errorf("descriptor for %s listens on %s", addr, got)
	}
	return nil
}

// sameAddr compares a listener's address with the one asked for (IPs compared as addresses).
func sameAddr(got net.Addr, want string) bool {
	ta, ok := got.(*net.TCPAddr)
	if !ok {
		return false
	}
	host, port, err := net.SplitHostPort(want)
	if err != nil || port != fmt.Sprint(ta.Port) {
		return false
	}
	if host == "" {
		return ta.IP.IsUnspecified()
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.Equal(ta.IP)
}

// Serve offers this agent's listeners to the agents that start later, from a socket file of its
// own, and releases the directory's lock.
func (d *Dir) Serve() error {
	if d.lock == nil {
		return errors.New("handoff: Serve called twice")
	}
	defer func() {
		_ = unix.Flock(int(d.lock.Fd()), unix.LOCK_UN)
		d.lock.Close()
		d.lock = nil
	}()
	var suffix [6]byte
	_, _ = rand.Read(suffix[:])
	sock := filepath.Join(d.path, d.name+"-"+hex.EncodeToString(suffix[:])+sockSuffix)
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: sock, Net: "unixpacket"})
	if err != nil {
		return fmt.Errorf("handoff socket: %w", err)
	}
	if err := os.Chmod(sock, 0o600); err != nil {
		ln.Close()
		return err
	}
	ln.SetUnlinkOnClose(true)
	d.mu.Lock()
	d.ln, d.sock = ln, sock
	d.mu.Unlock()
	go d.serve(ln)
	return nil
}

func (d *Dir) serve(ln *net.UnixListener) {
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			return // closed
		}
		go func() {
			defer c.Close()
			if err := d.answer(c); err != nil {
				d.log.Info("handing over listeners failed", "err", err.Error())
			}
		}()
	}
}

func (d *Dir) answer(c *net.UnixConn) error {
	_ = c.SetDeadline(time.Now().Add(askTimeout))
	buf := make([]byte, 4096)
	n, err := c.Read(buf)
	if err != nil {
		return err
	}
	var req request
	if err := json.Unmarshal(buf[:n], &req); err != nil {
		return fmt.Errorf("request: %w", err)
	}
	var a answer
	var fds []int
	d.mu.Lock()
	if !d.closed {
		for _, addr := range req.Want {
			if fd, ok := d.offers[addr]; ok && len(fds) < maxFDs {
				a.Have = append(a.Have, addr)
				fds = append(fds, fd)
			}
		}
	}
	b, _ := json.Marshal(a)
	// Sent under the lock: Close must not close a descriptor that is being sent.
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	_, _, err = c.WriteMsgUnix(b, oob, nil)
	d.mu.Unlock()
	if err == nil && len(a.Have) > 0 {
		d.log.Info("handed over listening sockets", "addrs", strings.Join(a.Have, ","))
	}
	return err
}

// Close stops offering this agent's listeners and removes its socket file. Call it when the agent
// stops accepting, before it closes its listeners: a descriptor kept for peers would otherwise hold
// a socket open that nobody accepts on any more. The listeners themselves are the caller's.
func (d *Dir) Close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return
	}
	d.closed = true
	if d.ln != nil {
		d.ln.Close()
	}
	for _, fd := range d.offers {
		unix.Close(fd)
	}
	d.offers = nil
	if d.lock != nil {
		_ = unix.Flock(int(d.lock.Fd()), unix.LOCK_UN)
		d.lock.Close()
		d.lock = nil
	}
}
