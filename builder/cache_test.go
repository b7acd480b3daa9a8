package builder_test

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/imgbuild/imgbuild/builder"
	"github.com/imgbuild/imgbuild/builder/run"
	"github.com/imgbuild/imgbuild/layers"
)

// runCounter counts the RUN steps that really run.
type runCounter struct {
	run.Executor
	n atomic.Int64
}

func (c *runCounter) Run(ctx context.Context, spec run.Spec) error {
	c.n.Add(1)
	return c.Executor.Run(ctx, spec)
}

// cacheFixture builds Dockerfiles in one store, counting RUNs and
// recording which steps came from the cache.
type cacheFixture struct {
	t    *testing.T
	st   *layers.Store
	exec *runCounter
	dir  string
}

func newCacheFixture(t *testing.T, files map[string]string) *cacheFixture {
	st := rtStore(t)
	e, err := run.New(run.Options{StateDir: builder.RunStateDir(st)})
	if err != nil {
		t.Fatal(err)
	}
	return &cacheFixture{t: t, st: st, exec: &runCounter{Executor: e}, dir: btContext(t, files)}
}

// build returns the result, the RUNs executed and the instructions
// reported CACHED.
func (f *cacheFixture) build(mod func(*builder.Options)) (*builder.Result, int64, map[string]bool) {
	f.t.Helper()
	before := f.exec.n.Load()
	var mu sync.Mutex
	cached := map[string]bool{}
	opts := builder.Options{ContextDir: f.dir, Store: f.st, Executor: f.exec,
		BuildArgs: map[string]string{"SOURCE_DATE_EPOCH": "1700000000"},
		Progress: func(ev builder.Event) {
			if ev.Cached {
				mu.Lock()
				cached[ev.Instruction] = true
				mu.Unlock()
			}
		}}
	if mod != nil {
		mod(&opts)
	}
	res := btBuild(f.t, opts)
	return res, f.exec.n.Load() - before, cached
}

const cacheDockerfile = `FROM busybox AS base
ARG UNUSED=1
WORKDIR /app
COPY src/ ./src/
RUN cat src/a src/b > /app/ab
ARG LATE=x
RUN echo "$LATE" > /late
FROM busybox
COPY --from=base /app/ab /ab
RUN wc -c /ab > /n
`

func TestCacheRebuild(t *testing.T) {
	f := newCacheFixture(t, map[string]string{"Dockerfile": cacheDockerfile, "src/a": "a", "src/b": "b", "other": "o"})
	first, runs, _ := f.build(nil)
	if runs != 3 {
		t.Fatalf("first build ran %d RUNs, want 3", runs)
	}
	t.Run("no-op rebuild runs nothing", func(t *testing.T) {
		res, runs, cached := f.build(nil)
		if runs != 0 || res.Digest != first.Digest {
			t.Errorf("ran %d RUNs, digest %s (first %s)", runs, res.Digest, first.Digest)
		}
		for _, ins := range []string{"WORKDIR /app", "COPY src/ ./src/", "RUN cat src/a src/b > /app/ab", "COPY --from=base /app/ab /ab", "RUN wc -c /ab > /n"} {
			if !cached[ins] {
				t.Errorf("%q not CACHED (cached: %v)", ins, cached)
			}
		}
	})
	t.Run("mtime and unselected files do not matter", func(t *testing.T) {
		future := time.Now().Add(time.Hour)
		os.Chtimes(filepath.Join(f.dir, "src/a"), future, future)
		os.WriteFile(filepath.Join(f.dir, "other"), []byte("changed"), 0o644)
		if _, runs, _ := f.build(nil); runs != 0 {
			t.Errorf("ran %d RUNs", runs)
		}
	})
	t.Run("an unused ARG does not invalidate, a used one does", func(t *testing.T) {
		_, runs, cached := f.build(func(o *builder.Options) { o.BuildArgs["UNUSED"] = "2"; o.BuildArgs["LATE"] = "y" })
		// UNUSED is in scope of both RUNs of base (they see it in their
		// environment, as under BuildKit): only steps before it stay cached.
		if !cached["WORKDIR /app"] || !cached["COPY src/ ./src/"] || cached["RUN echo \"$LATE\" > /late"] {
			t.Errorf("cached %v", cached)
		}
		if runs != 2 { // both RUNs of base; the last stage's inputs are unchanged
			t.Errorf("ran %d RUNs, want 2", runs)
		}
	})
	t.Run("a selected file's content invalidates COPY and what follows", func(t *testing.T) {
		os.WriteFile(filepath.Join(f.dir, "src/b"), []byte("B!"), 0o644)
		res, runs, cached := f.build(nil)
		if cached["COPY src/ ./src/"] || !cached["WORKDIR /app"] || runs != 3 {
			t.Errorf("ran %d RUNs, cached %v", runs, cached)
		}
		if got := btFlatten(t, res.Image)["n"].Content; got != "3 /ab\n" {
			t.Errorf("/n = %q", got)
		}
	})
	t.Run("no-cache and no-cache-filter", func(t *testing.T) {
		if _, runs, cached := f.build(func(o *builder.Options) { o.NoCache = true }); runs != 3 || len(cached) != 0 {
			t.Errorf("--no-cache: ran %d RUNs, cached %v", runs, cached)
		}
		_, runs, cached := f.build(func(o *builder.Options) { o.NoCacheFilter = []string{"base"} })
		if runs != 2 || cached["WORKDIR /app"] || !cached["RUN wc -c /ab > /n"] {
			t.Errorf("--no-cache-filter base: ran %d RUNs, cached %v", runs, cached)
		}
	})
}

