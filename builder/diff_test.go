package builder_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/imgbuild/imgbuild/builder"
	"github.com/imgbuild/imgbuild/layers"
	"github.com/imgbuild/imgbuild/registry"
	"github.com/imgbuild/imgbuild/registry/registrytest"
)

// diffDumpEnv names a directory; when set, TestDifferentialBuildah writes
// there, per case, the BuildKit reference (buildah's snapshot with the case's
// differences applied) and imgbuild's snapshot as JSON, for debugging.
const diffDumpEnv = "IMGBUILD_DIFF_DUMP"

// maxReportedDiffs bounds the differences printed per case.
const maxReportedDiffs = 40

// TestDifferentialBuildah builds every case of testdata/diff with Debian's
// buildah (`buildah bud --format docker --layers`) and with builder.Build,
// from the same context, Dockerfile text and build args, and compares the
// flattened filesystems (type, mode, owner, size, content hash, link target,
// xattrs of every path) and the config fields a Dockerfile sets. Where
// buildah 1.28 departs from BuildKit's documented behaviour, the case's
// case.json records buildah's value and BuildKit's; BuildKit's is what
// imgbuild must produce. Every imgbuild image must also pass validate.Image.
//
// The buildah builds are most of the time. They run referenceWorkers at a
// time, each worker with its own buildah storage (buildah processes sharing
// one serialize on its locks), queued before the subtests start waiting.
func TestDifferentialBuildah(t *testing.T) {
	registrytest.RequireRoot(t)
	cases := loadCases(t)
	host := registrytest.Start(t)
	base := registrytest.PushBusybox(t, host)
	store, err := layers.OpenStore(t.Context(), t.TempDir())
	if err != nil {
		t.Fatalf("opening store: %v", err)
	}
	files := httptest.NewServer(http.FileServer(http.Dir(diffCorpus)))
	t.Cleanup(files.Close)
	env := &diffEnv{
		store:  store,
		host:   host,
		tokens: strings.NewReplacer(registryToken, host, httpToken, files.URL),
		args: map[string]string{
			"BASE":         base,
			"BASE_REPO":    strings.TrimSuffix(base, ":latest"),
			"BASE_DIGEST":  pinnedRef(t, base),
			"ONBUILD_BASE": pushOnbuildImage(t, host),
		},
		dump: os.Getenv(diffDumpEnv),
		work: t.TempDir(),
	}
	queue := env.startReferences(t, len(cases))
	for _, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			// Before t.Parallel, so only the cases -run selects are
			// queued, and all of them before any subtest waits.
			ref := &reference{c: c, done: make(chan struct{})}
			queue <- ref
			t.Parallel()
			env.runCase(t, c, ref)
		})
	}
	close(queue)
}

// referenceWorkers is how many buildah builds run at once.
const referenceWorkers = 4

type diffEnv struct {
	store  *layers.Store
	host   string
	tokens *strings.Replacer
	args   map[string]string
	dump   string
	work   string // one subdirectory per case
}

// reference is a case's prepared context and BuildKit reference snapshot
// (buildah's, with the case's differences applied); done is closed when set.
type reference struct {
	c        diffCase
	done     chan struct{}
	ctxDir   string
	args     map[string]string
	snapshot *snapshot
	took     time.Duration
	err      error
}

// startReferences starts the workers that build the references sent to the
// returned channel; the caller closes it.
func (e *diffEnv) startReferences(t *testing.T, n int) chan<- *reference {
	queue := make(chan *reference, n)
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait) // before the temporary directories go
	ctx := t.Context()
	for range referenceWorkers {
		// One buildah state directory per worker: buildah instances
		// sharing a storage root serialize on its locks.
		bd := newBuildah(t)
		wg.Go(func() {
			for r := range queue {
				e.buildReference(ctx, bd, r)
				close(r.done)
			}
		})
	}
	return queue
}

