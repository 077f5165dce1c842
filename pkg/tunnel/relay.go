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

	"github.com/apiproxy/apiproxy/pkg/gopool"
)

// RelayOptions tunes Relay. The zero value relays until both sides are done.
type RelayOptions struct {
	// IdleTimeout closes the tunnel when no byte moved in either direction for that long. Zero
	// disables it (long watches may be silent for minutes: keep it generous).
	IdleTimeout time.Duration
	// Progress, when set, is called after each chunk relayed, from the relaying goroutines.
	Progress func(aToB bool, n int64)
	// ParkIdle lets idle TCP directions wait on a shared epoll instance instead of a goroutine each,
	// which makes an idle tunnel much smaller. It is ignored when IdleTimeout is set. With it, the
	// connections must not be closed directly while the tunnel runs: use Tunnel.Close.
	ParkIdle bool
}

// RelayResult is what Relay moved and why it stopped.
type RelayResult struct {
	AToB, BToA int64
	// Err is the first failure of either direction; nil when both sides ended with EOF.
	Err error
	// Idle is true when the idle timeout closed the tunnel.
	Idle bool
	// Closed is true when Tunnel.Close cut it.
	Closed bool
}

// Relay copies a→b and b→a until both directions reach EOF, then closes both connections.
// An EOF in one direction is passed on as a half-close (CloseWrite) of the other side, so TLS
// close_notify and one-sided streams work. A failure in either direction aborts both.
//
// Idle tunnels are cheap: between chunks a direction waits without holding a buffer (on a small,
// fresh goroutine; with ParkIdle on no goroutine at all), and TCP-to-TCP chunks move with splice(2)
// through the runtime's pooled pipes.
func Relay(a, b net.Conn, opts RelayOptions) RelayResult {
	ch := make(chan RelayResult, 1)
	Start(a, b, opts, func(r RelayResult) { ch <- r })
	return <-ch
}

// Start is Relay without waiting: it returns at once and calls done (on a relay goroutine) when
// the tunnel is over. A server's handshake goroutine can thus end before the tunnel does, and the
// deeper stack that parsing and dialing grew is not kept by an idle tunnel.
func Start(a, b net.Conn, opts RelayOptions, done func(RelayResult)) *Tunnel {
	t := NewTunnel(a, b, opts, done)
	gopool.Go(t.r.dirs[1].run)
	gopool.Go(t.r.dirs[0].run)
	return t
}

// NewTunnel prepares a relay between a and b without starting it; Run starts it. Having the
// Tunnel before it runs lets a server record it (for Close) without a race against its end.
func NewTunnel(a, b net.Conn, opts RelayOptions, done func(RelayResult)) *Tunnel {
	if opts.IdleTimeout > 0 {
		opts.ParkIdle = false // deadlines need a goroutine waiting
	}
	r := &relay{a: a, b: b, opts: opts, done: done}
	r.last.Store(time.Now().UnixNano())
	r.pending.Store(2)
	r.dirs[0] = &direction{r: r, dst: unwrap(a), src: unwrap(b), orig: b, watchSlot: -1}
	r.dirs[1] = &direction{r: r, dst: unwrap(b), src: unwrap(a), orig: a, aToB: true, watchSlot: -1}
	return &Tunnel{r: r}
}

// Run starts b→a on a new goroutine and relays a→b on the caller's until that direction first goes
// quiet (it then parks or moves to a fresh goroutine) or ends. It saves a goroutine (and the
// growth of its stack) per tunnel. The end of the tunnel is reported through done. Call it once.
func (t *Tunnel) Run() {
	gopool.Go(t.r.dirs[0].run)
	t.r.dirs[1].run()
}

// Tunnel is a relay between two connections (see NewTunnel, Start).
type Tunnel struct{ r *relay }

// Close aborts the tunnel: both connections are closed and done is called once both directions
// have stopped.
func (t *Tunnel) Close() error {
	t.r.closed.Store(true)
	t.r.abort(nil)
	return nil
}

