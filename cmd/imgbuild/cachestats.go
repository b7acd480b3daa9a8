package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/imgbuild/imgbuild/builder"
)

// cacheMetadata is the "imgbuild.cache" value of --metadata-file: what the
// build did with its remote caches (builder.CacheStats).
type cacheMetadata struct {
	Imported        int   `json:"imported"`
	Hits            int   `json:"hits"`
	BytesDownloaded int64 `json:"bytesDownloaded"`
	Exported        int   `json:"exported"`
}

func newCacheMetadata(s builder.CacheStats) cacheMetadata {
	return cacheMetadata{Imported: s.Imported, Hits: s.Hits, BytesDownloaded: s.BytesDownloaded, Exported: s.Exported}
}

// usesRemoteCache reports whether the build was given --cache-from or
// --cache-to.
func usesRemoteCache(o *builder.Options) bool {
	return len(o.CacheFrom) > 0 || len(o.CacheTo) > 0
}

// cacheSummary is the line printed on stderr after a build given
// --cache-from or --cache-to, or "" when there is nothing to say: the
// --cache-from part needs a cache that could be read (one that could not is
// a warning already), the --cache-to part a --cache-to.
//
//	imgbuild: cache: 12 steps from --cache-from (40 imported), 34.5MB downloaded; 20 steps exported to --cache-to
func cacheSummary(o *builder.Options, s builder.CacheStats) string {
	var parts []string
	if len(o.CacheFrom) > 0 && s.Imported > 0 {
		parts = append(parts, fmt.Sprintf("%s from --cache-from (%d imported), %s downloaded",
			steps(s.Hits), s.Imported, humanSize(s.BytesDownloaded)))
	}
	if len(o.CacheTo) > 0 {
		parts = append(parts, steps(s.Exported)+" exported to --cache-to")
	}
	if len(parts) == 0 {
		return ""
	}
	return "imgbuild: cache: " + strings.Join(parts, "; ")
}

func steps(n int) string {
	if n == 1 {
		return "1 step"
	}
	return fmt.Sprintf("%d steps", n)
}

// printCacheSummary prints cacheSummary on w, unless quiet.
func printCacheSummary(w io.Writer, cfg *buildConfig, s builder.CacheStats) {
	if cfg.quiet {
		return
	}
	if line := cacheSummary(&cfg.opts, s); line != "" {
		fmt.Fprintln(w, line)
	}
}
