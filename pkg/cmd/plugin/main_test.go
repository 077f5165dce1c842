package plugin

import (
	"os"
	"testing"

	"github.com/apiproxy/apiproxy/test/harness"
)

// Some tests run the real binaries (harness.Binary); RunTests removes them at the end.
func TestMain(m *testing.M) { os.Exit(harness.RunTests(m)) }