func (e *diffEnv) buildReference(ctx context.Context, bd *buildah, r *reference) {
	c := r.c
	dir := filepath.Join(e.work, c.Name)
	r.ctxDir = filepath.Join(dir, "context")
	buildahDockerfile, err := c.prepareContext(r.ctxDir, e.tokens)
	if err != nil {
		r.err = fmt.Errorf("preparing context: %w", err)
		return
	}
	r.args = map[string]string{}
	for k, v := range e.args {
		r.args[k] = v
	}
	for k, v := range c.BuildArgs {
		r.args[k] = v
	}
	start := time.Now()
	img, err := bd.build(ctx, c.Name, r.ctxDir, buildahDockerfile, r.args, c.Target, dir)
	r.took = time.Since(start)
	if err != nil {
		r.err = fmt.Errorf("the reference build failed (every case must build with buildah): %w", err)
		return
	}
	if r.snapshot, err = takeSnapshot(img); err != nil {
		r.err = fmt.Errorf("buildah's image: %w", err)
		return
	}
	if err := toBuildKit(r.snapshot, c); err != nil {
		r.err = fmt.Errorf("applying %s: %w", caseFile, err)
	}
}

func (e *diffEnv) runCase(t *testing.T, c diffCase, ref *reference) {
	ctx := t.Context()
	select {
	case <-ref.done:
	case <-ctx.Done():
		t.Fatal(ctx.Err())
	}
	if ref.err != nil {
		t.Fatal(ref.err)
	}
	want := ref.snapshot
	e.dumpSnapshot(t, c.Name, "buildkit", want)

	start := time.Now()
	res, err := builder.Build(ctx, builder.Options{
		ContextDir: ref.ctxDir,
		BuildArgs:  ref.args,
		Target:     c.Target,
		Tags:       []string{"diff/" + c.Name + ":latest"},
		Store:      e.store,
		Registry:   registry.Options{Insecure: []string{e.host}},
	})
	if err != nil {
		t.Fatalf("imgbuild: %v", err)
	}
	checkWithTools(t, e.store, "diff/"+c.Name+":latest")
	t.Logf("buildah %v, imgbuild %v", ref.took.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	if err := validate.Image(res.Image); err != nil {
		t.Errorf("validate.Image: %v", err)
	}
	got, err := takeSnapshot(res.Image)
	if err != nil {
		t.Fatalf("imgbuild's image: %v", err)
	}
	e.dumpSnapshot(t, c.Name, "imgbuild", got)
	diffs := diffSnapshots(want, got)
	if len(diffs) > maxReportedDiffs {
		diffs = append(diffs[:maxReportedDiffs], "...")
	}
	for _, d := range diffs {
		t.Error(d)
	}
}

func (e *diffEnv) dumpSnapshot(t *testing.T, name, side string, s *snapshot) {
	if e.dump == "" {
		return
	}
	b, err := json.MarshalIndent(s, "", " ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(e.dump, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.dump, name+"."+side+".json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// pinnedRef turns host/repo:tag into host/repo@sha256:... as the registry
// serves it.
func pinnedRef(t *testing.T, ref string) string {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := remote.Head(r, remote.WithContext(t.Context()))
	if err != nil {
		t.Fatalf("resolving %s: %v", ref, err)
	}
	return r.Context().Digest(desc.Digest.String()).Name()
}

// pushOnbuildImage pushes the busybox image with ONBUILD triggers in its
// config to host/library/onbuild:latest and returns the reference.
func pushOnbuildImage(t *testing.T, host string) string {
	t.Helper()
	img := registrytest.BusyboxImage(t)
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfg := cf.Config
	cfg.OnBuild = []string{"COPY trigger.txt /from-onbuild/", "LABEL onbuild=ran", "ENV ONBUILD=1"}
	if img, err = mutate.Config(img, cfg); err != nil {
		t.Fatal(err)
	}
	return registrytest.PushImage(t, host, "library/onbuild:latest", img)
}

// checkWithTools reads a stored image with the real skopeo and umoci, as a
// user of the store would.
func checkWithTools(t *testing.T, store *layers.Store, ref string) {
	t.Helper()
	layout := filepath.Join(store.Root(), "oci")
	if out, err := exec.CommandContext(t.Context(), "skopeo", "inspect", "oci:"+layout+":"+ref).CombinedOutput(); err != nil {
		t.Errorf("skopeo inspect oci:%s:%s: %v\n%s", layout, ref, err, out)
	}
	bundle := filepath.Join(t.TempDir(), "bundle")
	if out, err := exec.CommandContext(t.Context(), "umoci", "unpack", "--image", layout+":"+ref, bundle).CombinedOutput(); err != nil {
		t.Errorf("umoci unpack --image %s:%s: %v\n%s", layout, ref, err, out)
	}
}
