package agent

import (
	"os"
	"testing"

	"github.com/apiproxy/apiproxy/test/harness"
)

// The roles' tests run the real `agent` binary (harness.Binary); RunTests removes it at the end.
func TestMain(m *testing.M) { os.Exit(harness.RunTests(m)) }
