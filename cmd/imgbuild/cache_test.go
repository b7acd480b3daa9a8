package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/imgbuild/imgbuild/layers"
	"github.com/imgbuild/imgbuild/registry/registrytest"
)

// stepStatuses parses plain progress output into the final status (DONE,
// CACHED or ERROR) of each step, keyed by its header: "[stage] INSTRUCTION".
// Steps of concurrent stages interleave, so lines are matched by number.
func stepStatuses(t *testing.T, progress string) map[string]string {
	t.Helper()
	header := map[string]string{} // "#3" -> "[src] RUN ..."
	out := map[string]string{}
	for _, line := range strings.Split(progress, "\n") {
		num, rest, ok := strings.Cut(line, " ")
		if !ok || !strings.HasPrefix(num, "#") {
			continue
		}
		h, seen := header[num]
		if !seen {
			header[num] = rest
			continue
		}
		switch {
		case rest == "CACHED", strings.HasPrefix(rest, "DONE "), strings.HasPrefix(rest, "ERROR"):
			if _, dup := out[h]; dup {
				t.Fatalf("step %s %q ends twice:\n%s", num, h, progress)
			}
			out[h] = strings.Fields(strings.TrimSuffix(rest, ":"))[0]
		}
	}
	for num, h := range header {
		if _, ok := out[h]; !ok {
			t.Fatalf("step %s %q never ends:\n%s", num, h, progress)
		}
	}
	return out
}

// cacheFixture is a registry holding busybox and a two-stage Dockerfile
// whose final stage has every kind of cached step.
type cacheFixture struct {
	host, base, ctxDir string
}

func newCacheFixture(t *testing.T) *cacheFixture {
	t.Helper()
	registrytest.RequireRoot(t)
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	host := registrytest.Start(t)
	base := registrytest.PushBusybox(t, host)
	df := "FROM " + base + " AS src\n" +
		"RUN echo data > /data\n" +
		"FROM " + base + "\n" +
		"WORKDIR /app\n" +
		"COPY --from=src /data /app/data\n" +
		"COPY hello.txt /app/\n" +
		"RUN cat /app/data /app/hello.txt > /app/out\n" +
		"ENV A=b\n"
	return &cacheFixture{host: host, base: base,
		ctxDir: writeContext(t, map[string]string{"Dockerfile": df, "hello.txt": "hello\n"})}
}

// build builds the fixture's context with root and flags, and returns the
// digest and the steps' statuses.
func (f *cacheFixture) build(t *testing.T, root string, flags ...string) (string, map[string]string) {
	t.Helper()
	args := append([]string{"--root", root, "build", "--insecure-registry", f.host}, flags...)
	code, stdout, stderr := runCLI(t, "", append(args, f.ctxDir)...)
	if code != 0 {
		t.Fatalf("build %q: exit %d: %s", flags, code, stderr)
	}
	return strings.TrimSpace(stdout), stepStatuses(t, stderr)
}

// The fixture's filesystem steps, by stage.
var (
	srcSteps   = []string{"[src] RUN echo data > /data"}
	finalSteps = []string{"[stage-1] WORKDIR /app", "[stage-1] COPY --from=src /data /app/data",
		"[stage-1] COPY hello.txt /app/", "[stage-1] RUN cat /app/data /app/hello.txt > /app/out"}
)

// checkSteps checks the status of each of steps.
func checkSteps(t *testing.T, what string, got map[string]string, steps []string, want string) {
	t.Helper()
	for _, s := range steps {
		if got[s] != want {
			t.Errorf("%s: %q is %q, want %s (all: %q)", what, s, got[s], want, got)
		}
	}
}

// TestBuildCacheProgress checks that a rebuild takes RUN, WORKDIR, COPY
// --from and COPY steps from the cache and says CACHED, and that
// --no-cache and --no-cache-filter (by stage name, by index, comma-separated)
// make steps run again (DONE) with the same result.
func TestBuildCacheProgress(t *testing.T) {
	f := newCacheFixture(t)
	root := t.TempDir()
	digest, got := f.build(t, root, "-t", "app:1")
	checkSteps(t, "first build", got, append(srcSteps, finalSteps...), "DONE")

	tests := []struct {
		name           string
		flags          []string
		srcWant, final string
	}{
		{"rebuild", nil, "CACHED", "CACHED"},
		{"--no-cache", []string{"--no-cache"}, "DONE", "DONE"},
		{"--no-cache-filter by name", []string{"--no-cache-filter", "src"}, "DONE", "CACHED"},
		{"--no-cache-filter by index", []string{"--no-cache-filter=1"}, "CACHED", "DONE"},
		{"--no-cache-filter comma-separated", []string{"--no-cache-filter", "src,1"}, "DONE", "DONE"},
		{"--no-cache-filter repeated", []string{"--no-cache-filter", "SRC", "--no-cache-filter", "1"}, "DONE", "DONE"},
		{"--no-cache-filter of no stage", []string{"--no-cache-filter", "nosuch"}, "CACHED", "CACHED"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, got := f.build(t, root, tt.flags...)
			checkSteps(t, tt.name, got, srcSteps, tt.srcWant)
			checkSteps(t, tt.name, got, finalSteps, tt.final)
			if h := "[stage-1] ENV A=b"; got[h] != "DONE" {
				t.Errorf("%q is %q, want DONE (metadata steps are never cached)", h, got[h])
			}
			if d != digest {
				t.Errorf("digest %s, want %s as the first build's", d, digest)
			}
		})
	}
}

