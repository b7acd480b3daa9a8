package builder_test

// The RUN cases of the differential corpus (testdata/diff/run-*), built by
// imgbuild alone with each snapshotter: overlay and copy must give
// byte-identical images.

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/imgbuild/imgbuild/builder"
	"github.com/imgbuild/imgbuild/layers"
	"github.com/imgbuild/imgbuild/registry"
	"github.com/imgbuild/imgbuild/registry/registrytest"
)

// runCasePrefix names the corpus cases that have RUN instructions.
const runCasePrefix = "run-"

// knownSnapshotterDifferences are the paths of a case where the copy
// snapshotter's image is documented to differ from overlay's (layers
// NewSnapshotter, "Known differences between the kinds"): changing in place
// a file that has several hard-linked names in a lower layer breaks the
// link under overlay (only the written name is copied up) while copy writes
// every name. The differences must be exactly these, so the list cannot go
// stale.
var knownSnapshotterDifferences = map[string][]string{
	"run-hardlinks": {"/h/w1", "/h/w2"},
}

// TestRunCorpusSnapshottersAgree builds every run-* case of the corpus with
// the overlay and the copy snapshotter (no cache, SOURCE_DATE_EPOCH fixed)
// and requires the same image digest, except for the documented
// knownSnapshotterDifferences; when they differ it reports the paths that
// differ, from the same flattened snapshots the differential test
// compares, and the entries of the differing layers.
func TestRunCorpusSnapshottersAgree(t *testing.T) {
	registrytest.RequireRoot(t)
	var cases []diffCase
	for _, c := range loadCases(t) {
		if strings.HasPrefix(c.Name, runCasePrefix) {
			cases = append(cases, c)
		}
	}
	if len(cases) == 0 {
		t.Fatal("no run-* cases in the corpus")
	}
	host := registrytest.Start(t)
	base := registrytest.PushBusybox(t, host)
	tokens := strings.NewReplacer(registryToken, host)
	epoch := time.Unix(registrytest.EpochUnix, 0).UTC()
	for _, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			ctxDir := t.TempDir()
			if _, err := c.prepareContext(ctxDir, tokens); err != nil {
				t.Fatalf("preparing context: %v", err)
			}
			args := map[string]string{"BASE": base}
			for k, v := range c.BuildArgs {
				args[k] = v
			}
			var imgs []v1.Image
			var digests []v1.Hash
			for _, kind := range []string{"overlay", "copy"} {
				store, err := layers.OpenStore(t.Context(), t.TempDir())
				if err != nil {
					t.Fatal(err)
				}
				res, err := builder.Build(t.Context(), builder.Options{
					ContextDir: ctxDir, BuildArgs: args, Target: c.Target,
					Store: store, NoCache: true, SourceDateEpoch: &epoch,
					Snapshotter: kind, Registry: registry.Options{Insecure: []string{host}},
				})
				if err != nil {
					t.Fatalf("%s snapshotter: %v", kind, err)
				}
				imgs = append(imgs, res.Image)
				digests = append(digests, res.Digest)
			}
			if known, ok := knownSnapshotterDifferences[c.Name]; ok {
				checkKnownDifferences(t, imgs[0], imgs[1], known)
				return
			}
			if digests[0] != digests[1] {
				t.Errorf("overlay built %s, copy built %s", digests[0], digests[1])
				reportSnapshotDiffs(t, imgs[0], imgs[1])
			}
		})
	}
}

// checkKnownDifferences requires the flattened images to differ at exactly
// the paths listed.
func checkKnownDifferences(t *testing.T, overlay, cp v1.Image, paths []string) {
	t.Helper()
	ovs, err := takeSnapshot(overlay)
	if err != nil {
		t.Fatal(err)
	}
	cps, err := takeSnapshot(cp)
	if err != nil {
		t.Fatal(err)
	}
	var differ []string
	for _, f := range configFields {
		if string(ovs.Config[f]) != string(cps.Config[f]) {
			differ = append(differ, "config "+f)
		}
	}
	for p, e := range ovs.Files {
		if ce, ok := cps.Files[p]; !ok || !ce.equal(e) {
			differ = append(differ, p)
		}
	}
	for p := range cps.Files {
		if _, ok := ovs.Files[p]; !ok {
			differ = append(differ, p)
		}
	}
	slices.Sort(differ)
	if !slices.Equal(differ, paths) {
		t.Errorf("overlay and copy differ at %v, want exactly %v (update knownSnapshotterDifferences)", differ, paths)
		reportSnapshotDiffs(t, overlay, cp)
	}
}

// reportSnapshotDiffs reports how img (copy) differs from want (overlay),
// path by path, or layer by layer when the flattened views agree.
func reportSnapshotDiffs(t *testing.T, want, img v1.Image) {
	t.Helper()
	ws, err := takeSnapshot(want)
	if err != nil {
		t.Fatal(err)
	}
	gs, err := takeSnapshot(img)
	if err != nil {
		t.Fatal(err)
	}
	diffs := diffSnapshots(ws, gs)
	if len(diffs) > maxReportedDiffs {
		diffs = append(diffs[:maxReportedDiffs], "...")
	}
	for _, d := range diffs {
		t.Error(strings.Replace(d, "imgbuild has", "copy has", 1))
	}
	wl, err := want.Layers()
	if err != nil {
		t.Fatal(err)
	}
	gl, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for i := range min(len(wl), len(gl)) {
		a, _ := wl[i].DiffID()
		b, _ := gl[i].DiffID()
		if a != b {
			t.Errorf("layer %d: overlay %s, copy %s: overlay entries %v, copy entries %v",
				i, a, b, layerEntries(t, wl[i]), layerEntries(t, gl[i]))
		}
	}
	if len(wl) != len(gl) {
		t.Errorf("overlay has %d layers, copy %d", len(wl), len(gl))
	}
}

// layerEntries lists a layer's tar entries as "name type size [-> link]".
func layerEntries(t *testing.T, l v1.Layer) []string {
	t.Helper()
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var out []string
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		s := fmt.Sprintf("%s %c %d", h.Name, h.Typeflag, h.Size)
		if h.Linkname != "" {
			s += " -> " + h.Linkname
		}
		out = append(out, s)
	}
}
