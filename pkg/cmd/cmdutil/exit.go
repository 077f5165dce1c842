package cmdutil

import "fmt"

// ExitError asks main to exit with Code without printing anything more: the command already said
// what happened (for example `connect -- COMMAND` passing on the command's own exit status).
type ExitError struct{ Code int }

func (e *ExitError) Error() string { return fmt.Sprintf("exit status %d", e.Code) }