// TestCacheCorruptBlob: a cached layer whose blob was damaged is detected
// by its digest and rebuilt, never used.
func TestCacheCorruptBlob(t *testing.T) {
	f := newCacheFixture(t, map[string]string{"Dockerfile": "FROM busybox\nRUN echo hello > /h\n"})
	first, _, _ := f.build(nil)
	ls, err := first.Image.Layers()
	if err != nil {
		t.Fatal(err)
	}
	d, err := ls[len(ls)-1].Digest()
	if err != nil {
		t.Fatal(err)
	}
	blob := filepath.Join(f.st.OCILayout(), "blobs", "sha256", d.Hex)
	for _, damage := range []func([]byte) []byte{
		func(b []byte) []byte { b[len(b)/2] ^= 0xff; return b }, // a flipped byte
		func(b []byte) []byte { return b[:len(b)-3] },           // truncated
	} {
		b, err := os.ReadFile(blob)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(blob, damage(b), 0o644); err != nil {
			t.Fatal(err)
		}
		res, runs, cached := f.build(nil)
		if runs != 1 || len(cached) != 0 || res.Digest != first.Digest {
			t.Errorf("after damage: ran %d RUNs, cached %v, digest %s want %s", runs, cached, res.Digest, first.Digest)
		}
	}
}

// TestCacheConcurrentBuilds: two builds sharing a root at once both succeed
// with the same result.
func TestCacheConcurrentBuilds(t *testing.T) {
	f := newCacheFixture(t, map[string]string{"Dockerfile": "FROM busybox\nCOPY . /ctx\nRUN ls /ctx > /l && sleep 0.2\n", "x": "x"})
	var wg sync.WaitGroup
	digests := make([]v1.Hash, 2)
	errs := make([]error, 2)
	for i := range 2 {
		wg.Go(func() {
			res, err := builder.Build(context.Background(), builder.Options{ContextDir: f.dir, Store: f.st,
				BuildArgs: map[string]string{"SOURCE_DATE_EPOCH": "1700000000"}})
			if err == nil {
				digests[i] = res.Digest
			}
			errs[i] = err
		})
	}
	wg.Wait()
	if errs[0] != nil || errs[1] != nil || digests[0] != digests[1] {
		t.Errorf("errors %v, %v; digests %s, %s", errs[0], errs[1], digests[0], digests[1])
	}
}
