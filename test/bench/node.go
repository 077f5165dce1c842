package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"k8s.io/klog/v2"

	"github.com/apiproxy/apiproxy/pkg/node"
	"github.com/apiproxy/apiproxy/pkg/node/netif"
)

// Suite node: how long an address deleted by someone else stays missing. Ours is the real
// `agent node` daemon (netlink events + periodic sync); the baseline is the same sync code driven
// only by a 1 s ticker, the way Gardener's sidecar works (it defaults to a whole minute).
func init() {
	register(Suite{Name: "node", Needs: "root", Run: runNodeBench})
}

const (
	nodeBenchDeletions = 50
	nodeBenchPoll      = time.Second
)

var nodeBenchIP = net.ParseIP("10.96.0.2").To4()

func runNodeBench() ([]Row, error) {
	dir, err := os.MkdirTemp("", "apiproxy-bench-node-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	agent := filepath.Join(dir, "agent")
	if out, err := exec.Command("go", "build", "-o", agent, "github.com/apiproxy/apiproxy/cmd/agent").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build agent: %v\n%s", err, out)
	}

	// Ours: the real daemon in its own namespace. The long interval makes sure every repair
	// measured comes from a kernel event.
	ours, err := nodeBenchRun(func(ns string) (func(), error) {
		cmd := exec.Command("ip", "netns", "exec", ns, agent, "node", "--ip-address", nodeBenchIP.String(),
			"--interface", "apiproxy0", "--setup-iptables", "--sync-interval", "1h")
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		return func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }, nil
	}, 20*time.Millisecond)
	if err != nil {
		return nil, fmt.Errorf("agent node: %w", err)
	}

	// Baseline: periodic re-sync only. Deletions are spread over the poll period so they do not
	// all land right after a tick (which would flatter nobody but distort the median).
	base, err := nodeBenchRun(func(ns string) (func(), error) {
		h, err := netns.GetFromName(ns)
		if err != nil {
			return nil, err
		}
		link, err := netif.NewAt(h)
		if err != nil {
			h.Close()
			return nil, err
		}
		s, err := node.New(node.Config{IP: nodeBenchIP, Interface: "apiproxy0"}, link, nil)
		if err != nil {
			return nil, err
		}
		// The in-process baseline would log every repair to the table's terminal.
		klog.LogToStderr(false)
		klog.SetOutput(io.Discard)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			t := time.NewTicker(nodeBenchPoll)
			defer t.Stop()
			_ = s.Sync(ctx)
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					_ = s.Sync(ctx)
				}
			}
		}()
		return func() { cancel(); <-done; link.Close(); h.Close(); klog.LogToStderr(true) }, nil
	}, nodeBenchPoll)
	if err != nil {
		return nil, fmt.Errorf("baseline: %w", err)
	}

	baseline := fmt.Sprintf("%s polling re-sync", nodeBenchPoll)
	return []Row{
		{Metric: fmt.Sprintf("deleted address restored, median of %d", nodeBenchDeletions), Unit: "ms", Baseline: baseline,
			Base: nodeMS(nodePercentile(base, 50)), Ours: nodeMS(nodePercentile(ours, 50)), Target: "< 100 ms"},
		{Metric: "deleted address restored, max", Unit: "ms", Baseline: baseline,
			Base: nodeMS(nodePercentile(base, 100)), Ours: nodeMS(nodePercentile(ours, 100))},
	}, nil
}

// nodeBenchRun creates a namespace, starts a keeper in it, and measures nodeBenchDeletions
// deletion-to-restoration times, waiting a random time below maxGap between rounds.
func nodeBenchRun(start func(ns string) (stop func(), err error), maxGap time.Duration) ([]time.Duration, error) {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	name := "apiproxy-bench-" + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip netns add: %v: %s", err, out)
	}
	defer func() { _ = exec.Command("ip", "netns", "delete", name).Run() }()
	ns, err := netns.GetFromName(name)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, err
	}
	defer h.Close()

	events := make(chan netlink.AddrUpdate, 64)
	done := make(chan struct{})
	defer close(done)
	if err := netlink.AddrSubscribeWithOptions(events, done, netlink.AddrSubscribeOptions{Namespace: &ns}); err != nil {
		return nil, err
	}
	stop, err := start(name)
	if err != nil {
		return nil, err
	}
	defer stop()

	isOurs := func(u netlink.AddrUpdate) bool { return u.LinkAddress.IP.Equal(nodeBenchIP) }
	if err := nodeWaitFor(events, 10*time.Second, func(u netlink.AddrUpdate) bool { return isOurs(u) && u.NewAddr }); err != nil {
		// It may have been added before the subscription saw it: look.
		if l, lerr := h.LinkByName("apiproxy0"); lerr != nil || !nodeHasAddr(h, l) {
			return nil, fmt.Errorf("the address never appeared: %v", err)
		}
	}
	var times []time.Duration
	for i := 0; i < nodeBenchDeletions; i++ {
		gap, _ := rand.Int(rand.Reader, big.NewInt(int64(maxGap)))
		time.Sleep(time.Duration(gap.Int64()))
		l, err := h.LinkByName("apiproxy0")
		if err != nil {
			return nil, err
		}
		nodeDrain(events)
		t0 := time.Now()
		if err := h.AddrDel(l, &netlink.Addr{IPNet: &net.IPNet{IP: nodeBenchIP, Mask: net.CIDRMask(32, 32)}}); err != nil {
			return nil, fmt.Errorf("delete address: %w", err)
		}
		if err := nodeWaitFor(events, 5*nodeBenchPoll, func(u netlink.AddrUpdate) bool { return isOurs(u) && u.NewAddr }); err != nil {
			return nil, fmt.Errorf("round %d: %w", i, err)
		}
		times = append(times, time.Since(t0))
	}
	return times, nil
}

func nodeHasAddr(h *netlink.Handle, l netlink.Link) bool {
	addrs, _ := h.AddrList(l, netlink.FAMILY_V4)
	for _, a := range addrs {
		if a.IP.Equal(nodeBenchIP) {
			return true
		}
	}
	return false
}

func nodeWaitFor(ch <-chan netlink.AddrUpdate, d time.Duration, match func(netlink.AddrUpdate) bool) error {
	deadline := time.After(d)
	for {
		select {
		case u, ok := <-ch:
			if !ok {
				return fmt.Errorf("address subscription closed")
			}
			if match(u) {
				return nil
			}
		case <-deadline:
			return fmt.Errorf("no restoration within %s", d)
		}
	}
}

func nodeDrain(ch <-chan netlink.AddrUpdate) {
	for {
		select {
		case <-ch:
		default:
			return
		}
	}
}

func nodePercentile(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := (len(s) - 1) * p / 100
	return s[i]
}

func nodeMS(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
