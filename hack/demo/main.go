// Command demo keeps the seed's two-cluster scenario running for `make demo` (test/scenario: cl01 and
// cl02 as real kube-apiservers with their own etcd, Liqo-shaped objects, and cl02's `agent proxy` on
// the remapped address 127.81.0.3:8118) until it receives SIGTERM or SIGINT (`make demo-down`),
// then stops every process it started, by PID.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/apiproxy/apiproxy/test/harness"
	"github.com/apiproxy/apiproxy/test/scenario"
)

func main() {
	dir := flag.String("dir", ".demo", "directory for the kubeconfig, logs and the ready marker")
	agent := flag.String("agent", "bin/agent", "the built agent binary")
	assets := flag.String("assets", "", "directory with kube-apiserver, etcd and kubectl (hack/test-assets.sh --dir)")
	flag.Parse()
	if *assets == "" {
		fmt.Fprintln(os.Stderr, "--assets is required: pass $(hack/test-assets.sh --dir)")
		os.Exit(2)
	}
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	abs, _ := filepath.Abs(*dir)
	var td harness.Teardown
	s, err := scenario.Up(&td, *assets, scenario.Options{AgentBinary: *agent, Dir: abs})
	if err != nil {
		td.Run()
		fmt.Fprintln(os.Stderr, "demo: setting up:", err)
		os.Exit(1)
	}
	fmt.Printf("cl01 API server: %s\ncl02 API server: %s\ncl02 proxy (as cl01 sees it): %s (pid %d, log %s)\n",
		s.CL01.Server, s.CL02.Server, s.ProxyAddr, s.ProxyPID(), s.ProxyLog)
	if err := os.WriteFile(filepath.Join(abs, "ready"), []byte(s.Kubeconfig+"\n"), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	fmt.Println("demo: stopping the proxy and both clusters")
	td.Run()
	_ = os.Remove(filepath.Join(abs, "ready"))
}
