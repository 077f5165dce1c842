//go:build !linux

package tunnel

import (
	"errors"
	"syscall"
)

// canProbe is false off Linux: there every direction copies with a pooled buffer (the plugin's
// listener on a laptop carries few tunnels; the agents, which carry many, run on Linux).
const canProbe = false

func probe(syscall.RawConn, bool, bool) (int, bool, error) {
	return 0, false, errors.New("tunnel: probing a socket is only implemented on Linux")
}
