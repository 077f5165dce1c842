package tunnel

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// RelayOptions tunes Relay. The zero value relays until both sides are done.
type RelayOptions struct {
	// IdleTimeout closes the tunnel when no byte moved in either direction for that long. Zero
	// disables it (long watches may be silent for minutes: keep it generous).
	IdleTimeout time.Duration
	// Progress, when set, is called after each chunk relayed, from the relaying goroutines.
	Progress func(aToB bool, n int64)
}

// RelayResult is what Relay moved and why it stopped.
type RelayResult struct {
	AToB, BToA int64
	// Err is the first failure of either direction; nil when both sides ended with EOF.
	Err error
	// Idle is true when the idle timeout closed the tunnel.
	Idle bool
}

// Relay copies a→b and b→a until both directions reach EOF, then closes both connections.
// An EOF in one direction is passed on as a half-close (CloseWrite) of the other side, so TLS
// close_notify and one-sided streams work. A failure in either direction aborts both.
//
// Idle tunnels are cheap: between chunks a direction parks on the poller without holding a buffer,
// and TCP-to-TCP chunks move with splice(2) through the runtime's pooled pipes.
func Relay(a, b net.Conn, opts RelayOptions) RelayResult {
	r := &relay{a: a, b: b, opts: opts}
	r.last.Store(time.Now().UnixNano())
	var wg sync.WaitGroup
	wg.Add(1)
	var bToA int64
	var errBA error
	go func() {
		defer wg.Done()
		bToA, errBA = r.half(a, b, false)
	}()
	aToB, errAB := r.half(b, a, true)
	wg.Wait()
	a.Close()
	b.Close()
	res := RelayResult{AToB: aToB, BToA: bToA, Idle: r.idle.Load()}
	if !res.Idle {
		if e := r.firstErr.Load(); e != nil {
			res.Err = *e
		}
	}
	_ = errAB
	_ = errBA
	return res
}

type relay struct {
	a, b     net.Conn
	opts     RelayOptions
	last     atomic.Int64 // unix nanos of the last chunk, either direction
	idle     atomic.Bool
	aborted  atomic.Bool
	firstErr atomic.Pointer[error]
}

// abort records err (unless the tunnel is already being torn down) and closes both sides so the
// other direction returns too.
func (r *relay) abort(err error) {
	if r.aborted.Swap(true) {
		return
	}
	if err != nil {
		r.firstErr.Store(&err)
	}
	r.a.Close()
	r.b.Close()
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// half copies src to dst until EOF (then half-closes dst) or failure (then aborts the tunnel).
func (r *relay) half(dst, src net.Conn, aToB bool) (int64, error) {
	var total int64
	count := func(n int64) {
		if n <= 0 {
			return
		}
		total += n
		r.last.Store(time.Now().UnixNano())
		if r.opts.Progress != nil {
			r.opts.Progress(aToB, n)
		}
	}
	if bc, ok := src.(*bufferedConn); ok {
		// Bytes that arrived with the CONNECT response go first.
		if len(bc.buf) > 0 {
			n, err := unwrap(dst).Write(bc.buf)
			count(int64(n))
			bc.buf = nil
			if err != nil {
				r.abort(err)
				return total, err
			}
		}
	}
	err := r.copy(unwrap(dst), unwrap(src), count)
	if err != nil {
		r.abort(err)
		return total, err
	}
	if cwErr := closeWrite(unwrap(dst)); cwErr != nil {
		// No half-close on this kind of connection: the peer only learns about EOF by a full close.
		r.abort(nil)
	}
	return total, nil
}

func unwrap(c net.Conn) net.Conn {
	if bc, ok := c.(*bufferedConn); ok {
		return bc.Conn
	}
	return c
}

// copy moves bytes until src says EOF (nil) or fails.
func (r *relay) copy(dst, src net.Conn, count func(int64)) error {
	sc, ok := src.(syscall.Conn)
	if !ok {
		return r.copyBuffered(dst, src, count)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return r.copyBuffered(dst, src, count)
	}
	if r.opts.IdleTimeout > 0 {
		_ = src.SetReadDeadline(time.Unix(0, r.last.Load()).Add(r.opts.IdleTimeout))
	}
	for {
		avail, eof, err := waitReadable(rc)
		if err != nil {
			if r.stillBusy(src, err) {
				continue
			}
			return err
		}
		if eof {
			return nil
		}
		var n int64
		if avail > 0 {
			// Exactly what is queued: the copy never blocks on src, so nothing is held once it
			// is drained. TCP to TCP, the runtime splices through a pooled pipe.
			n, err = io.Copy(dst, &io.LimitedReader{R: src, N: int64(avail)})
		} else {
			// Could not learn the queue length: one buffered read.
			bp := bufPool.Get().(*[]byte)
			var m int
			m, err = src.Read(*bp)
			if m > 0 {
				var w int
				w, err2 := dst.Write((*bp)[:m])
				n = int64(w)
				if err2 != nil {
					err = err2
				}
			} else if err == io.EOF {
				err = nil
				bufPool.Put(bp)
				return nil
			}
			bufPool.Put(bp)
		}
		count(n)
		if err != nil {
			if r.stillBusy(src, err) {
				continue // nothing was lost: unread bytes are still queued in src
			}
			return err
		}
	}
}

// stillBusy handles the idle deadline expiring on src: when a byte moved (either way) within the
// idle timeout it pushes the deadline on and says so; when the tunnel really is idle it closes it.
// The deadline is only set lazily like this, not per chunk, to keep busy tunnels cheap.
func (r *relay) stillBusy(src net.Conn, err error) bool {
	if r.opts.IdleTimeout <= 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		return false
	}
	next := time.Unix(0, r.last.Load()).Add(r.opts.IdleTimeout)
	if time.Until(next) > 0 {
		_ = src.SetReadDeadline(next)
		return true
	}
	r.idle.Store(true)
	r.abort(nil)
	return false
}

// waitReadable parks until src has bytes queued (avail > 0), reached EOF, or failed, without a
// buffer. avail is -1 when the kernel did not tell the queue length.
func waitReadable(rc syscall.RawConn) (avail int, eof bool, err error) {
	var probeErr error
	err = rc.Read(func(fd uintptr) bool {
		n, ierr := unix.IoctlGetInt(int(fd), unix.SIOCINQ)
		if ierr != nil {
			avail = -1
			return true
		}
		if n > 0 {
			avail = n
			return true
		}
		// Nothing queued: EOF, a pending error, or simply no data yet (wait).
		var one [1]byte
		m, _, rerr := unix.Recvfrom(int(fd), one[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		switch {
		case rerr == unix.EAGAIN || rerr == unix.EINTR:
			return false
		case rerr != nil:
			probeErr = os.NewSyscallError("recvfrom", rerr)
			return true
		case m == 0:
			eof = true
			return true
		default:
			avail = m
			return true
		}
	})
	if err == nil {
		err = probeErr
	}
	return avail, eof, err
}

func (r *relay) copyBuffered(dst, src net.Conn, count func(int64)) error {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	if r.opts.IdleTimeout <= 0 {
		n, err := io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, *bp)
		count(n)
		return err
	}
	_ = src.SetReadDeadline(time.Unix(0, r.last.Load()).Add(r.opts.IdleTimeout))
	for {
		n, err := src.Read(*bp)
		if n > 0 {
			w, werr := dst.Write((*bp)[:n])
			count(int64(w))
			if werr != nil {
				return werr
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			if r.stillBusy(src, err) {
				continue
			}
			return err
		}
	}
}