// direction is one way of a tunnel.
type direction struct {
	r        *relay
	dst, src net.Conn // unwrapped
	orig     net.Conn // src as given, maybe with bytes already read
	rc       syscall.RawConn
	aToB     bool
	total    int64
	fd       int  // src's descriptor, for parking (valid until the tunnel closes)
	parked   bool // guarded by idle.mu

	watchSlot int    // index in quiet.active, -1 when not watched; guarded by quiet.mu
	watchTick uint64 // quiet.tick when the watch began; guarded by quiet.mu
}

func (d *direction) run() {
	r := d.r
	if bc, ok := d.orig.(*bufferedConn); ok && len(bc.buf) > 0 {
		// Bytes that arrived with the CONNECT response go first.
		n, err := d.dst.Write(bc.buf)
		d.count(int64(n))
		bc.buf = nil
		if err != nil {
			d.finish(err)
			return
		}
	}
	if sc, ok := d.src.(syscall.Conn); ok && canProbe {
		if rc, err := sc.SyscallConn(); err == nil {
			d.rc = rc
			if r.opts.ParkIdle {
				d.fd = -1
				_ = rc.Control(func(fd uintptr) { d.fd = int(fd) })
			}
			if r.opts.IdleTimeout > 0 {
				_ = d.src.SetReadDeadline(time.Unix(0, r.last.Load()).Add(r.opts.IdleTimeout))
			}
			d.loop()
			return
		}
	}
	d.finish(r.copyBuffered(d.dst, d.src, d.count))
}

func (d *direction) count(n int64) {
	if n <= 0 {
		return
	}
	d.total += n
	d.r.last.Store(time.Now().UnixNano())
	if d.r.opts.Progress != nil {
		d.r.opts.Progress(d.aToB, n)
	}
}

// parkAfter is how long a direction may stay quiet before it parks on the shared epoll (it parks
// after between parkAfter/2 and parkAfter, see quietWatch): short enough that a burst of new
// tunnels does not pile up goroutines (their stacks stay in the process's RSS), long enough that
// busy tunnels (request/response ping-pong, bulk) stay on the runtime poller, which is faster to
// wake.
const parkAfter = 25 * time.Millisecond

// loop moves bytes until src ends or fails. With ParkIdle (see streamThenPark) or else waiting on
// a goroutine: then it goes on in a fresh goroutine after each burst, since copying may have grown
// this one's stack and the runtime only shrinks stacks at GC time: an idle direction should wait
// on the smallest stack there is.
func (d *direction) loop() {
	if d.r.opts.ParkIdle && d.fd >= 0 {
		d.streamThenPark()
		return
	}
	drained := false // src was emptied by the last burst
	for {
		avail, eof, err := probe(d.rc, true, drained)
		if err != nil {
			if d.r.stillBusy(d.src, err) {
				continue
			}
			d.finish(err)
			return
		}
		if eof {
			d.finish(nil)
			return
		}
		n, err := d.burst(avail)
		d.count(n)
		drained = err == nil && avail > 0 && n == int64(avail)
		if err != nil {
			// A deadline cut the burst short: unread bytes are still queued in src, nothing is lost.
			if d.r.stillBusy(d.src, err) {
				continue
			}
			d.finish(err)
			return
		}
		go d.loop()
		return
	}
}

