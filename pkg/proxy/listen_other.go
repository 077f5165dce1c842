//go:build !linux

package proxy

import (
	"net"
	"time"
)

// listenConfig: elsewhere Go sets keepalive on each accepted connection.
func listenConfig(keepAlive time.Duration) net.ListenConfig {
	return net.ListenConfig{KeepAlive: keepAlive}
}