// ageRecords makes the build cache records whose CreatedBy contains substr
// look last used age ago, by rewriting their files (ROOT/cache/steps/KEY).
func ageRecords(t *testing.T, root, substr string, age time.Duration) int {
	t.Helper()
	dir := filepath.Join(root, "cache", "steps")
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		var rec layers.CacheRecord
		if err := json.Unmarshal(b, &rec); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if !strings.Contains(rec.CreatedBy, substr) {
			continue
		}
		rec.LastUsed = time.Now().Add(-age).UTC()
		if b, err = json.Marshal(rec); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		n++
	}
	return n
}

// records returns the build cache records of root by CreatedBy.
func records(t *testing.T, root string) map[string]layers.CacheRecord {
	t.Helper()
	st, err := layers.OpenStore(context.Background(), root)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := st.CacheRecords(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]layers.CacheRecord{}
	for _, r := range recs {
		out[r.CreatedBy] = r
	}
	return out
}

func createdBys(m map[string]layers.CacheRecord) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// blobExists reports whether root's store holds blob h.
func blobExists(root string, h v1.Hash) bool {
	_, err := os.Stat(filepath.Join(root, "oci", "blobs", h.Algorithm, h.Hex))
	return err == nil
}

// TestPruneBuildCache populates a store with two real builds, a tagged
// image A (a small and a 300 kB RUN layer) and an untagged B (two small RUN
// layers), and checks prune without options, --filter until=, --keep-storage
// and --all.
func TestPruneBuildCache(t *testing.T) {
	registrytest.RequireRoot(t)
	host := registrytest.Start(t)
	base := registrytest.PushBusybox(t, host)
	root := t.TempDir()
	ctxA := writeContext(t, map[string]string{"Dockerfile": "FROM " + base + "\nRUN echo a > /a\nRUN head -c 300000 /dev/urandom > /big\n"})
	ctxB := writeContext(t, map[string]string{"Dockerfile": "FROM " + base + "\nRUN echo b1 > /b1\nRUN echo b2 > /b2\n"})
	build := func(ctxDir string, flags ...string) map[string]string {
		t.Helper()
		args := append([]string{"--root", root, "build", "--insecure-registry", host}, flags...)
		code, _, stderr := runCLI(t, "", append(args, ctxDir)...)
		if code != 0 {
			t.Fatalf("build %s: exit %d: %s", ctxDir, code, stderr)
		}
		return stepStatuses(t, stderr)
	}
	prune := func(wantRecords string, flags ...string) {
		t.Helper()
		out, _ := mustRun(t, 0, append([]string{"--root", root, "prune"}, flags...)...)
		if want := "Deleted " + wantRecords + " build cache records, "; !strings.HasPrefix(out, want) {
			t.Errorf("prune %q: output %q, want %q...", flags, out, want)
		}
	}
	const (
		a1, a2 = "RUN /bin/sh -c echo a > /a # buildkit", "RUN /bin/sh -c head -c 300000 /dev/urandom > /big # buildkit"
		b1, b2 = "RUN /bin/sh -c echo b1 > /b1 # buildkit", "RUN /bin/sh -c echo b2 > /b2 # buildkit"
	)
	wantRecords := func(what string, want ...string) {
		t.Helper()
		slices.Sort(want)
		if got := createdBys(records(t, root)); !slices.Equal(got, want) {
			t.Errorf("%s: build cache records %q, want %q", what, got, want)
		}
	}

	build(ctxA, "-t", "app:1")
	build(ctxB)
	wantRecords("after two builds", a1, a2, b1, b2)
	bLayer := records(t, root)[b2].Layer.Digest

	// No option: the build cache stays, and with it B's layers.
	prune("0")
	wantRecords("after prune", a1, a2, b1, b2)
	if got := build(ctxB); got["[stage-0] RUN echo b2 > /b2"] != "CACHED" {
		t.Errorf("after prune without options, B's rebuild: %q, want its RUN steps CACHED", got)
	}

	// --filter until=: B's records, last used two days ago, go.
	if n := ageRecords(t, root, "echo b", 48*time.Hour); n != 2 {
		t.Fatalf("aged %d records, want 2", n)
	}
	prune("0", "--filter", "until=72h")
	prune("2", "--filter", "until=1d")
	wantRecords("after prune --filter until=1d", a1, a2)
	if blobExists(root, bLayer) {
		t.Errorf("B's layer %s survived the prune of its record (B is untagged)", bLayer)
	}
	got := build(ctxB)
	checkSteps(t, "B's rebuild after its records were pruned", got, []string{"[stage-0] RUN echo b1 > /b1", "[stage-0] RUN echo b2 > /b2"}, "DONE")

	// --keep-storage: the least recently used records go until the rest
	// fit, and A's big layer does not; its blob stays (app:1 uses it).
	ageRecords(t, root, "echo a", time.Hour)
	ageRecords(t, root, "head -c", 2*time.Hour)
	big := records(t, root)[a2].Layer
	if big.Size < 300000 {
		t.Fatalf("A's big layer is %d bytes, want at least 300000", big.Size)
	}
	prune("0", "--keep-storage", "1MB")
	prune("1", "--keep-storage", "100KB")
	wantRecords("after prune --keep-storage 100KB", a1, b1, b2)
	if !blobExists(root, big.Digest) {
		t.Errorf("the big layer %s of the tagged app:1 was deleted", big.Digest)
	}

	// --all: nothing of the build cache is left; the tagged image is whole.
	prune("3", "--all")
	wantRecords("after prune --all")
	if out, _ := mustRun(t, 0, "--root", root, "images"); !strings.Contains(out, "app ") {
		t.Errorf("images after prune --all:\n%s", out)
	}
	mustRun(t, 0, "--root", root, "save", "-o", filepath.Join(t.TempDir(), "app.tar"), "app:1")
	got = build(ctxA, "-t", "app:1")
	checkSteps(t, "A's rebuild after prune --all", got, []string{"[stage-0] RUN echo a > /a"}, "DONE")
}

