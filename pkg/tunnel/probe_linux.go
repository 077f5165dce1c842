package tunnel

import (
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// canProbe: Linux tells a socket's queue length (SIOCINQ), which lets an idle direction wait
// without a buffer.
const canProbe = true

// probe tells, without a buffer, whether src has bytes queued (avail > 0), reached EOF, or failed.
// With wait, it parks the goroutine on the runtime poller until one of these holds; without, avail
// 0 means nothing yet. avail is -1 when the kernel did not tell the queue length.
//
// With skipFirst the first look is skipped and the goroutine waits for the poller's next readiness
// report at once: right after src was drained (one syscall saved per message). Not safe when bytes
// may have been left queued after the last report, because such bytes raise no new report.
func probe(rc syscall.RawConn, wait, skipFirst bool) (avail int, eof bool, err error) {
	var probeErr error
	err = rc.Read(func(fd uintptr) bool {
		if skipFirst {
			skipFirst = false
			return false
		}
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
			return !wait
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
