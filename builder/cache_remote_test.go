package builder_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/imgbuild/imgbuild/builder"
	"github.com/imgbuild/imgbuild/builder/run"
	"github.com/imgbuild/imgbuild/layers"
	"github.com/imgbuild/imgbuild/registry"
	"github.com/imgbuild/imgbuild/registry/registrytest"
)

// crDockerfile has two stages: "build" (3 cached steps) and the final one
// (3 cached steps, one of them COPY --from=build, which makes two records:
// one by the source stage's key, one by the content it copied). Every RUN writes the
// time in nanoseconds, so a RUN that runs again makes another layer.
const crDockerfile = `FROM busybox AS build
RUN echo built > /artifact && date +%s%N > /stamp
WORKDIR /work
RUN date +%s%N > /work/more

FROM busybox
WORKDIR /app
COPY --from=build /artifact /app/artifact
RUN cat /app/artifact > /app/copy && date +%s%N > /app/n
`

// crMachine is one machine of a remote cache test: a fresh store holding
// only the busybox image, whose RUN steps are counted.
type crMachine struct {
	t     *testing.T
	store *layers.Store
	exec  *countingExecutor
	ctx   string // build context directory

	mu    sync.Mutex
	warns []string
}

type countingExecutor struct {
	run.Executor
	runs atomic.Int64
}

func (c *countingExecutor) Run(ctx context.Context, spec run.Spec) error {
	c.runs.Add(1)
	return c.Executor.Run(ctx, spec)
}

func newCRMachine(t *testing.T, contextDir string) *crMachine {
	t.Helper()
	st := rtStore(t)
	ex, err := run.New(run.Options{StateDir: builder.RunStateDir(st)})
	if err != nil {
		t.Fatal(err)
	}
	return &crMachine{t: t, store: st, exec: &countingExecutor{Executor: ex}, ctx: contextDir}
}

// build builds the context with SOURCE_DATE_EPOCH set and returns the
// result and how many RUN steps ran.
func (m *crMachine) build(mod func(*builder.Options)) (*builder.Result, int) {
	m.t.Helper()
	before := m.exec.runs.Load()
	opts := builder.Options{
		ContextDir: m.ctx, Store: m.store, Executor: m.exec,
		BuildArgs: map[string]string{"SOURCE_DATE_EPOCH": "1700000000"},
		Warn: func(msg string) {
			m.mu.Lock()
			defer m.mu.Unlock()
			m.warns = append(m.warns, msg)
		},
	}
	if mod != nil {
		mod(&opts)
	}
	res := btBuild(m.t, opts)
	return res, int(m.exec.runs.Load() - before)
}

func (m *crMachine) warnings() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.warns...)
}

func cacheTo(t *testing.T, s string) []builder.CacheSpec {
	t.Helper()
	spec, err := builder.ParseCacheSpec(s, true)
	if err != nil {
		t.Fatal(err)
	}
	return []builder.CacheSpec{spec}
}

func cacheFrom(t *testing.T, ss ...string) []builder.CacheSpec {
	t.Helper()
	var out []builder.CacheSpec
	for _, s := range ss {
		spec, err := builder.ParseCacheSpec(s, false)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, spec)
	}
	return out
}

// layerBytes sums the sizes of the layers of img not in base.
func layerBytes(t *testing.T, img v1.Image, base v1.Image) int64 {
	t.Helper()
	have := map[v1.Hash]bool{}
	bls, err := base.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range bls {
		d, _ := l.Digest()
		have[d] = true
	}
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, l := range ls {
		d, _ := l.Digest()
		if !have[d] {
			have[d] = true
			sz, _ := l.Size()
			n += sz
		}
	}
	return n
}

