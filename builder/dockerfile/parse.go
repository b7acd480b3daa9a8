// Package dockerfile turns Dockerfile bytes into BuildKit's typed stages and
// gives every error the Dockerfile's file name and line.
package dockerfile

import (
	"bytes"
	"errors"
	"fmt"
	"strings"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
)

// File is a parsed Dockerfile.
type File struct {
	Name     string // base name used in messages, e.g. "Dockerfile.prod"
	Stages   []instructions.Stage
	MetaArgs []instructions.ArgCommand // ARGs before the first FROM
	Escape   rune
}

// Error is a Dockerfile problem at a line; it reads "Dockerfile:7: msg".
type Error struct {
	File string
	Line int
	Err  error
}

func (e *Error) Error() string {
	if e.Line <= 0 {
		return fmt.Sprintf("%s: %v", e.File, e.Err)
	}
	return fmt.Sprintf("%s:%d: %v", e.File, e.Line, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// Parse parses dt with BuildKit's parser and instruction parser.
func Parse(dt []byte, name string) (*File, error) {
	if name == "" {
		name = "Dockerfile"
	}
	if len(bytes.TrimSpace(dt)) == 0 {
		return nil, &Error{File: name, Err: errors.New("the Dockerfile cannot be empty")}
	}
	if err := checkSyntax(dt, name); err != nil {
		return nil, err
	}
	res, err := parser.Parse(bytes.NewReader(dt))
	if err != nil {
		return nil, WithLocation(name, nil, err)
	}
	stages, metaArgs, err := instructions.Parse(res.AST, nil)
	if err != nil {
		return nil, WithLocation(name, nil, err)
	}
	if len(stages) == 0 {
		return nil, &Error{File: name, Err: errors.New("dockerfile contains no stages to build")}
	}
	return &File{Name: name, Stages: stages, MetaArgs: metaArgs, Escape: res.EscapeToken}, nil
}

// WithLocation wraps err as an *Error at the first line of loc, or at the
// location BuildKit attached to err when loc is empty. Errors that already
// carry a line are returned unchanged.
func WithLocation(name string, loc []parser.Range, err error) error {
	if err == nil {
		return nil
	}
	var de *Error
	if errors.As(err, &de) {
		return err
	}
	line := Line(loc)
	var le *parser.LocationError
	if errors.As(err, &le) {
		if line == 0 && len(le.Locations) > 0 {
			line = Line(le.Locations[0])
		}
		err = errors.New(stripStack(le.Unwrap().Error()))
	}
	return &Error{File: name, Line: line, Err: err}
}

// Line is the first line of a location, 0 when unknown.
func Line(loc []parser.Range) int {
	if len(loc) == 0 {
		return 0
	}
	return loc[0].Start.Line
}

// stripStack drops BuildKit's "dockerfile parse error on line N: " prefixes,
// since our Error prints the line itself.
func stripStack(msg string) string {
	if i := strings.Index(msg, ": "); i > 0 && strings.HasPrefix(msg, "dockerfile parse error on line ") {
		return msg[i+2:]
	}
	return msg
}

// checkSyntax accepts the `# syntax=` directives that name the Dockerfile
// frontend imgbuild implements (docker/dockerfile, any 1.x version or
// channel) and rejects other frontends, which would need to be pulled and run.
func checkSyntax(dt []byte, name string) error {
	ref, _, loc, ok := parser.DetectSyntax(dt)
	if !ok {
		return nil
	}
	repo := ref
	if i := strings.LastIndex(repo, "@"); i >= 0 {
		repo = repo[:i]
	}
	if i := strings.LastIndex(repo, ":"); i > strings.LastIndex(repo, "/") {
		repo = repo[:i]
	}
	for _, prefix := range []string{"docker.io/", "index.docker.io/", "library/"} {
		repo = strings.TrimPrefix(repo, prefix)
	}
	switch repo {
	case "docker/dockerfile", "docker/dockerfile-upstream":
		return nil
	}
	return &Error{File: name, Line: Line(loc), Err: fmt.Errorf("syntax %q: custom Dockerfile frontends are not supported (imgbuild implements docker/dockerfile:1)", ref)}
}
