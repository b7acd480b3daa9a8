package builder_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
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
// flattened filesystems (type, mode, owner, size, content hash, link target
// of every path) and the config fields a Dockerfile sets. Where buildah 1.28
// departs from BuildKit's documented behaviour, the case's case.json records
// buildah's value and BuildKit's; BuildKit's is what imgbuild must produce.
// Every imgbuild image must also pass validate.Image.
func TestDifferentialBuildah(t *testing.T) {
	registrytest.RequireRoot(t)
	cases := loadCases(t)
	bd := newBuildah(t)
	host := registrytest.Start(t)
	base := registrytest.PushBusybox(t, host)
	pinned := pinnedRef(t, base)
	store, err := layers.OpenStore(t.Context(), t.TempDir())
	if err != nil {
		t.Fatalf("opening store: %v", err)
	}
	files := httptest.NewServer(http.FileServer(http.Dir(diffCorpus)))
	t.Cleanup(files.Close)
	env := diffEnv{
		buildah: bd,
		store:   store,
		host:    host,
		tokens:  strings.NewReplacer(registryToken, host, httpToken, files.URL),
		args: map[string]string{
			"BASE":        base,
			"BASE_REPO":   strings.TrimSuffix(base, ":latest"),
			"BASE_DIGEST": pinned,
		},
		dump: os.Getenv(diffDumpEnv),
	}
	for _, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			t.Parallel() // buildah mostly waits on its helper processes
			env.runCase(t, c)
		})
	}
}

type diffEnv struct {
	buildah *buildah
	store   *layers.Store
	host    string
	tokens  *strings.Replacer
	args    map[string]string
	dump    string
}

func (e diffEnv) runCase(t *testing.T, c diffCase) {
	ctx := t.Context()
	work := t.TempDir()
	ctxDir := filepath.Join(work, "context")
	buildahDockerfile, err := c.prepareContext(ctxDir, e.tokens)
	if err != nil {
		t.Fatalf("preparing context: %v", err)
	}
	args := map[string]string{}
	for k, v := range e.args {
		args[k] = v
	}
	for k, v := range c.BuildArgs {
		args[k] = v
	}

	start := time.Now()
	bimg, err := e.buildah.build(ctx, c.Name, ctxDir, buildahDockerfile, args, c.Target, work)
	buildahTime := time.Since(start)
	if err != nil {
		t.Fatalf("the reference build failed (every case must build with buildah): %v", err)
	}
	want, err := takeSnapshot(bimg)
	if err != nil {
		t.Fatalf("buildah's image: %v", err)
	}
	if err := toBuildKit(want, c); err != nil {
		t.Fatalf("applying %s: %v", caseFile, err)
	}
	e.dumpSnapshot(t, c.Name, "buildkit", want)

	start = time.Now()
	res, err := builder.Build(ctx, builder.Options{
		ContextDir: ctxDir,
		BuildArgs:  args,
		Target:     c.Target,
		Store:      e.store,
		Registry:   registry.Options{Insecure: []string{e.host}},
	})
	if err != nil {
		t.Fatalf("imgbuild: %v", err)
	}
	t.Logf("buildah %v, imgbuild %v", buildahTime.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
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

func (e diffEnv) dumpSnapshot(t *testing.T, name, side string, s *snapshot) {
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
