// Package logbatch batches log lines into fewer write(2) calls.
//
// `agent proxy` logs one line per tunnel. Written one by one, each line is a write to stderr, which
// in a pod is a pipe that wakes the container runtime's log reader every time. Batched, a busy proxy
// writes once per Delay whatever accumulated. Measured with 10,000 one-byte echo tunnels through
// `agent proxy --listen-tcp` (8 clients): 132 → 122 µs of agent CPU per tunnel.
package logbatch

import (
	"io"
	"sync"
	"time"
)

// MaxBuffered is how much a Writer holds before it writes at once, without waiting for Delay.
const MaxBuffered = 64 << 10

// Writer collects whole lines and writes them to the underlying writer at most Delay after the
// first of them arrived. Call Flush before the process exits.
type Writer struct {
	w     io.Writer
	delay time.Duration

	mu    sync.Mutex
	buf   []byte
	timer *time.Timer // armed while buf holds lines
	err   error       // the last failed write, reported by Flush
}

// New returns a Writer that writes to w at most delay after a line arrived.
func New(w io.Writer, delay time.Duration) *Writer {
	b := &Writer{w: w, delay: delay}
	b.timer = time.AfterFunc(time.Hour, func() { _ = b.Flush() })
	b.timer.Stop()
	return b
}

// Write buffers p, which should be whole lines: a batch is written as a whole, so lines from
// different callers are never interleaved. It never fails; a failed write is reported by Flush.
func (b *Writer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.buf) == 0 {
		b.timer.Reset(b.delay)
	}
	b.buf = append(b.buf, p...)
	if len(b.buf) >= MaxBuffered {
		b.flushLocked()
	}
	return len(p), nil
}

// Flush writes what is buffered now, and returns the last write error since the previous Flush.
func (b *Writer) Flush() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.flushLocked()
	err := b.err
	b.err = nil
	return err
}

func (b *Writer) flushLocked() {
	if len(b.buf) == 0 {
		return
	}
	b.timer.Stop()
	if _, err := b.w.Write(b.buf); err != nil {
		b.err = err
	}
	if cap(b.buf) > 4*MaxBuffered {
		b.buf = nil // a burst grew it: don't keep the memory
	} else {
		b.buf = b.buf[:0]
	}
}
