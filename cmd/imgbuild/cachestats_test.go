package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/imgbuild/imgbuild/builder"
	"github.com/imgbuild/imgbuild/registry"
)

func TestCacheSummary(t *testing.T) {
	from := []builder.CacheSpec{{Type: builder.CacheRegistry, Ref: "r/c:1"}}
	to := []builder.CacheSpec{{Type: builder.CacheLocal, Dir: "/c"}}
	tests := []struct {
		name     string
		from, to []builder.CacheSpec
		stats    builder.CacheStats
		want     string
	}{
		{"no remote cache", nil, nil, builder.CacheStats{}, ""},
		{"--cache-from", from, nil, builder.CacheStats{Imported: 40, Hits: 12, BytesDownloaded: 34_500_000},
			"imgbuild: cache: 12 steps from --cache-from (40 imported), 34.5MB downloaded"},
		{"--cache-from, one hit", from, nil, builder.CacheStats{Imported: 1, Hits: 1, BytesDownloaded: 900},
			"imgbuild: cache: 1 step from --cache-from (1 imported), 900B downloaded"},
		{"--cache-from read, nothing used", from, nil, builder.CacheStats{Imported: 3, BytesDownloaded: 2000},
			"imgbuild: cache: 0 steps from --cache-from (3 imported), 2kB downloaded"},
		{"--cache-from unreadable (a warning says so)", from, nil, builder.CacheStats{}, ""},
		{"--cache-to", nil, to, builder.CacheStats{Exported: 20},
			"imgbuild: cache: 20 steps exported to --cache-to"},
		{"--cache-to, nothing to export", nil, to, builder.CacheStats{},
			"imgbuild: cache: 0 steps exported to --cache-to"},
		{"both", from, to, builder.CacheStats{Imported: 5, Hits: 5, BytesDownloaded: 1_234_567, Exported: 6},
			"imgbuild: cache: 5 steps from --cache-from (5 imported), 1.23MB downloaded; 6 steps exported to --cache-to"},
		{"both, --cache-from unreadable", from, to, builder.CacheStats{Exported: 1},
			"imgbuild: cache: 1 step exported to --cache-to"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := &builder.Options{CacheFrom: tt.from, CacheTo: tt.to}
			if got := cacheSummary(o, tt.stats); got != tt.want {
				t.Errorf("cacheSummary = %q, want %q", got, tt.want)
			}
		})
	}
}

// readCacheMetadata reads the "imgbuild.cache" value of a --metadata-file;
// ok is false when the key is absent.
func readCacheMetadata(t *testing.T, path string) (m cacheMetadata, ok bool) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var all map[string]json.RawMessage
	if err := json.Unmarshal(b, &all); err != nil {
		t.Fatalf("%s: %v: %s", path, err, b)
	}
	raw, ok := all["imgbuild.cache"]
	if !ok {
		return m, false
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("imgbuild.cache: %v: %s", err, raw)
	}
	return m, true
}

// summaryLines returns the "imgbuild: cache: " lines of stderr.
func summaryLines(stderr string) []string {
	var out []string
	for _, l := range strings.Split(stderr, "\n") {
		if strings.HasPrefix(l, "imgbuild: cache: ") {
			out = append(out, l)
		}
	}
	return out
}

// downloadedLayerBytes sums the sizes of the distinct layer blobs of
// root's build cache records that root's store holds (the others are lazy:
// known to be in the cache's repository, never downloaded). It fails
// unless some record is lazy and some is not.
func downloadedLayerBytes(t *testing.T, root string) int64 {
	t.Helper()
	seen := map[v1.Hash]bool{}
	var n int64
	var lazy int
	for _, r := range records(t, root) {
		if seen[r.Layer.Digest] {
			continue
		}
		seen[r.Layer.Digest] = true
		if _, err := os.Stat(filepath.Join(root, "oci", "blobs", "sha256", r.Layer.Digest.Hex)); err != nil {
			lazy++
			continue
		}
		n += r.Layer.Size
	}
	if lazy == 0 || lazy == len(seen) {
		t.Errorf("%d of %d cached layers lazy, want some (the src stage's, which the result does not need)", lazy, len(seen))
	}
	return n
}

// TestCacheStatsOutput checks the cache figures of real builds: the
// "imgbuild.cache" key of --metadata-file and the summary line on stderr.
// A build exporting its cache (mode=max) counts one record per cached step
// (two for COPY --from: its key and its content's); a build in an empty
// root importing it has its CACHED steps as hits and downloads exactly the
// artifact's manifest and config and the layers of those steps that the
// result needs (not the src stage's: COPY --from hits by its key), which is
// what its store then holds; without a remote cache there is neither key
// nor line; -q writes the key but no line.
func TestCacheStatsOutput(t *testing.T) {
	f := newCacheFixture(t)
	ref := f.host + "/cache/stats:buildcache"
	meta := filepath.Join(t.TempDir(), "meta.json")
	build := func(root string, flags ...string) (stderr string) {
		t.Helper()
		args := append([]string{"--root", root, "build", "--insecure-registry", f.host, "--metadata-file", meta}, flags...)
		code, _, stderr := runCLI(t, "", append(args, f.ctxDir)...)
		if code != 0 {
			t.Fatalf("build %q: exit %d: %s", flags, code, stderr)
		}
		return stderr
	}
	wantLines := func(what, stderr string, want ...string) {
		t.Helper()
		if got := summaryLines(stderr); !slices.Equal(got, want) {
			t.Errorf("%s: summary lines %q, want %q", what, got, want)
		}
	}

	stderr := build(t.TempDir())
	if m, ok := readCacheMetadata(t, meta); ok {
		t.Errorf("without a remote cache, imgbuild.cache = %+v, want absent", m)
	}
	wantLines("without a remote cache", stderr)

	stderr = build(t.TempDir(), "--cache-to", "type=registry,ref="+ref+",mode=max")
	want := cacheMetadata{Exported: len(srcSteps) + len(finalSteps) + 1}
	if got, ok := readCacheMetadata(t, meta); got != want || !ok {
		t.Errorf("--cache-to: imgbuild.cache = %+v (present %v), want %+v", got, ok, want)
	}
	wantLines("--cache-to", stderr, "imgbuild: cache: 6 steps exported to --cache-to")

	cache, err := registry.PullCache(context.Background(), ref, registry.Options{Insecure: []string{f.host}})
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	stderr = build(root, "--cache-from", ref)
	statuses := stepStatuses(t, stderr)
	checkSteps(t, "--cache-from", statuses, append(srcSteps, finalSteps...), "CACHED")
	want = cacheMetadata{Imported: 6, Hits: len(srcSteps) + len(finalSteps),
		BytesDownloaded: cache.MetadataBytes + downloadedLayerBytes(t, root)}
	got, _ := readCacheMetadata(t, meta)
	if got != want {
		t.Errorf("--cache-from: imgbuild.cache = %+v, want %+v (metadata %d bytes)", got, want, cache.MetadataBytes)
	}
	wantLines("--cache-from", stderr, fmt.Sprintf("imgbuild: cache: 5 steps from --cache-from (6 imported), %s downloaded",
		humanSize(want.BytesDownloaded)))

	stderr = build(t.TempDir(), "-q", "--cache-from", ref)
	if got, _ := readCacheMetadata(t, meta); got != want {
		t.Errorf("-q: imgbuild.cache = %+v, want %+v", got, want)
	}
	if stderr != "" {
		t.Errorf("-q: stderr %q, want nothing", stderr)
	}
}
