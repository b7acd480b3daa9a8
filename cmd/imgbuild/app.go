package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/imgbuild/imgbuild/layers"
)

// Exit statuses.
const (
	exitOK    = 0
	exitError = 1 // build or runtime error
	exitUsage = 2 // bad flags or arguments
)

// streams are the process's standard streams and environment, passed
// explicitly so that tests run the CLI in-process.
type streams struct {
	stdin     io.Reader
	stdout    io.Writer
	stderr    io.Writer
	lookupEnv func(string) (string, bool)
}

// usageError is a bad flag or argument: exit status 2.
type usageError struct {
	cmd string // command path for the help hint, e.g. "imgbuild build"
	err error
}

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

// usagef returns a usage error for c's command.
func usagef(c *cli.Context, format string, args ...any) error {
	return &usageError{cmd: c.Command.HelpName, err: fmt.Errorf(format, args...)}
}

// run runs the CLI with args (args[0] is the program name) and returns the
// exit status: 128+signal when it failed after a signal canceled ctx.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	s := &streams{stdin: stdin, stdout: stdout, stderr: stderr, lookupEnv: os.LookupEnv}
	app := newApp(s)
	err := app.RunContext(ctx, normalizeArgs(app, args))
	var sig signalError
	if err != nil && errors.As(context.Cause(ctx), &sig) {
		// Canceled by SIGINT or SIGTERM: the error is only a consequence.
		fmt.Fprintf(stderr, "imgbuild: %s\n", sig)
		return sig.exitCode()
	}
	return exitCode(err, stderr)
}

// exitCode prints err (if any) as one "imgbuild: ..." line and maps it to
// the exit status.
func exitCode(err error, stderr io.Writer) int {
	if err == nil {
		return exitOK
	}
	var ue *usageError
	if errors.As(err, &ue) {
		hint := ""
		if ue.cmd != "" {
			hint = fmt.Sprintf(" (see '%s --help')", ue.cmd)
		}
		fmt.Fprintf(stderr, "imgbuild: %s%s\n", oneLine(ue.err.Error()), hint)
		return exitUsage
	}
	var ec cli.ExitCoder
	if errors.As(err, &ec) {
		// urfave/cli's own exit errors (e.g. "No help topic for ...") are
		// usage errors.
		if msg := oneLine(ec.Error()); msg != "" {
			fmt.Fprintf(stderr, "imgbuild: %s\n", msg)
		}
		return exitUsage
	}
	fmt.Fprintf(stderr, "imgbuild: %s\n", oneLine(err.Error()))
	return exitError
}

// oneLine folds a multi-line error message onto one line.
func oneLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	for i := range lines {
		lines[i] = strings.TrimSpace(lines[i])
	}
	return strings.Join(lines, "; ")
}

func newApp(s *streams) *cli.App {
	app := &cli.App{
		Name:  "imgbuild",
		Usage: "build OCI and Docker images from Dockerfiles, without a daemon",
		UsageText: "imgbuild [build flags] CONTEXT   (same as: imgbuild build [flags] CONTEXT)\n" +
			"imgbuild COMMAND [flags] [args]",
		Description: "Every command accepts --root DIR (env IMGBUILD_ROOT), the state directory.\n" +
			"Exit status: 0 success, 1 build or runtime error, 2 usage error, 130 or 143 canceled by SIGINT or SIGTERM\n" +
			"(the first signal stops the build and cleans up; a second exits at once).",
		Reader:                    s.stdin,
		Writer:                    s.stdout,
		ErrWriter:                 s.stderr,
		HideVersion:               true,
		DisableSliceFlagSeparator: true,
		ExitErrHandler:            func(*cli.Context, error) {},
		OnUsageError:              onUsageError,
		Commands: []*cli.Command{
			buildCommand(s),
			imagesCommand(s),
			inspectCommand(s),
			pushCommand(s),
			saveCommand(s),
			tagCommand(s),
			rmCommand(s),
			pruneCommand(s),
			duCommand(s),
			versionCommand(s),
		},
	}
	for _, c := range app.Commands {
		c.OnUsageError = onUsageError
		c.Flags = append(c.Flags, rootFlag())
	}
	return app
}

// onUsageError turns urfave/cli's flag parsing errors into usage errors.
func onUsageError(c *cli.Context, err error, _ bool) error {
	cmd := "imgbuild"
	if c.Command != nil && c.Command.HelpName != "" {
		cmd = c.Command.HelpName
	}
	return &usageError{cmd: cmd, err: err}
}

