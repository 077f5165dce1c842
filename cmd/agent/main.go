// Command agent runs one of the in-cluster roles of kubectl-apiproxy: `agent proxy`, `agent node`,
// `agent webhook`.
package main

import (
	"fmt"
	"os"

	"github.com/apiproxy/apiproxy/pkg/cmd/agent"
)

func main() {
	if err := agent.NewRootCommand(os.Stdout, os.Stderr).Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}
