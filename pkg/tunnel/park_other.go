//go:build !linux

package tunnel

// parker off Linux never parks: idle directions keep their goroutine.
type parker struct{}

var idle parker

func (p *parker) park(*direction) bool { return false }

func (p *parker) closeTunnel(r *relay) {
	r.closing = true
	r.a.Close()
	r.b.Close()
}
