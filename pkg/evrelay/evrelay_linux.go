// Package evrelay is the event-loop relay experiment of issue 25: tunnels served by a few event
// loops (one per GOMAXPROCS, each an epoll instance over the tunnels' raw non-blocking sockets)
// instead of goroutines. It exists to be measured against the goroutine relay (pkg/tunnel) and is
// meant to be deleted whole if it does not win.
package evrelay

import (
	"errors"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/apiproxy/apiproxy/pkg/tunnel"
)

// Supported says whether this platform has event loops (Linux: epoll).
const Supported = true

// Tunnel is a relay between two TCP connections served by an event loop.
type Tunnel struct {
	l    *loop
	fds  [2]int // side 0 = a, side 1 = b; owned by the loop once Run is called
	opts tunnel.RelayOptions
	done func(tunnel.RelayResult)

	// Guarded by l.mu. Direction s reads fds[s] and writes fds[1-s] (s=0: a→b).
	pend     [2][]byte // bytes read but not yet written
	eof      [2]bool
	total    [2]int64
	interest [2]uint32
	last     int64 // unix nanos of the last byte moved
	over     bool
	started  bool
	closeReq bool
}

// New takes over a and b: their descriptors are duplicated out of the Go runtime's poller and the
// net.Conns closed, so that only the event loop sees their readiness. It fails (leaving a and b
// untouched) when they are not plain TCP connections; the caller then uses pkg/tunnel.
func New(a, b net.Conn, opts tunnel.RelayOptions, done func(tunnel.RelayResult)) (*Tunnel, error) {
	fa, err := dupFD(a)
	if err != nil {
		return nil, err
	}
	fb, err := dupFD(b)
	if err != nil {
		unix.Close(fa)
		return nil, err
	}
	a.Close()
	b.Close()
	return &Tunnel{l: pick(), fds: [2]int{fa, fb}, opts: opts, done: done, last: time.Now().UnixNano()}, nil
}

func dupFD(c net.Conn) (int, error) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return -1, errors.New("evrelay: not a TCP connection")
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var derr error
	if err := rc.Control(func(s uintptr) {
		// F_DUPFD shares the open file description, so the copy is non-blocking too.
		fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return -1, err
	}
	return fd, derr
}

// Run hands the tunnel to an event loop and returns at once; done is called from the loop.
func (t *Tunnel) Run() {
	l := t.l
	l.mu.Lock()
	defer l.unlockAndReport(false)
	t.started = true
	if t.closeReq {
		t.finish(nil, false, true)
		return
	}
	for s := range 2 {
		l.byFD[int32(t.fds[s])] = t
	}
	for s := range 2 {
		t.interest[s] = unix.EPOLLIN | unix.EPOLLRDHUP
		ev := unix.EpollEvent{Events: t.interest[s], Fd: int32(t.fds[s])}
		if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, t.fds[s], &ev); err != nil {
			t.finish(err, false, false)
			return
		}
	}
}

// Close aborts the tunnel (drain on shutdown); done is called with Closed set.
func (t *Tunnel) Close() error {
	l := t.l
	l.mu.Lock()
	// The caller may hold locks that done takes (the server's, in Shutdown): report elsewhere.
	defer l.unlockAndReport(true)
	if !t.started {
		t.closeReq = true // Run finishes it
		return nil
	}
	if !t.over {
		t.finish(nil, false, true)
	}
	return nil
}

type loop struct {
	epfd    int
	mu      sync.Mutex
	byFD    map[int32]*Tunnel
	buf     []byte
	reports []func() // done callbacks of finished tunnels, run once mu is released
}

// unlockAndReport releases l.mu, then calls the finished tunnels' done (which takes the server's
// locks: never under l.mu), on a new goroutine when async.
func (l *loop) unlockAndReport(async bool) {
	r := l.reports
	l.reports = nil
	l.mu.Unlock()
	if len(r) == 0 {
		return
	}
	run := func() {
		for _, f := range r {
			f()
		}
	}
	if async {
		go run()
	} else {
		run()
	}
}

var (
	loopsOnce sync.Once
	loops     []*loop
	next      atomic.Uint32
)

func pick() *loop {
	loopsOnce.Do(func() {
		for range runtime.GOMAXPROCS(0) {
			epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
			if err != nil {
				panic("evrelay: epoll_create1: " + err.Error())
			}
			l := &loop{epfd: epfd, byFD: map[int32]*Tunnel{}, buf: make([]byte, 64<<10)}
			loops = append(loops, l)
			go l.run()
		}
	})
	return loops[int(next.Add(1))%len(loops)]
}

func (l *loop) run() {
	// The loop blocks in epoll_wait; a thread of its own keeps it from migrating between Ms.
	runtime.LockOSThread()
	events := make([]unix.EpollEvent, 256)
	lastScan := time.Now()
	for {
		n, err := unix.EpollWait(l.epfd, events, 1000)
		if err != nil && err != unix.EINTR {
			panic("evrelay: epoll_wait: " + err.Error())
		}
		l.mu.Lock()
		for _, ev := range events[:max(n, 0)] {
			if t := l.byFD[ev.Fd]; t != nil {
				side := 0
				if int32(t.fds[1]) == ev.Fd {
					side = 1
				}
				t.handle(side, ev.Events)
			}
		}
		if now := time.Now(); now.Sub(lastScan) >= time.Second {
			lastScan = now
			l.scanIdle(now)
		}
		l.unlockAndReport(false)
	}
}

