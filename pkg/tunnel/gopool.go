package tunnel

import "sync/atomic"

// Go runs f on a goroutine, reusing one that finished an earlier f when one is waiting. A new
// goroutine starts with a 2 KiB stack, and a connection's handler (dial, the first splice) grows it
// twice or three times: each growth copies the stack. Reused goroutines keep the stack they grew,
// so that cost is paid once per worker rather than once per connection or per resumed direction.
// At most maxIdleWorkers wait, so the idle cost is bounded (16 × 8 KiB) and never per tunnel: a
// parked tunnel still holds no goroutine.
//
// Measured with `go run ./test/bench -measure setups -compare HEAD` (same run, 5 rounds): agent
// CPU per setup 115 → 105 µs on the CONNECT path, 97 → 87 µs on the transparent path
// (runtime.newstack/copystack was 11% of the agent's CPU profile in a setups run).
func Go(f func()) {
	select {
	case workQueue <- f:
	default:
		go worker(f)
	}
}

const maxIdleWorkers = 16

var (
	workQueue   = make(chan func()) // unbuffered: a send succeeds only when a worker waits
	idleWorkers atomic.Int32
)

func worker(f func()) {
	for {
		f()
		f = nil // let what f held go before waiting
		if idleWorkers.Add(1) > maxIdleWorkers {
			idleWorkers.Add(-1)
			return
		}
		f = <-workQueue
		idleWorkers.Add(-1)
	}
}
