package tunnel

import (
	"sync"
	"time"
)

// quietWatch tells busy directions from quiet ones, for parking. It replaces a read deadline per
// direction (a runtime timer armed and cancelled for every tunnel, and an eventfd write to wake the
// poller whenever that timer became the earliest one) with one ticker for all directions: every
// parkAfter/2 it interrupts, by a read deadline in the past, the directions that have been copying
// since before the previous tick. An interrupted direction that moved no byte was quiet for
// between parkAfter/2 and parkAfter and parks; a busy one is watched again. Registering costs a
// mutex and a slice slot. Measured with 10,000 one-byte echo tunnels through `agent proxy
// --listen-tcp` (8 clients, /proc CPU time of the agent): 133 → 126 µs of CPU per tunnel. The
// period is half of parkAfter because a longer quiet window keeps more goroutines of a burst of new
// tunnels alive at once: with a tick of parkAfter (quiet for 25 to 50 ms) RSS per idle tunnel,
// 2,000 opened one after the other, went from 4.5 to 5.9 KiB; with parkAfter/2 it stayed at 4.6.
type quietWatch struct {
	mu      sync.Mutex
	tick    uint64
	active  []*direction
	running bool // the ticker goroutine runs; it stops at a tick that finds nothing to watch
}

var quiet quietWatch

// aLongTimeAgo is a deadline that has passed: setting it interrupts a blocked read at once.
var aLongTimeAgo = time.Unix(1, 0)

// watch starts watching d, which is about to copy.
func (w *quietWatch) watch(d *direction) {
	w.mu.Lock()
	d.watchSlot = len(w.active)
	d.watchTick = w.tick
	w.active = append(w.active, d)
	if !w.running {
		w.running = true
		go w.run()
	}
	w.mu.Unlock()
}

// unwatch stops watching d (a no-op when a tick already interrupted it). Once it returns, no tick
// touches d's deadline any more.
func (w *quietWatch) unwatch(d *direction) {
	w.mu.Lock()
	if i := d.watchSlot; i >= 0 {
		last := len(w.active) - 1
		w.active[i] = w.active[last]
		w.active[i].watchSlot = i
		w.active[last] = nil
		w.active = w.active[:last]
		d.watchSlot = -1
	}
	w.mu.Unlock()
}

func (w *quietWatch) run() {
	t := time.NewTicker(parkAfter / 2)
	defer t.Stop()
	for range t.C {
		w.mu.Lock()
		w.tick++
		kept := 0
		for _, d := range w.active {
			// Watched since before the previous tick: copying for at least one whole period.
			if d.watchTick+1 < w.tick {
				d.watchSlot = -1
				_ = d.src.SetReadDeadline(aLongTimeAgo)
				continue
			}
			d.watchSlot = kept
			w.active[kept] = d
			kept++
		}
		clear(w.active[kept:])
		w.active = w.active[:kept]
		if kept == 0 {
			w.running = false
			w.mu.Unlock()
			return
		}
		w.mu.Unlock()
	}
}
