// Command bench runs the project's benchmarks (`make bench`). Each suite measures our component and a
// baseline side by side in the same run (direct connection, a minimal relay, a controller-runtime
// defaulter, ...) and reports ratios, so results from different machines stay comparable. Nothing
// here is asserted: tests never depend on wall-clock speed.
//
//	go run ./test/bench                 all suites
//	go run ./test/bench -suite proxy    one suite
//	go run ./test/bench -suite reliability    issue 13 figures: idle RSS at 5,000 tunnels, SIGTERM under load
package main

import (
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
)

// Row is one measured figure: ours against the baseline measured in the same run.
type Row struct {
	Metric   string
	Unit     string
	Baseline string  // what we compare against
	Base     float64 // baseline's value (0 when there is none)
	Ours     float64
	// HigherIsBetter orients the ratio: ratio > 1 always means "ours is better".
	HigherIsBetter bool
	Target         string // the target, for the reader
}

// Suite is one benchmark family.
type Suite struct {
	Name string
	// Needs says what the suite requires ("root"); it is skipped with a message otherwise.
	Needs string
	Run   func() ([]Row, error)
	// RunTables, instead of Run, returns tables of its own shape (several columns compared).
	RunTables func() ([]Table, error)
}

// Table is a free-form result table: a header, rows of cells, and notes printed under it.
type Table struct {
	Title  string
	Header []string
	Rows   [][]string
	Notes  []string
}

var suites = map[string]Suite{}

func register(s Suite) { suites[s.Name] = s }

func main() {
	only := flag.String("suite", "", "run only this suite ("+strings.Join(names(), ", ")+")")
	flag.Parse()
	failed := false
	for _, name := range names() {
		if *only != "" && name != *only {
			continue
		}
		s := suites[name]
		if s.Needs == "root" && os.Geteuid() != 0 {
			fmt.Fprintf(os.Stderr, "suite %s skipped: needs root (network namespaces)\n", name)
			continue
		}
		fmt.Fprintf(os.Stderr, "== suite %s\n", name)
		if s.RunTables != nil {
			tables, err := s.RunTables()
			if err != nil {
				fmt.Fprintf(os.Stderr, "suite %s failed: %v\n", name, err)
				failed = true
			}
			for _, t := range tables {
				printFreeTable(name, t)
			}
			continue
		}
		rows, err := s.Run()
		if err != nil {
			fmt.Fprintf(os.Stderr, "suite %s failed: %v\n", name, err)
			failed = true
		}
		printTable(name, rows)
	}
	if failed {
		os.Exit(1)
	}
}

func names() []string {
	var n []string
	for k := range suites {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

func printTable(suite string, rows []Row) {
	if len(rows) == 0 {
		return
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(w, "%s\tmetric\tbaseline\tbaseline value\tours\tratio (>1 = better)\ttarget\t\n", suite)
	for _, r := range rows {
		ratio := "-"
		base := "-"
		if r.Base > 0 && r.Ours > 0 {
			base = fmt.Sprintf("%.4g %s", r.Base, r.Unit)
			if r.HigherIsBetter {
				ratio = fmt.Sprintf("%.2fx", r.Ours/r.Base)
			} else {
				ratio = fmt.Sprintf("%.2fx", r.Base/r.Ours)
			}
		}
		fmt.Fprintf(w, "\t%s\t%s\t%s\t%.4g %s\t%s\t%s\t\n", r.Metric, r.Baseline, base, r.Ours, r.Unit, ratio, r.Target)
	}
	w.Flush()
	fmt.Println()
}

func printFreeTable(suite string, t Table) {
	fmt.Printf("%s: %s\n", suite, t.Title)
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, strings.Join(t.Header, "\t")+"\t")
	for _, r := range t.Rows {
		fmt.Fprintln(w, strings.Join(r, "\t")+"\t")
	}
	w.Flush()
	for _, n := range t.Notes {
		fmt.Println("  " + n)
	}
	fmt.Println()
}