func busyboxIn(t *testing.T, st *layers.Store) v1.Image {
	t.Helper()
	img, err := st.Image(context.Background(), "busybox")
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// TestRemoteCacheRegistry: machine A builds and exports its cache to
// Debian's docker-registry; machine B, an empty store, builds the same
// with --cache-from without running a RUN and gets the same image,
// downloading only the layers of its steps.
func TestRemoteCacheRegistry(t *testing.T) {
	host := registrytest.Start(t)
	reg := registry.Options{Insecure: []string{host}, Keychain: authn.NewMultiKeychain()}
	dir := btContext(t, map[string]string{"Dockerfile": crDockerfile})
	ref := host + "/app:buildcache"

	a := newCRMachine(t, dir)
	resA, runs := a.build(func(o *builder.Options) {
		o.Registry = reg
		o.CacheTo = cacheTo(t, "type=registry,ref="+ref+",mode=max")
	})
	if runs != 3 || resA.Cache.Exported != 7 {
		t.Fatalf("machine A ran %d RUNs (want 3), exported %d records (want 7)", runs, resA.Cache.Exported)
	}
	cache, err := registry.PullCache(context.Background(), ref, reg)
	if err != nil {
		t.Fatal(err)
	}

	b := newCRMachine(t, dir)
	resB, runs := b.build(func(o *builder.Options) {
		o.Registry = reg
		o.CacheFrom = cacheFrom(t, "type=registry,ref="+ref)
	})
	if runs != 0 {
		t.Errorf("machine B ran %d RUNs, want 0", runs)
	}
	if resB.Digest != resA.Digest {
		t.Errorf("machine B built %s, machine A %s", resB.Digest, resA.Digest)
	}
	// The target needs the build stage's result (its key), so all six
	// steps come from the cache; the build stage's layers are fetched
	// too: each step's layer is stored with its record.
	if resB.Cache.Imported != 7 || resB.Cache.Hits != 6 {
		t.Errorf("machine B: %+v, want 7 records imported and 6 hits", resB.Cache)
	}
	if w := b.warnings(); len(w) != 0 {
		t.Errorf("warnings: %q", w)
	}
	// A rebuild on B is a local hit: nothing more is downloaded.
	res2, runs := b.build(func(o *builder.Options) {
		o.Registry = reg
		o.CacheFrom = cacheFrom(t, "type=registry,ref="+ref)
	})
	if runs != 0 || res2.Digest != resA.Digest || res2.Cache.Hits != 0 || res2.Cache.BytesDownloaded != cache.MetadataBytes {
		t.Errorf("rebuild on B: %d RUNs, %s, %+v (metadata %d bytes)", runs, res2.Digest, res2.Cache, cache.MetadataBytes)
	}

	t.Run("only the steps' layers are downloaded", func(t *testing.T) {
		// A cache holding both stages, a build of the first: what is
		// downloaded is the metadata and that stage's layers, nothing of
		// the other stage's.
		c := newCRMachine(t, dir)
		res, runs := c.build(func(o *builder.Options) {
			o.Registry = reg
			o.CacheFrom = cacheFrom(t, "type=registry,ref="+ref)
			o.Target = "build"
		})
		want := cache.MetadataBytes + layerBytes(t, res.Image, busyboxIn(t, c.store))
		if runs != 0 || res.Cache.Hits != 3 || res.Cache.BytesDownloaded != want {
			t.Errorf("--target build: %d RUNs, %+v, want 3 hits and %d bytes downloaded", runs, res.Cache, want)
		}
	})
}

// TestRemoteCacheLocal: the same through type=local directories, and
// mode=min against mode=max.
func TestRemoteCacheLocal(t *testing.T) {
	dir := btContext(t, map[string]string{"Dockerfile": crDockerfile})
	out := t.TempDir()
	maxDir, minDir := filepath.Join(out, "max"), filepath.Join(out, "min")
	a := newCRMachine(t, dir)
	resA, _ := a.build(func(o *builder.Options) {
		o.CacheTo = append(cacheTo(t, "type=local,dest="+maxDir+",mode=max"), cacheTo(t, "type=local,dest="+minDir)...)
	})
	ctx := context.Background()
	for _, tc := range []struct {
		dir     string
		records int
	}{{maxDir, 7}, {minDir, 4}} {
		c, err := registry.ReadCacheLayout(ctx, tc.dir)
		if err != nil {
			t.Fatal(err)
		}
		if c.Len() != tc.records {
			t.Errorf("%s: %d records, want %d", tc.dir, c.Len(), tc.records)
		}
	}

	b := newCRMachine(t, dir)
	resB, runs := b.build(func(o *builder.Options) { o.CacheFrom = cacheFrom(t, "type=local,src="+maxDir) })
	if runs != 0 || resB.Digest != resA.Digest || resB.Cache.Hits != 6 {
		t.Errorf("from mode=max: %d RUNs, %s (want %s), %+v", runs, resB.Digest, resA.Digest, resB.Cache)
	}

	// mode=min holds the final stage's steps only: the build stage runs
	// again. Its keys do not depend on what its RUNs wrote, so the final
	// stage's three steps (COPY --from included) still come from the cache
	// and the image is A's.
	c := newCRMachine(t, dir)
	resC, runs := c.build(func(o *builder.Options) { o.CacheFrom = cacheFrom(t, "type=local,src="+minDir) })
	if runs != 2 || resC.Cache.Hits != 3 || resC.Digest != resA.Digest {
		t.Errorf("from mode=min: %d RUNs (want 2), %+v (want 3 hits), %s (want %s)", runs, resC.Cache, resC.Digest, resA.Digest)
	}
}

// TestRemoteCacheBroken: a missing ref and a corrupt layer are warnings;
// the build succeeds, the corrupt layer's step runs.
func TestRemoteCacheBroken(t *testing.T) {
	host := registrytest.Start(t)
	reg := registry.Options{Insecure: []string{host}, Keychain: authn.NewMultiKeychain()}
	dir := btContext(t, map[string]string{"Dockerfile": crDockerfile})
	cacheDir := filepath.Join(t.TempDir(), "cache")
	a := newCRMachine(t, dir)
	resA, _ := a.build(func(o *builder.Options) { o.CacheTo = cacheTo(t, "type=local,dest="+cacheDir+",mode=max") })

	t.Run("missing", func(t *testing.T) {
		b := newCRMachine(t, dir)
		_, runs := b.build(func(o *builder.Options) {
			o.Registry = reg
			o.CacheFrom = cacheFrom(t, "type=registry,ref="+host+"/nope:cache", "type=local,src="+filepath.Join(t.TempDir(), "none"))
		})
		w := b.warnings()
		if runs != 3 || len(w) != 2 || !strings.Contains(w[0], host+"/nope:cache") || !strings.Contains(w[1], "none") {
			t.Errorf("%d RUNs, warnings %q", runs, w)
		}
	})
	t.Run("corrupt layer", func(t *testing.T) {
		ls, err := resA.Image.Layers()
		if err != nil {
			t.Fatal(err)
		}
		last, _ := ls[len(ls)-1].Digest() // the final RUN's
		p := filepath.Join(cacheDir, "blobs", "sha256", last.Hex)
		blob, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		blob[len(blob)/2] ^= 1
		if err := os.WriteFile(p, blob, 0o644); err != nil {
			t.Fatal(err)
		}
		b := newCRMachine(t, dir)
		res, runs := b.build(func(o *builder.Options) { o.CacheFrom = cacheFrom(t, "type=local,src="+cacheDir) })
		w := b.warnings()
		if runs != 1 || res.Cache.Hits != 5 || len(w) != 1 || !strings.Contains(w[0], "cat /app/artifact > /app/copy") ||
			!strings.Contains(w[0], "digest") {
			t.Errorf("%d RUNs (want 1), %+v, warnings %q", runs, res.Cache, w)
		}
		if res.Digest == resA.Digest {
			t.Error("the step that ran again made the same layer: the test proves nothing")
		}
	})
	t.Run("no-cache", func(t *testing.T) {
		b := newCRMachine(t, dir)
		res, runs := b.build(func(o *builder.Options) {
			o.NoCache = true
			o.CacheFrom = cacheFrom(t, "type=local,src="+cacheDir)
		})
		if runs != 3 || res.Cache.Imported != 0 || res.Cache.BytesDownloaded != 0 {
			t.Errorf("--no-cache: %d RUNs, %+v", runs, res.Cache)
		}
	})
}

// TestRemoteCacheExportFails: a --cache-to that cannot be written fails
// the build (as BuildKit's), naming it; with ignore-error=true it is a
// warning.
func TestRemoteCacheExportFails(t *testing.T) {
	dir := btContext(t, map[string]string{"Dockerfile": "FROM busybox\nWORKDIR /x\n"})
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	closed := "127.0.0.1:1" // nothing listens on port 1
	for _, spec := range []string{"type=local,dest=" + file + "/sub", "type=registry,ref=" + closed + "/app:cache"} {
		m := newCRMachine(t, dir)
		_, err := builder.Build(context.Background(), builder.Options{
			ContextDir: dir, Store: m.store, Executor: m.exec,
			Registry: registry.Options{Insecure: []string{closed}, Keychain: authn.NewMultiKeychain()},
			CacheTo:  cacheTo(t, spec),
		})
		t.Logf("%s: %v", spec, err)
		if err == nil || !strings.Contains(err.Error(), "--cache-to") {
			t.Errorf("%s: %v, want an export error", spec, err)
		}
		// ignore-error=true: a warning, and the build succeeds.
		res, _ := m.build(func(o *builder.Options) {
			o.Registry = registry.Options{Insecure: []string{closed}, Keychain: authn.NewMultiKeychain()}
			o.CacheTo = cacheTo(t, spec+",ignore-error=true")
		})
		if w := m.warnings(); len(w) != 1 || !strings.Contains(w[0], "ignore-error=true") || res.Cache.Exported != 0 {
			t.Errorf("%s,ignore-error=true: warnings %q, %+v", spec, w, res.Cache)
		}
	}
}

// TestRemoteCacheContextCopy: COPY from the build context hits across
// machines (the key is the sources' content, not their mtimes); one
// changed source file runs only the steps from its COPY on, and only the
// layers of the steps before it are downloaded.
func TestRemoteCacheContextCopy(t *testing.T) {
	host := registrytest.Start(t)
	reg := registry.Options{Insecure: []string{host}, Keychain: authn.NewMultiKeychain()}
	ref := host + "/app/cache:main"
	df := `FROM busybox
WORKDIR /app
COPY deps.txt /app/
RUN cat /app/deps.txt > /app/deps.out && date +%s%N >> /app/deps.out
COPY src/ /app/src/
RUN ls /app/src > /app/list && date +%s%N >> /app/list
`
	files := map[string]string{"Dockerfile": df, "deps.txt": "dep 1\n", "src/main.c": "int main() {}\n", "src/util.c": "int u;\n"}
	a := newCRMachine(t, btContext(t, files))
	resA, runs := a.build(func(o *builder.Options) {
		o.Registry = reg
		o.CacheTo = cacheTo(t, "type=registry,ref="+ref)
	})
	if runs != 2 || resA.Cache.Exported != 5 {
		t.Fatalf("machine A: %d RUNs, %+v", runs, resA.Cache)
	}

	// Machine B checks the same files out later (other mtimes).
	time.Sleep(10 * time.Millisecond)
	b := newCRMachine(t, btContext(t, files))
	resB, runs := b.build(func(o *builder.Options) {
		o.Registry = reg
		o.CacheFrom = cacheFrom(t, "type=registry,ref="+ref)
	})
	if runs != 0 || resB.Digest != resA.Digest || resB.Cache.Hits != 5 {
		t.Errorf("machine B: %d RUNs, %s (want %s), %+v", runs, resB.Digest, resA.Digest, resB.Cache)
	}

	// Machine C has one source file changed.
	files["src/util.c"] = "int u = 1;\n"
	c := newCRMachine(t, btContext(t, files))
	resC, runs := c.build(func(o *builder.Options) {
		o.Registry = reg
		o.CacheFrom = cacheFrom(t, "type=registry,ref="+ref)
	})
	cache, err := registry.PullCache(context.Background(), ref, reg)
	if err != nil {
		t.Fatal(err)
	}
	ls, err := resC.Image.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var want int64 // the layers of WORKDIR, COPY deps.txt and its RUN
	for _, l := range ls[len(ls)-5 : len(ls)-2] {
		sz, _ := l.Size()
		want += sz
	}
	if runs != 1 || resC.Cache.Hits != 3 || resC.Cache.BytesDownloaded != cache.MetadataBytes+want {
		t.Errorf("machine C: %d RUNs (want 1), %+v (want 3 hits, %d bytes)", runs, resC.Cache, cache.MetadataBytes+want)
	}
}
