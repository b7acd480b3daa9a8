//go:build ignore

// testreport reads `go test -json` output on stdin, prints it as plain text
// (as `go test -v` would, so the per-package "ok"/"FAIL" lines show), and
// fails when a test skipped without an allowed reason.
//
// CI must not pass because a test quietly skipped. A skip is allowed only
// when its message matches -allow (default: contains "[allowed-skip]", or
// mentions -short/testing.Short). Lines that are not JSON (make's own
// output, install-deps) are copied through unchanged.
//
// Usage: go test -json ./... | go run .ci/testreport.go [-allow REGEXP]
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strings"
)

// event is one line of `go test -json` (cmd/test2json).
type event struct {
	Action     string
	Package    string
	ImportPath string
	Test       string
	Output     string
}

type testID struct{ pkg, test string }

type report struct {
	output  map[testID]*strings.Builder
	skipped []testID
	failed  []testID
	passed  int
	badPkgs map[string]bool
}

func main() {
	allow := flag.String("allow", `\[allowed-skip\]|-short|testing\.Short`, "regexp a skip message must match to be allowed")
	flag.Parse()
	allowRE, err := regexp.Compile(*allow)
	if err != nil {
		fmt.Fprintf(os.Stderr, "testreport: -allow: %v\n", err)
		os.Exit(2)
	}
	r := &report{output: map[testID]*strings.Builder{}, badPkgs: map[string]bool{}}
	if err := r.read(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "testreport: %v\n", err)
		os.Exit(2)
	}
	os.Exit(r.summary(os.Stdout, allowRE))
}

func (r *report) read(in io.Reader, out io.Writer) error {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var ev event
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &ev) != nil || ev.Action == "" {
			fmt.Fprintf(out, "%s\n", line)
			continue
		}
		r.handle(ev, out)
	}
	return sc.Err()
}

func (r *report) handle(ev event, out io.Writer) {
	if ev.Output != "" {
		fmt.Fprint(out, ev.Output)
	}
	id := testID{ev.Package, ev.Test}
	switch ev.Action {
	case "output":
		if ev.Test != "" {
			b := r.output[id]
			if b == nil {
				b = &strings.Builder{}
				r.output[id] = b
			}
			b.WriteString(ev.Output)
		}
	case "pass":
		if ev.Test != "" {
			r.passed++
		}
	case "skip":
		if ev.Test != "" { // a package-level skip means "no test files"
			r.skipped = append(r.skipped, id)
		}
	case "fail":
		if ev.Test != "" {
			r.failed = append(r.failed, id)
		} else {
			r.badPkgs[ev.Package] = true
		}
	case "build-fail":
		pkg, _, _ := strings.Cut(ev.ImportPath, " ") // "x/y [x/y.test]"
		r.badPkgs[pkg] = true
	}
}

// summary lists skips and failures and returns the exit status.
func (r *report) summary(out io.Writer, allow *regexp.Regexp) int {
	var bad []string
	for _, id := range r.skipped {
		msg := r.skipMessage(id)
		if allow.MatchString(msg) {
			fmt.Fprintf(out, "testreport: allowed skip %s %s: %s\n", id.pkg, id.test, msg)
			continue
		}
		bad = append(bad, fmt.Sprintf("%s %s: %s", id.pkg, id.test, msg))
	}
	sort.Strings(bad)
	for _, b := range bad {
		fmt.Fprintf(out, "testreport: FORBIDDEN SKIP %s\n", b)
	}
	for _, id := range r.failed {
		fmt.Fprintf(out, "testreport: FAIL %s %s\n", id.pkg, id.test)
	}
	pkgs := make([]string, 0, len(r.badPkgs))
	for p := range r.badPkgs {
		pkgs = append(pkgs, p)
	}
	sort.Strings(pkgs)
	for _, p := range pkgs {
		fmt.Fprintf(out, "testreport: FAIL package %s\n", p)
	}
	fmt.Fprintf(out, "testreport: %d failed tests, %d failed packages, %d skips (%d forbidden)\n",
		len(r.failed), len(pkgs), len(r.skipped), len(bad))
	// The plain closing line: tests (subtests included), forbidden skips counted as failures.
	fmt.Fprintf(out, "tests: %d passed, %d failed, %d skipped\n", r.passed, len(r.failed)+len(bad), len(r.skipped)-len(bad))
	if len(bad) > 0 || len(r.failed) > 0 || len(pkgs) > 0 {
		return 1
	}
	return 0
}

// skipMessage is the test's own output minus go test's framing lines.
func (r *report) skipMessage(id testID) string {
	b := r.output[id]
	if b == nil {
		return "(no message)"
	}
	var msg []string
	for _, l := range strings.Split(b.String(), "\n") {
		t := strings.TrimSpace(l)
		if t == "" || strings.HasPrefix(t, "=== ") || strings.HasPrefix(t, "--- ") {
			continue
		}
		msg = append(msg, t)
	}
	if len(msg) == 0 {
		return "(no message)"
	}
	return strings.Join(msg, " | ")
}
