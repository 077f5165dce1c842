package cmdutil

import (
	"encoding/json"
	"fmt"
	"io"

	"sigs.k8s.io/yaml"
)

// PrintStructured writes v as indented JSON or as YAML (format "json" or "yaml"), the `-o json|yaml`
// of every command that prints a structured result.
func PrintStructured(out io.Writer, format string, v any) error {
	var b []byte
	var err error
	switch format {
	case "json":
		if b, err = json.MarshalIndent(v, "", "  "); err == nil {
			b = append(b, '\n')
		}
	case "yaml":
		b, err = yaml.Marshal(v)
	default:
		return fmt.Errorf("unknown output format %q: use json or yaml", format)
	}
	if err != nil {
		return err
	}
	_, err = out.Write(b)
	return err
}