// TestRemoteCacheFlags checks --cache-to and --cache-from through the CLI:
// a build exports its cache to a local layout (mode=min) and to the
// registry (mode=max), and builds in empty state directories take their
// steps from either and say CACHED.
func TestRemoteCacheFlags(t *testing.T) {
	f := newCacheFixture(t)
	dir := filepath.Join(t.TempDir(), "cache")
	ref := f.host + "/cache/app:buildcache"
	digest, got := f.build(t, t.TempDir(), "--cache-to", "type=local,dest="+dir, "--cache-to", "type=registry,ref="+ref+",mode=max")
	checkSteps(t, "exporting build", got, append(srcSteps, finalSteps...), "DONE")

	// mode=min: the target stage's steps only; the src stage runs.
	d, got := f.build(t, t.TempDir(), "--cache-from", "type=local,src="+dir)
	checkSteps(t, "--cache-from type=local", got, srcSteps, "DONE")
	checkSteps(t, "--cache-from type=local", got, finalSteps, "CACHED")
	if d != digest {
		t.Errorf("--cache-from type=local: digest %s, want %s", d, digest)
	}

	// mode=max, the bare reference form: every stage's steps.
	d, got = f.build(t, t.TempDir(), "--cache-from", ref)
	checkSteps(t, "--cache-from REF", got, append(srcSteps, finalSteps...), "CACHED")
	if d != digest {
		t.Errorf("--cache-from REF: digest %s, want %s", d, digest)
	}
}

// TestCacheFromWarnings checks that a --cache-from cache that cannot be
// read is a warning line on stderr, in every progress mode and with -q,
// and not a failed build.
func TestCacheFromWarnings(t *testing.T) {
	f := newCacheFixture(t)
	missingDir := filepath.Join(t.TempDir(), "nosuch")
	missingRef := f.host + "/cache/nosuch:buildcache"
	wantWarnings := []string{
		"imgbuild: warning: --cache-from type=local,src=" + missingDir + ": ",
		"imgbuild: warning: --cache-from type=registry,ref=" + missingRef + ": ",
	}
	for _, mode := range [][]string{{"--progress=plain"}, {"--progress=json"}, {"-q"}} {
		t.Run(mode[0], func(t *testing.T) {
			args := append([]string{"--root", t.TempDir(), "build", "--insecure-registry", f.host,
				"--cache-from", "type=local,src=" + missingDir, "--cache-from", missingRef}, mode...)
			code, stdout, stderr := runCLI(t, "", append(args, f.ctxDir)...)
			if code != 0 || !strings.HasPrefix(stdout, "sha256:") {
				t.Fatalf("exit %d, stdout %q, want 0 and a digest: %s", code, stdout, stderr)
			}
			var warnings []string
			for _, l := range strings.Split(stderr, "\n") {
				if strings.HasPrefix(l, "imgbuild: ") {
					warnings = append(warnings, l)
				}
			}
			if len(warnings) != len(wantWarnings) {
				t.Fatalf("stderr has %d imgbuild: lines, want %d warnings:\n%s", len(warnings), len(wantWarnings), stderr)
			}
			for _, w := range wantWarnings {
				if !slices.ContainsFunc(warnings, func(l string) bool {
					return strings.HasPrefix(l, w) && strings.HasSuffix(l, "; building without it")
				}) {
					t.Errorf("no warning %q...; building without it in:\n%s", w, stderr)
				}
			}
			if mode[0] == "-q" && len(strings.Split(strings.TrimSpace(stderr), "\n")) != len(wantWarnings) {
				t.Errorf("-q: stderr has more than the warnings:\n%s", stderr)
			}
		})
	}
}
