package install

import (
	"context"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"

	"github.com/apiproxy/apiproxy/pkg/liqo"
)

// relayTargets are the --allow-target entries of a relay proxy: each peer's remapped external CIDR
// on the proxy port, and nothing else, so a CONNECT through this cluster's proxy reaches the peers'
// proxies (`connect --via`) but no other address of the fabric. They are read afresh on every
// install, so re-running install follows new or removed peers.
func relayTargets(ctx context.Context, c *Client, o Options, log io.Writer) ([]string, error) {
	peers, err := liqo.Peers(ctx, &liqo.Cluster{Name: "this cluster", Dynamic: c.Dynamic, Discovery: c.Discovery})
	if err != nil {
		return nil, fmt.Errorf("--relay: %w", err)
	}
	var targets []string
	port := strconv.Itoa(o.ProxyPort)
	for _, p := range peers {
		for _, cidr := range p.RemappedExternal {
			t := net.JoinHostPort(cidr.String(), port)
			if !slices.Contains(targets, t) {
				targets = append(targets, t)
			}
		}
		fmt.Fprintf(log, "relay: peer %s (Configuration %s) reachable through %v on port %s\n", p.RemoteClusterID, p.Configuration, p.RemappedExternal, port)
	}
	slices.Sort(targets) // stable arguments: a re-install with the same peers changes nothing
	return append(o.AllowTargets, targets...), nil
}
