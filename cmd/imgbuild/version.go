package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"

	"github.com/urfave/cli/v2"
)

// version is stamped at link time (make build: -ldflags "-X main.version=...");
// when empty the module version from the build info is used.
var version string

func versionCommand(s *streams) *cli.Command {
	return &cli.Command{
		Name:  "version",
		Usage: "print the version, Go version and commit",
		Action: func(c *cli.Context) error {
			if err := needArgs(c, 0, 0); err != nil {
				return err
			}
			info, _ := debug.ReadBuildInfo()
			return printVersion(s.stdout, version, info)
		},
	}
}

// printVersion writes the version lines: stamped (if not empty) or the
// module version, and the commit from the build info (nil when the binary
// has none).
func printVersion(w io.Writer, stamped string, info *debug.BuildInfo) error {
	version, commit, modified, built := "(devel)", "unknown", false, ""
	if info != nil {
		if info.Main.Version != "" {
			version = info.Main.Version
		}
		for _, kv := range info.Settings {
			switch kv.Key {
			case "vcs.revision":
				commit = kv.Value
			case "vcs.modified":
				modified = kv.Value == "true"
			case "vcs.time":
				built = kv.Value
			}
		}
	}
	if stamped != "" {
		version = stamped
	}
	if modified {
		commit += " (modified)"
	}
	_, err := fmt.Fprintf(w, "imgbuild %s\ngo: %s %s/%s\ncommit: %s\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH, commit)
	if err == nil && built != "" {
		_, err = fmt.Fprintf(w, "commit time: %s\n", built)
	}
	return err
}
