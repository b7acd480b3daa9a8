package main

import (
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/urfave/cli/v2"

	"github.com/imgbuild/imgbuild/builder"
)

// cacheFlags are the build flags of the build cache.
func cacheFlags() []cli.Flag {
	return []cli.Flag{
		&cli.BoolFlag{Name: "no-cache", Usage: "do not use the build cache: every step runs (and is cached again)"},
		&cli.StringSliceFlag{Name: "no-cache-filter",
			Usage: "run the steps of `STAGE` (name or index) even when cached (repeatable, or comma-separated)"},
		&cli.StringSliceFlag{Name: "cache-from",
			Usage: "also take steps from this remote cache (`SPEC`, repeatable): type=registry,ref=REPO:TAG | type=local,src=DIR | REPO:TAG; " +
				"a missing or broken cache is a warning"},
		&cli.StringSliceFlag{Name: "cache-to",
			Usage: "export the build cache (`SPEC`, repeatable): type=registry,ref=REPO:TAG[,mode=min|max] | type=local,dest=DIR[,mode=min|max]; " +
				"mode=min (default) caches the target stage's steps, max every stage's"},
	}
}

// cacheOptions sets o's NoCache, NoCacheFilter, CacheFrom and CacheTo from
// the flags. Errors are usage errors.
func cacheOptions(c *cli.Context, o *builder.Options) error {
	o.NoCache = c.Bool("no-cache")
	var err error
	if o.NoCacheFilter, err = parseNoCacheFilter(c.StringSlice("no-cache-filter")); err != nil {
		return usagef(c, "%v", err)
	}
	if o.CacheFrom, err = parseCacheSpecs("--cache-from", c.StringSlice("cache-from"), false); err != nil {
		return usagef(c, "%v", err)
	}
	if o.CacheTo, err = parseCacheSpecs("--cache-to", c.StringSlice("cache-to"), true); err != nil {
		return usagef(c, "%v", err)
	}
	return nil
}

// parseNoCacheFilter splits the --no-cache-filter values at commas, as
// buildx does.
func parseNoCacheFilter(vals []string) ([]string, error) {
	var out []string
	for _, v := range vals {
		for _, s := range strings.Split(v, ",") {
			s = strings.TrimSpace(s)
			if s == "" {
				return nil, fmt.Errorf("invalid --no-cache-filter %q: empty stage name", v)
			}
			out = append(out, s)
		}
	}
	return out, nil
}

// parseCacheSpecs parses --cache-from (export false) or --cache-to values.
func parseCacheSpecs(flag string, vals []string, export bool) ([]builder.CacheSpec, error) {
	var out []builder.CacheSpec
	for _, v := range vals {
		spec, err := builder.ParseCacheSpec(v, export)
		if err != nil {
			return nil, fmt.Errorf("invalid %s: %w", flag, err)
		}
		out = append(out, spec)
	}
	return out, nil
}

// syncWriter serialises the writes of progress events and warnings, which
// come from several goroutines, so that their lines never interleave.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(p)
}

// warner returns the builder.Options.Warn function printing each warning
// as one "imgbuild: warning: ..." line on w (in every progress mode, and
// with --quiet).
func warner(w io.Writer) func(string) {
	return func(msg string) {
		fmt.Fprintf(w, "imgbuild: warning: %s\n", oneLine(msg))
	}
}
