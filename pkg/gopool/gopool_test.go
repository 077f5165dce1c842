package gopool

import (
	"runtime"
	"sync"
	"testing"
	"time"
)

// waitIdle waits until n goroutines are idle (they join the pool just after their function returns).
func waitIdle(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for Idle() != n {
		if time.Now().After(deadline) {
			t.Fatalf("idle goroutines: %d, want %d", Idle(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestSequentialJobsReuseOneGoroutine(t *testing.T) {
	waitIdle(t, Idle()) // settle
	before := runtime.NumGoroutine()
	idle0 := Idle()
	for i := 0; i < 100; i++ {
		done := make(chan int)
		Go(func() { done <- i })
		if got := <-done; got != i {
			t.Fatalf("job %d ran as %d", i, got)
		}
		// The goroutine rejoins the pool right after the job; wait for it so the next Go reuses it.
		waitIdle(t, max(idle0, 1))
	}
	if grown := runtime.NumGoroutine() - before; grown > 1 {
		t.Fatalf("100 sequential jobs left %d more goroutines, want at most 1 (reused)", grown)
	}
}

func TestIdleGoroutinesAreCapped(t *testing.T) {
	const n = MaxIdle + 40
	var started, release sync.WaitGroup
	started.Add(n)
	release.Add(1)
	ran := make(chan struct{}, n)
	for i := 0; i < n; i++ {
		Go(func() {
			started.Done()
			release.Wait()
			ran <- struct{}{}
		})
	}
	started.Wait() // all n run at once: none waited for another
	release.Done()
	for i := 0; i < n; i++ {
		<-ran
	}
	waitIdle(t, MaxIdle)
	time.Sleep(20 * time.Millisecond)
	if got := Idle(); got != MaxIdle {
		t.Fatalf("idle goroutines after %d concurrent jobs: %d, want the cap %d", n, got, MaxIdle)
	}
}
