//go:build !linux

package evrelay

import (
	"errors"
	"net"

	"github.com/apiproxy/apiproxy/pkg/tunnel"
)

// Supported says whether this platform has event loops (Linux only: epoll).
const Supported = false

// Tunnel is not available off Linux.
type Tunnel struct{}

// New always fails off Linux; the caller uses pkg/tunnel.
func New(a, b net.Conn, opts tunnel.RelayOptions, done func(tunnel.RelayResult)) (*Tunnel, error) {
	return nil, errors.New("evrelay: event loops need Linux")
}

// Run does nothing off Linux.
func (t *Tunnel) Run() {}

// Close does nothing off Linux.
func (t *Tunnel) Close() error { return nil }
