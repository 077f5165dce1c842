// Idle directions park on epoll, which only Linux has; park_other.go is the fallback.

package tunnel

import (
	"sync"

	"golang.org/x/sys/unix"

	"github.com/apiproxy/apiproxy/pkg/gopool"
)

// parker watches the sockets of idle tunnel directions on one epoll instance of its own, so that an
// idle direction costs no goroutine at all (a goroutine is at least a 2 KiB stack plus its g).
// When a parked socket becomes readable, hangs up or fails, the direction resumes on a new
// goroutine. The sockets stay registered with the Go runtime's poller as well; readiness seen there
// with nobody waiting is harmless.
type parker struct {
	once    sync.Once
	epfd    int
	initErr error

	mu      sync.Mutex
	waiting map[int32]*direction
}

var idle parker

func (p *parker) start() error {
	p.once.Do(func() {
		p.epfd, p.initErr = unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if p.initErr != nil {
			return
		}
		p.waiting = map[int32]*direction{}
		go p.loop()
	})
	return p.initErr
}

// park registers d's source socket. It returns false when d must wait on its own goroutine instead
// (no epoll, or the tunnel is being torn down: the caller then sees the closed connection).
func (p *parker) park(d *direction) bool {
	if p.start() != nil {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	// Checked under p.mu, which abort also takes before closing: a socket is never registered
	// after its tunnel started closing, so a closed (and reused) descriptor is never watched.
	if d.r.closing {
		return false
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: int32(d.fd)}
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, d.fd, &ev); err != nil {
		return false
	}
	p.waiting[int32(d.fd)] = d
	d.parked = true
	return true
}

func (p *parker) loop() {
	events := make([]unix.EpollEvent, 256)
	for {
		n, err := unix.EpollWait(p.epfd, events, -1)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			return
		}
		p.mu.Lock()
		for _, ev := range events[:n] {
			if d := p.waiting[ev.Fd]; d != nil {
				p.resumeLocked(d)
			}
		}
		p.mu.Unlock()
	}
}

// resumeLocked unregisters d and runs it again. p.mu is held.
func (p *parker) resumeLocked(d *direction) {
	delete(p.waiting, int32(d.fd))
	_ = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, d.fd, nil)
	d.parked = false
	gopool.Go(d.loop)
}

// closeTunnel marks r as closing, unregisters its parked directions (before the descriptors are
// closed and can be reused), closes both connections, and lets the directions see it.
func (p *parker) closeTunnel(r *relay) {
	p.mu.Lock()
	r.closing = true
	var resume []*direction
	for _, d := range r.dirs {
		if d != nil && d.parked {
			delete(p.waiting, int32(d.fd))
			_ = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, d.fd, nil)
			d.parked = false
			resume = append(resume, d)
		}
	}
	p.mu.Unlock()
	r.a.Close()
	r.b.Close()
	for _, d := range resume {
		gopool.Go(d.loop)
	}
}
