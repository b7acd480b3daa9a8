package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/docker/go-units"
	"github.com/urfave/cli/v2"

	"github.com/imgbuild/imgbuild/builder"
	sandbox "github.com/imgbuild/imgbuild/builder/run"
	"github.com/imgbuild/imgbuild/layers"
)

func pruneCommand(s *streams) *cli.Command {
	return &cli.Command{
		Name:  "prune",
		Usage: "remove build cache and data no tagged image uses",
		Description: "Without --all, --filter or --keep-storage the build cache is kept; prune then removes untagged images,\n" +
			"blobs that neither a tagged image nor a build cache record uses, extracted layer trees that neither uses,\n" +
			"and what killed builds left behind. --all first removes every build cache record; --filter until=DURATION\n" +
			"the records not used for DURATION; --keep-storage SIZE the least recently used records beyond SIZE\n" +
			"(with --all, --filter and --keep-storage say which records go, as in docker builder prune).",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "all", Aliases: []string{"a"}, Usage: "remove the whole build cache"},
			&cli.StringSliceFlag{Name: "filter",
				Usage: "remove the build cache records not used for `until=DURATION` (Go durations such as 24h or 90m, or days: 7d, 1d12h)"},
			&cli.StringFlag{Name: "keep-storage",
				Usage: "remove the least recently used build cache records until the rest take at most `SIZE` (512MB, 10GB, bytes)"},
		},
		Action: func(c *cli.Context) error { return pruneAction(c, s) },
	}
}

// pruneOptions turns the prune flags into the build cache records to
// delete. Errors are usage errors.
func pruneOptions(c *cli.Context) (layers.CachePruneOptions, error) {
	var o layers.CachePruneOptions
	if err := needArgs(c, 0, 0); err != nil {
		return o, err
	}
	for _, f := range c.StringSlice("filter") {
		k, v, ok := strings.Cut(f, "=")
		if !ok || strings.TrimSpace(k) != "until" {
			return o, usagef(c, "invalid --filter %q: want until=DURATION", f)
		}
		d, err := parseAge(v)
		if err != nil {
			return o, usagef(c, "invalid --filter %q: %v", f, err)
		}
		o.Until = d
	}
	if v := c.String("keep-storage"); v != "" {
		n, err := units.RAMInBytes(v)
		if err != nil || n < 0 {
			return o, usagef(c, "invalid --keep-storage %q: want SIZE, e.g. 512MB, 10GB or bytes", v)
		}
		o.KeepStorage = n // 0, as in docker, is no limit
	}
	o.All = c.Bool("all") && o.Until == 0 && o.KeepStorage == 0
	return o, nil
}

// parseAge parses a Go duration, optionally led by a number of days
// ("7d", "1d12h", "1.5d"). It must be positive.
func parseAge(v string) (time.Duration, error) {
	var d time.Duration
	rest := v
	if days, after, ok := strings.Cut(v, "d"); ok {
		n, err := strconv.ParseFloat(days, 64)
		if err != nil || n < 0 || n > 100000 {
			return 0, fmt.Errorf("want a duration such as 24h, 90m or 7d")
		}
		d, rest = time.Duration(n*float64(24*time.Hour)), after
	}
	if rest != "" {
		r, err := time.ParseDuration(rest)
		if err != nil || r < 0 {
			return 0, fmt.Errorf("want a duration such as 24h, 90m or 7d")
		}
		d += r
	}
	if d <= 0 {
		return 0, fmt.Errorf("the duration must be positive")
	}
	return d, nil
}

func pruneAction(c *cli.Context, s *streams) error {
	opts, err := pruneOptions(c)
	if err != nil {
		return err
	}
	st, err := openStore(c, s)
	if err != nil {
		return err
	}
	records := 0
	if opts.All || opts.Until > 0 || opts.KeepStorage > 0 {
		if records, err = st.PruneCache(c.Context, opts); err != nil {
			return fmt.Errorf("pruning the build cache: %w", err)
		}
	}
	rep, err := st.Prune(c.Context)
	if err != nil {
		return fmt.Errorf("pruning: %w", err)
	}
	mounts := 0
	if c.Bool("all") { // RUN --mount=type=cache directories go with --all only
		n, freed, err := builder.PruneCacheMounts(c.Context, st)
		if err != nil {
			return fmt.Errorf("pruning: %w", err)
		}
		mounts, rep.Bytes = n, rep.Bytes+freed
	}
	if err := cleanRunState(st); err != nil {
		return fmt.Errorf("pruning: %w", err)
	}
	fmt.Fprintf(s.stdout, "Deleted %d build cache records, %d blobs, %d untagged images, %d extracted layer trees and %d cache mounts; total reclaimed space: %s\n",
		records, rep.Blobs, rep.Images, rep.Trees, mounts, units.HumanSizeWithPrecision(float64(rep.Bytes), 3))
	return nil
}

// cleanRunState removes the run directories and cgroups that RUN steps of
// dead imgbuild processes (kill -9) left in the sandbox's state directory,
// ROOT/run, where package builder's default Executor keeps it: run.New does
// that cleaning, and leaves the directories of running steps alone.
func cleanRunState(st *layers.Store) error {
	dir := builder.RunStateDir(st)
	if _, err := os.Lstat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	_, err := sandbox.New(sandbox.Options{StateDir: dir})
	return err
}
