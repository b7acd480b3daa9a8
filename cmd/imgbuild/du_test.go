package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"

	"github.com/imgbuild/imgbuild/layers"
)

func hashOf(s string) v1.Hash {
	sum := sha256.Sum256([]byte(s))
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
}

// duStore is a store with, in known sizes: a tagged image (tagged twice),
// an untagged image, two build cache records (one on a layer of the tagged
// image, one on a layer of its own) and three extracted layer trees (one of
// a tagged image's layer, one of another layer, one merged stack), and a
// RUN cache mount.
type duStore struct {
	root                       string
	tagged, untagged           v1.Image
	sharedKey, privateKey      v1.Hash
	sharedLayer, privateLayer  v1.Layer
	keptTree, otherTree, stack int64 // bytes of the trees
	mount                      int64 // bytes of a RUN cache mount
}

func newDuStore(t *testing.T) *duStore {
	t.Helper()
	ctx := context.Background()
	d := &duStore{root: t.TempDir(), sharedKey: hashOf("shared"), privateKey: hashOf("private")}
	st, err := layers.OpenStore(ctx, d.root)
	if err != nil {
		t.Fatal(err)
	}
	var dig v1.Hash
	for i, img := range []*v1.Image{&d.tagged, &d.untagged} {
		if *img, err = random.Image(3000, 2); err != nil {
			t.Fatal(err)
		}
		if dig, err = st.PutImage(ctx, *img); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			for _, ref := range []string{"app:1", "app:latest"} {
				if err := st.Tag(ctx, ref, dig); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	ls, err := d.tagged.Layers()
	if err != nil {
		t.Fatal(err)
	}
	d.sharedLayer = ls[0]
	if err := st.CachePut(ctx, d.sharedKey, d.sharedLayer, "RUN /bin/sh -c make # buildkit"); err != nil {
		t.Fatal(err)
	}
	d.privateLayer, err = st.WriteLayer(ctx, func(w io.Writer) error {
		_, err := w.Write(make([]byte, 10240)) // an empty tar: zero blocks
		return err
	}, layers.LayerOptions{Compression: layers.Gzip})
	if err != nil {
		t.Fatal(err)
	}
	long := "COPY " + strings.Repeat("very/long/path/", 10) + " /dst"
	if err := st.CachePut(ctx, d.privateKey, d.privateLayer, long); err != nil {
		t.Fatal(err)
	}

	diffID, err := d.sharedLayer.DiffID()
	if err != nil {
		t.Fatal(err)
	}
	trees := filepath.Join(d.root, "layers")
	d.keptTree = writeTree(t, filepath.Join(trees, diffID.Hex), 1000, true)
	d.otherTree = writeTree(t, filepath.Join(trees, hashOf("other").Hex+"-u"), 300, false)
	d.stack = writeTree(t, filepath.Join(trees, "c-"+diffID.Hex), 200, false)
	if err := os.WriteFile(filepath.Join(trees, diffID.Hex+".lock"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	d.mount = writeTree(t, filepath.Join(d.root, "cache-mounts", hashOf("id=/root/.cache").Hex[:32], "0"), 700, true)
	return d
}

// writeTree makes dir holding a file of size bytes (and, with link, a
// second hard link to it, which du counts once) and returns size.
func writeTree(t *testing.T, dir string, size int, link bool) int64 {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(dir, "sub", "f")
	if err := os.WriteFile(f, make([]byte, size), 0o644); err != nil {
		t.Fatal(err)
	}
	if link {
		if err := os.Link(f, filepath.Join(dir, "g")); err != nil {
			t.Fatal(err)
		}
	}
	return int64(size)
}

// blobBytes sums the sizes of the blob files of digests.
func blobBytes(t *testing.T, root string, digests ...v1.Hash) int64 {
	t.Helper()
	var n int64
	for _, h := range digests {
		fi, err := os.Stat(filepath.Join(root, "oci", "blobs", "sha256", h.Hex))
		if err != nil {
			t.Fatal(err)
		}
		n += fi.Size()
	}
	return n
}

// imageBlobs lists the manifest, config and layers of img.
func imageBlobs(t *testing.T, img v1.Image) []v1.Hash {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	out := []v1.Hash{d, m.Config.Digest}
	for _, l := range m.Layers {
		out = append(out, l.Digest)
	}
	return out
}

func mustDigest(t *testing.T, l v1.Layer) v1.Hash {
	t.Helper()
	h, err := l.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestMeasure(t *testing.T) {
	d := newDuStore(t)
	st, err := layers.OpenStore(context.Background(), d.root)
	if err != nil {
		t.Fatal(err)
	}
	u, err := measure(context.Background(), st)
	if err != nil {
		t.Fatal(err)
	}
	tagged := blobBytes(t, d.root, imageBlobs(t, d.tagged)...)
	untagged := blobBytes(t, d.root, imageBlobs(t, d.untagged)...)
	shared := blobBytes(t, d.root, mustDigest(t, d.sharedLayer))
	private := blobBytes(t, d.root, mustDigest(t, d.privateLayer))
	trees := d.keptTree + d.otherTree + d.stack
	want := diskUsage{
		images: 1, imageBytes: tagged,
		cacheBytes: shared + private, cacheReclaimable: private,
		trees: 3, treeBytes: trees, treeReclaimable: d.otherTree + d.stack,
		unused: 4, unusedB: untagged,
		mounts: 1, mountBytes: d.mount,
		total: tagged + untagged + private + trees + d.mount,
	}
	got := *u
	got.records = nil
	if !reflect.DeepEqual(got, want) {
		t.Errorf("measure =\n%+v\nwant\n%+v", got, want)
	}
	if r := u.reclaimable(); r != private+d.otherTree+d.stack+untagged+d.mount {
		t.Errorf("reclaimable = %d, want %d", r, private+d.otherTree+d.stack+untagged+d.mount)
	}
	if len(u.records) != 2 {
		t.Fatalf("records = %+v, want 2", u.records)
	}
	for _, r := range u.records {
		if wantShared := r.rec.Key == d.sharedKey; r.shared != wantShared {
			t.Errorf("record %s: shared %v, want %v", r.rec.Key, r.shared, wantShared)
		}
	}
}

// TestDu checks the output of du and du --verbose on the same store, and
// that prune --all frees what du called reclaimable, after which du shows
// no build cache.
func TestDu(t *testing.T) {
	d := newDuStore(t)
	t.Setenv(rootEnv, d.root)
	st, err := layers.OpenStore(context.Background(), d.root)
	if err != nil {
		t.Fatal(err)
	}
	u, err := measure(context.Background(), st)
	if err != nil {
		t.Fatal(err)
	}
	summary := []string{
		"TYPE TOTAL SIZE RECLAIMABLE",
		"Images 1 " + humanSize(u.imageBytes) + " 0B",
		"Build cache 2 " + humanSize(u.cacheBytes) + " " + humanSize(u.cacheReclaimable),
		"Layer trees 3 " + humanSize(u.treeBytes) + " " + humanSize(u.treeReclaimable),
		"Unused blobs 4 " + humanSize(u.unusedB) + " " + humanSize(u.unusedB),
		"Cache mounts 1 700B 700B",
		"Total " + humanSize(u.total) + " " + humanSize(u.reclaimable()),
	}
	out, _ := mustRun(t, 0, "du")
	if got := squeeze(out); !equalLines(got, summary) {
		t.Errorf("du =\n%s\nwant (spaces squeezed)\n%s", out, strings.Join(summary, "\n"))
	}

	out, _ = mustRun(t, 0, "du", "--verbose")
	list, sum, ok := strings.Cut(out, "\n\n")
	if !ok || !equalLines(squeeze(sum), summary) {
		t.Fatalf("du --verbose: no summary after the record list:\n%s", out)
	}
	lines := squeeze(list)
	if len(lines) != 3 || lines[0] != "CACHE KEY SIZE LAST USED SHARED CREATED BY" {
		t.Fatalf("du --verbose list:\n%s", list)
	}
	rows := map[string]string{}
	for _, l := range lines[1:] {
		rows[strings.Fields(l)[0]] = l
	}
	size, _ := d.privateLayer.Size()
	for key, want := range map[v1.Hash]string{
		d.sharedKey: `^` + d.sharedKey.Hex[:12] + ` \S+ ` + recent + ` yes RUN /bin/sh -c make # buildkit$`,
		d.privateKey: `^` + d.privateKey.Hex[:12] + ` ` + regexp.QuoteMeta(humanSize(size)) + ` ` + recent + ` no ` +
			regexp.QuoteMeta("COPY very/long/path/very/long/path/very/long/path/very/lo...") + `$`,
	} {
		if row := rows[key.Hex[:12]]; !regexp.MustCompile(want).MatchString(row) {
			t.Errorf("record row = %q, want %s", row, want)
		}
	}

	out, _ = mustRun(t, 0, "prune", "--all")
	// What du called reclaimable is what prune --all frees.
	wantPrune := "Deleted 2 build cache records, 5 blobs, 1 untagged images, 2 extracted layer trees and 1 cache mounts; total reclaimed space: " +
		humanSize(u.reclaimable()) + "\n"
	if out != wantPrune {
		t.Errorf("prune --all = %q, want %q", out, wantPrune)
	}
	out, _ = mustRun(t, 0, "du")
	after := []string{
		"TYPE TOTAL SIZE RECLAIMABLE",
		"Images 1 " + humanSize(u.imageBytes) + " 0B",
		"Build cache 0 0B 0B",
		"Layer trees 1 " + humanSize(d.keptTree) + " 0B",
		"Unused blobs 0 0B 0B",
		"Cache mounts 0 0B 0B",
		"Total " + humanSize(u.imageBytes+d.keptTree) + " 0B",
	}
	if got := squeeze(out); !equalLines(got, after) {
		t.Errorf("du after prune --all =\n%s\nwant (spaces squeezed)\n%s", out, strings.Join(after, "\n"))
	}
}

// recent matches how du says "used just now".
const recent = `(Less than a second|\d+ seconds?) ago`

// squeeze splits out into lines with runs of spaces made one.
func squeeze(out string) []string {
	var lines []string
	for _, l := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		lines = append(lines, strings.Join(strings.Fields(l), " "))
	}
	return lines
}

func equalLines(a, b []string) bool {
	return strings.Join(a, "\n") == strings.Join(b, "\n")
}
