package logbatch

import (
	"bytes"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

// recorder counts the writes it receives.
type recorder struct {
	mu     sync.Mutex
	writes []string
	err    error
}

func (r *recorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.writes = append(r.writes, string(p))
	return len(p), r.err
}

func (r *recorder) get() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.writes...)
}

func TestLinesAreBatchedUntilFlush(t *testing.T) {
	r := &recorder{}
	b := New(r, time.Hour)
	for _, l := range []string{"a\n", "b\n", "c\n"} {
		if n, err := b.Write([]byte(l)); n != len(l) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", l, n, err)
		}
	}
	if got := r.get(); len(got) != 0 {
		t.Fatalf("written before the delay and before Flush: %q", got)
	}
	if err := b.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := r.get(); len(got) != 1 || got[0] != "a\nb\nc\n" {
		t.Fatalf("after Flush: %q, want one write of the three lines in order", got)
	}
	if err := b.Flush(); err != nil || len(r.get()) != 1 {
		t.Fatalf("an empty Flush wrote again (%d writes) or failed: %v", len(r.get()), err)
	}
}

func TestLinesAreWrittenAfterTheDelay(t *testing.T) {
	r := &recorder{}
	b := New(r, 10*time.Millisecond)
	b.Write([]byte("one\n"))
	deadline := time.Now().Add(5 * time.Second)
	for len(r.get()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("a buffered line was not written within 5 s with a 10 ms delay")
		}
		time.Sleep(time.Millisecond)
	}
	if got := r.get(); got[0] != "one\n" {
		t.Fatalf("written: %q", got)
	}
	// The timer re-arms for the next batch.
	b.Write([]byte("two\n"))
	for len(r.get()) < 2 {
		if time.Now().After(deadline) {
			t.Fatal("the second batch was not written")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestAFullBufferIsWrittenAtOnce(t *testing.T) {
	r := &recorder{}
	b := New(r, time.Hour)
	line := strings.Repeat("x", 1023) + "\n"
	for i := 0; i < MaxBuffered/len(line); i++ {
		b.Write([]byte(line))
	}
	got := r.get()
	if len(got) != 1 || len(got[0]) != MaxBuffered {
		t.Fatalf("after %d bytes: %d writes, want one of %d bytes", MaxBuffered, len(got), MaxBuffered)
	}
}

func TestFlushReportsAFailedWrite(t *testing.T) {
	r := &recorder{err: errors.New("disk full")}
	b := New(r, time.Hour)
	b.Write([]byte("x\n"))
	if err := b.Flush(); err == nil || err.Error() != "disk full" {
		t.Fatalf("Flush = %v, want the write's error", err)
	}
	r.err = nil
	b.Write([]byte("y\n"))
	if err := b.Flush(); err != nil {
		t.Fatalf("the error was reported twice: %v", err)
	}
	if got := r.get(); !bytes.Equal([]byte(got[1]), []byte("y\n")) {
		t.Fatalf("writes: %q", got)
	}
}

func TestConcurrentLinesStayWhole(t *testing.T) {
	r := &recorder{}
	b := New(r, time.Millisecond)
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 500; i++ {
				b.Write([]byte("line from a writer\n"))
			}
		}()
	}
	wg.Wait()
	b.Flush()
	all := strings.Join(r.get(), "")
	lines := strings.Split(strings.TrimSuffix(all, "\n"), "\n")
	if len(lines) != 4000 {
		t.Fatalf("%d lines, want 4000", len(lines))
	}
	for _, l := range lines {
		if l != "line from a writer" {
			t.Fatalf("a line was torn: %q", l)
		}
	}
}