// streamThenPark copies like io.Copy (TCP to TCP: splice(2), as fast as a plain relay) while
// quietWatch checks every parkAfter whether bytes still move; after a period without a byte it
// parks the direction on the shared epoll: its goroutine, stack and splice pipe are released, and
// a new goroutine takes over when src is readable again. So a busy tunnel never parks, and an idle
// one holds no goroutine at all.
func (d *direction) streamThenPark() {
	watched := true
	for {
		if watched {
			quiet.watch(d)
		}
		n, err := io.Copy(d.dst, d.src)
		d.count(n)
		if watched {
			quiet.unwatch(d)
		}
		switch {
		case err == nil: // EOF
			d.finish(nil)
			return
		case watched && errors.Is(err, os.ErrDeadlineExceeded):
			// quietWatch interrupted the copy; no tick touches the deadline after unwatch.
			_ = d.src.SetReadDeadline(time.Time{})
			if n > 0 {
				continue // still busy
			}
			// Quiet for a whole period. Bytes read before the interruption were all written:
			// nothing is lost by parking.
			if idle.park(d) {
				return
			}
			// The tunnel is closing: keep reading here, unwatched, to see it.
			watched = false
		default:
			d.finish(err)
			return
		}
	}
}

// burst moves avail queued bytes (or, when the queue length is unknown, one read's worth).
func (d *direction) burst(avail int) (int64, error) {
	if avail > 0 {
		// Exactly what is queued: the copy never blocks on src, so nothing is held once it is
		// drained. TCP to TCP, the runtime splices through a pooled pipe.
		return io.Copy(d.dst, &io.LimitedReader{R: d.src, N: int64(avail)})
	}
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	m, err := d.src.Read(*bp)
	if m == 0 {
		if err == io.EOF {
			err = errEOFInBurst
		}
		return 0, err
	}
	w, werr := d.dst.Write((*bp)[:m])
	return int64(w), werr
}

// errEOFInBurst: src reached EOF where the probe expected data; waitReadable reports it next time.
var errEOFInBurst = errors.New("eof")

// finish ends a direction: on EOF it half-closes dst, on failure it aborts the tunnel. The last
// direction to finish closes both connections and reports.
func (d *direction) finish(err error) {
	r := d.r
	if errors.Is(err, errEOFInBurst) {
		err = nil
	}
	if err != nil {
		r.abort(err)
	} else if r.pending.Load() == 1 {
		// The other direction already ended with EOF (it decremented pending first), so dst's
		// receive queue is read to its end and the Close below sends dst's peer a FIN just as a
		// shutdown(SHUT_WR) would: skip that syscall. strace -c over 3000 tunnels: shutdown calls
		// 6002 → 3030. With the listener keepalive change (pkg/proxy listenConfig), `go run
		// ./test/bench -measure setups -rounds 5 -compare HEAD~1` gave agent CPU per setup 93 → 87
		// µs (CONNECT) and 81 → 79 µs (transparent); later runs put it within the ±5% noise.
	} else if cwErr := closeWrite(d.dst); cwErr != nil {
		// No half-close on this kind of connection: the peer only learns about EOF by a full close.
		r.abort(nil)
	}
	if d.aToB {
		r.aToB = d.total
	} else {
		r.bToA = d.total
	}
	if r.pending.Add(-1) != 0 {
		return
	}
	// Last direction out: both counters are final (the atomic orders the other's write before).
	r.a.Close()
	r.b.Close()
	res := RelayResult{AToB: r.aToB, BToA: r.bToA, Idle: r.idle.Load(), Closed: r.closed.Load()}
	if !res.Idle && !res.Closed {
		if e := r.firstErr.Load(); e != nil {
			res.Err = *e
		}
	}
	if r.done != nil {
		r.done(res)
	}
}

type relay struct {
	a, b       net.Conn
	opts       RelayOptions
	done       func(RelayResult)
	pending    atomic.Int32
	aToB, bToA int64
	last       atomic.Int64 // unix nanos of the last chunk, either direction
	idle       atomic.Bool
	closed     atomic.Bool
	aborted    atomic.Bool
	firstErr   atomic.Pointer[error]

	dirs    [2]*direction // b→a, a→b; set before the directions start
	closing bool          // guarded by idle.mu
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
	if r.opts.ParkIdle {
		idle.closeTunnel(r)
		return
	}
	r.a.Close()
	r.b.Close()
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func unwrap(c net.Conn) net.Conn {
	if bc, ok := c.(*bufferedConn); ok {
		return bc.Conn
	}
	return c
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