// normalizeArgs makes `imgbuild [flags] CONTEXT` run `build`, moves
// `--root DIR` given before the command name after it, and moves a
// command's flags before its arguments so that, as with docker,
// `imgbuild build . -t app` works.
func normalizeArgs(app *cli.App, args []string) []string {
	if len(args) < 2 {
		return args
	}
	var global []string
	i := 1
	for i < len(args) {
		a := args[i]
		if a == "--root" || a == "-root" {
			end := min(i+2, len(args))
			global = append(global, args[i:end]...)
			i = end
			continue
		}
		if strings.HasPrefix(a, "--root=") || strings.HasPrefix(a, "-root=") {
			global = append(global, a)
			i++
			continue
		}
		break
	}
	rest := args[i:]
	if len(rest) == 0 {
		// Only --root: the build command reports the missing context.
		return append([]string{args[0], "build"}, global...)
	}
	switch first := rest[0]; {
	case first == "help" || first == "h":
		return append([]string{args[0]}, rest...)
	case (first == "-h" || first == "--help") && len(global) == 0:
		return args
	}
	cmd := app.Command(rest[0])
	if cmd == nil {
		cmd = app.Command("build")
	} else {
		rest = rest[1:]
	}
	out := []string{args[0], cmd.Name}
	out = append(out, global...)
	return append(out, reorderFlags(cmd.Flags, rest)...)
}

// reorderFlags returns args with every flag (and its value) before the
// positional arguments, which follow a "--". Known flags are rewritten to
// their long name, so that `-t a --tag b` works (urfave/cli rejects two
// forms of one flag).
func reorderFlags(flags []cli.Flag, args []string) []string {
	takesValue := map[string]bool{}
	long := map[string]string{}
	for _, f := range flags {
		_, isBool := f.(*cli.BoolFlag)
		for _, n := range f.Names() {
			takesValue[n] = !isBool
			long[n] = f.Names()[0]
		}
	}
	var fl, pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			pos = append(pos, args[i+1:]...)
			break
		}
		if len(a) < 2 || a[0] != '-' {
			pos = append(pos, a)
			continue
		}
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if l, ok := long[name]; ok {
			a = "--" + l
			if hasValue {
				a += "=" + value
			}
		}
		fl = append(fl, a)
		if hasValue || !takesValue[name] {
			continue
		}
		if i+1 == len(args) {
			// The value is missing: let the parser say so.
			return fl
		}
		fl = append(fl, args[i+1])
		i++
	}
	if len(pos) == 0 {
		return fl
	}
	return append(append(fl, "--"), pos...)
}

const rootEnv = "IMGBUILD_ROOT"

func rootFlag() cli.Flag {
	return &cli.StringFlag{
		Name:        "root",
		Usage:       "state `DIR`",
		DefaultText: "/var/lib/imgbuild for root, else $XDG_DATA_HOME/imgbuild",
		EnvVars:     []string{rootEnv},
	}
}

// rootDir returns the state directory: --root, $IMGBUILD_ROOT, or the
// default for the user.
func rootDir(c *cli.Context, s *streams) (string, error) {
	if r := c.String("root"); r != "" {
		return r, nil
	}
	if os.Geteuid() == 0 {
		return "/var/lib/imgbuild", nil
	}
	if d, ok := s.lookupEnv("XDG_DATA_HOME"); ok && filepath.IsAbs(d) {
		return filepath.Join(d, "imgbuild"), nil
	}
	home, ok := s.lookupEnv("HOME")
	if !ok || home == "" {
		var err error
		if home, err = os.UserHomeDir(); err != nil {
			return "", fmt.Errorf("no state directory: give --root or set %s: %w", rootEnv, err)
		}
	}
	return filepath.Join(home, ".local", "share", "imgbuild"), nil
}

// openStore opens the local store under the state directory.
func openStore(c *cli.Context, s *streams) (*layers.Store, error) {
	root, err := rootDir(c, s)
	if err != nil {
		return nil, err
	}
	st, err := layers.OpenStore(c.Context, root)
	if err != nil {
		return nil, fmt.Errorf("opening store %s: %w", root, err)
	}
	return st, nil
}

// needArgs checks the number of positional arguments.
func needArgs(c *cli.Context, min, max int) error {
	n := c.NArg()
	switch {
	case max == 0 && n > 0:
		return usagef(c, "%q accepts no arguments, got %d", c.Command.HelpName, n)
	case n != min && min == max:
		return usagef(c, "%q requires exactly %d argument(s), got %d", c.Command.HelpName, min, n)
	case n < min:
		return usagef(c, "%q requires at least %d argument(s), got %d", c.Command.HelpName, min, n)
	case max >= 0 && n > max:
		return usagef(c, "%q accepts at most %d argument(s), got %d", c.Command.HelpName, max, n)
	}
	return nil
}