func (l *loop) scanIdle(now time.Time) {
	for fd, t := range l.byFD {
		if int32(t.fds[0]) != fd || t.opts.IdleTimeout <= 0 {
			continue
		}
		if now.Sub(time.Unix(0, t.last)) >= t.opts.IdleTimeout {
			t.finish(nil, true, false)
		}
	}
}

// handle serves readiness of side's socket: it is the source of direction side and the
// destination of direction 1-side. l.mu is held.
func (t *Tunnel) handle(side int, events uint32) {
	if t.over {
		return
	}
	if events&unix.EPOLLOUT != 0 && len(t.pend[1-side]) > 0 {
		if !t.flush(1 - side) {
			return
		}
	}
	if events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 && !t.eof[side] && len(t.pend[side]) == 0 {
		if !t.pump(side) {
			return
		}
	} else if events&unix.EPOLLERR != 0 {
		if e, _ := unix.GetsockoptInt(t.fds[side], unix.SOL_SOCKET, unix.SO_ERROR); e != 0 {
			t.finish(unix.Errno(e), false, false)
			return
		}
	}
	if t.eof[0] && t.eof[1] {
		t.finish(nil, false, false)
		return
	}
	t.update()
}

// pump reads direction d's source and writes what it got to its destination, until the source
// has nothing more queued, the destination is full (the rest waits in pend) or the source ended.
// It returns false when the tunnel is over.
func (t *Tunnel) pump(d int) bool {
	buf := t.l.buf
	for range 4 { // bounded, so one busy tunnel cannot starve the loop's others
		n, err := unix.Read(t.fds[d], buf)
		switch {
		case err == unix.EAGAIN:
			return true
		case err == unix.EINTR:
			continue
		case err != nil:
			t.finish(err, false, false)
			return false
		case n == 0:
			t.eof[d] = true
			if t.eof[1-d] {
				return true // both ended: finish closes both, a FIN each
			}
			if err := unix.Shutdown(t.fds[1-d], unix.SHUT_WR); err != nil {
				t.finish(err, false, false)
				return false
			}
			return true
		}
		w, err := unix.Write(t.fds[1-d], buf[:n])
		if err != nil && err != unix.EAGAIN {
			t.finish(err, false, false)
			return false
		}
		w = max(w, 0)
		t.moved(d, w)
		if w < n {
			t.pend[d] = append([]byte(nil), buf[w:n]...)
			return true
		}
		if n < len(buf) {
			return true // drained
		}
	}
	return true
}

// flush writes direction d's pending bytes; false when the tunnel is over.
func (t *Tunnel) flush(d int) bool {
	w, err := unix.Write(t.fds[1-d], t.pend[d])
	if err != nil && err != unix.EAGAIN {
		t.finish(err, false, false)
		return false
	}
	w = max(w, 0)
	t.moved(d, w)
	t.pend[d] = t.pend[d][w:]
	if len(t.pend[d]) == 0 {
		t.pend[d] = nil
	}
	return true
}

func (t *Tunnel) moved(d, n int) {
	if n <= 0 {
		return
	}
	t.total[d] += int64(n)
	t.last = time.Now().UnixNano()
	if t.opts.Progress != nil {
		t.opts.Progress(d == 0, int64(n))
	}
}

// update sets each socket's epoll interest: read while its direction runs and has nothing
// pending, write while the other direction has bytes pending for it.
func (t *Tunnel) update() {
	for s := range 2 {
		var want uint32
		if !t.eof[s] && len(t.pend[s]) == 0 {
			want |= unix.EPOLLIN | unix.EPOLLRDHUP
		}
		if len(t.pend[1-s]) > 0 {
			want |= unix.EPOLLOUT
		}
		if want != t.interest[s] {
			t.interest[s] = want
			ev := unix.EpollEvent{Events: want, Fd: int32(t.fds[s])}
			_ = unix.EpollCtl(t.l.epfd, unix.EPOLL_CTL_MOD, t.fds[s], &ev)
		}
	}
}

// finish closes both sockets (closing the only descriptor also leaves epoll) and reports.
// l.mu is held.
func (t *Tunnel) finish(err error, idle, closed bool) {
	if t.over {
		return
	}
	t.over = true
	for s := range 2 {
		if t.started {
			delete(t.l.byFD, int32(t.fds[s]))
		}
		unix.Close(t.fds[s])
	}
	res := tunnel.RelayResult{AToB: t.total[0], BToA: t.total[1], Idle: idle, Closed: closed}
	if !idle && !closed {
		res.Err = err
	}
	if t.done != nil {
		t.l.reports = append(t.l.reports, func() { t.done(res) })
	}
}
