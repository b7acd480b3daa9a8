//go:build linux

package layers_test

// The extracted-layer cache under the overlay snapshotter: whiteout
// conversion, reuse across Prepares and snapshotters, concurrent
// extraction, verification, stacks deeper than MaxLowers, pruning, and the
// cleanup of what a killed process left mounted.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"golang.org/x/sys/unix"

	"github.com/imgbuild/imgbuild/layers"
	"github.com/imgbuild/imgbuild/registry/registrytest"
)

// memLayer is an in-memory layer of entries (no store, no fsync).
func memLayer(t testing.TB, entries ...ent) v1.Layer {
	t.Helper()
	b := mkTar(t, entries...)
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func diffIDHex(t testing.TB, l v1.Layer) string {
	t.Helper()
	h, err := l.DiffID()
	if err != nil {
		t.Fatal(err)
	}
	return h.Hex
}

// whiteoutLayer deletes, replaces and hides parts of baseEnts, with the
// odd forms real layers have.
func whiteoutLayer(t testing.TB) v1.Layer {
	return memLayer(t,
		dirE("etc/", 0o755), fileE("etc/.wh.group", "", 0),
		dirE("data/", 0o711), fileE("data/.wh..wh..opq", "", 0), fileE("data/n", "n", 0o644),
		dirE("var/", 0o755), dirE("var/cache/", 0o755), fileE("var/cache/.wh.apt", "", 0),
		// the layer writes opt/ and whites it out: its own content stays,
		// the lower one's goes
		fileE(".wh.opt", "", 0), dirE("opt/", 0o755), fileE("opt/new", "new", 0o644),
		fileE(".wh..wh.aufs", "", 0), // AUFS metadata: nothing to apply
	)
}

func TestExtractedLayerWhiteouts(t *testing.T) {
	registrytest.RequireRoot(t)
	s := snapStore(t)
	sn := newSnap(t, s, layers.SnapshotterOverlay, layers.SnapshotOptions{})
	parent := []v1.Layer{memLayer(t, baseEnts()...), whiteoutLayer(t)}
	m := prepare(t, sn, parent)
	sameView(t, "overlay of extracted layers vs Apply", view(t, m.Dir, true), view(t, applyAll(t, parent), true))

	tree := filepath.Join(s.Root(), "layers", diffIDHex(t, parent[1]))
	st := lstat(t, filepath.Join(tree, "etc/group"))
	if st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
		t.Errorf("etc/group in the extracted tree: mode %o rdev %d, want a 0/0 whiteout", st.Mode, st.Rdev)
	}
	if lstat(t, filepath.Join(tree, "etc")).Mtim.Sec != testTime.Unix() {
		t.Error("converting whiteouts changed the directory's mtime")
	}
	for _, d := range []string{"data", "opt"} {
		buf := make([]byte, 8)
		n, err := unix.Lgetxattr(filepath.Join(tree, d), "trusted.overlay.opaque", buf)
		if err != nil || string(buf[:n]) != "y" {
			t.Errorf("%s: trusted.overlay.opaque = %q, %v", d, buf[:max(n, 0)], err)
		}
	}
	for _, line := range view(t, tree, false) {
		if strings.Contains(line, ".wh.") {
			t.Errorf("OCI whiteout left in the extracted tree: %s", line)
		}
	}
}

func TestExtractedCacheReused(t *testing.T) {
	registrytest.RequireRoot(t)
	s := snapStore(t)
	var n [2]atomic.Int32
	parent := []v1.Layer{
		countingLayer{memLayer(t, baseEnts()...), &n[0]},
		countingLayer{whiteoutLayer(t), &n[1]},
	}
	sn := newSnap(t, s, layers.SnapshotterOverlay, layers.SnapshotOptions{})
	first := view(t, prepare(t, sn, parent).Dir, true)
	tree := filepath.Join(s.Root(), "layers", diffIDHex(t, parent[0]))
	ino := inode(t, tree)
	// Another Prepare, and another snapshotter on the same store.
	sameView(t, "second Prepare", view(t, prepare(t, sn, parent).Dir, true), first)
	other := newSnap(t, s, layers.SnapshotterOverlay, layers.SnapshotOptions{})
	sameView(t, "other snapshotter", view(t, prepare(t, other, parent).Dir, true), first)
	for i := range n {
		if got := n[i].Load(); got != 1 {
			t.Errorf("layer %d extracted %d times, want 1", i, got)
		}
	}
	if inode(t, tree) != ino {
		t.Error("extracted tree replaced")
	}
}

func TestExtractedConcurrent(t *testing.T) {
	registrytest.RequireRoot(t)
	s := snapStore(t)
	var n atomic.Int32
	parent := []v1.Layer{countingLayer{memLayer(t, baseEnts()...), &n}}
	sns := []layers.Snapshotter{
		newSnap(t, s, layers.SnapshotterOverlay, layers.SnapshotOptions{}),
		newSnap(t, s, layers.SnapshotterOverlay, layers.SnapshotOptions{}),
	}
	var wg sync.WaitGroup
	views := make([][]string, 4)
	for i := range views {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m, err := sns[i%2].Prepare(context.Background(), parent)
			if err != nil {
				t.Errorf("Prepare %d: %v", i, err)
				return
			}
			views[i] = view(t, m.Dir, true)
			if err := sns[i%2].Release(context.Background(), m); err != nil {
				t.Errorf("Release %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	if got := n.Load(); got != 1 {
		t.Errorf("extracted %d times, want 1", got)
	}
	want := view(t, applyAll(t, parent), true)
	for i, v := range views {
		sameView(t, fmt.Sprintf("Prepare %d", i), v, want)
	}
}

// lyingLayer announces a diffID its content does not have.
type lyingLayer struct{ v1.Layer }

func (lyingLayer) DiffID() (v1.Hash, error) {
	return v1.NewHash("sha256:" + strings.Repeat("ab", 32))
}

func TestExtractedVerifiesDiffID(t *testing.T) {
	registrytest.RequireRoot(t)
	for _, kind := range snapKinds {
		s := snapStore(t)
		sn := newSnap(t, s, kind, layers.SnapshotOptions{})
		_, err := sn.Prepare(context.Background(), []v1.Layer{lyingLayer{memLayer(t, baseEnts()...)}})
		if !errors.Is(err, layers.ErrDigestMismatch) {
			t.Errorf("%s: Prepare of a layer with a wrong diffID: %v, want ErrDigestMismatch", kind, err)
		}
		ents, _ := os.ReadDir(filepath.Join(s.Root(), "layers"))
		for _, e := range ents {
			if !strings.HasSuffix(e.Name(), ".lock") {
				t.Errorf("%s: %s left in layers/", kind, e.Name())
			}
		}
	}
}

// manyLayers is a stack of n layers: layer i adds l/fNNN; every tenth
// deletes the file five layers down; layer 50 makes d/ opaque.
func manyLayers(t testing.TB, n int) []v1.Layer {
	out := []v1.Layer{memLayer(t, dirE("l/", 0o755), dirE("d/", 0o755), fileE("d/old", "old", 0o644))}
	for i := 1; i < n; i++ {
		es := []ent{dirE("l/", 0o755), fileE(fmt.Sprintf("l/f%03d", i), fmt.Sprint(i), 0o644)}
		if i%10 == 9 {
			es = append(es, fileE(fmt.Sprintf("l/.wh.f%03d", i-5), "", 0))
		}
		if i == 50 {
			es = append(es, dirE("d/", 0o700), fileE("d/.wh..wh..opq", "", 0), fileE("d/new", "new", 0o644))
		}
		out = append(out, memLayer(t, es...))
	}
	return out
}

func TestSnapshotManyLayers(t *testing.T) {
	registrytest.RequireRoot(t)
	parent := manyLayers(t, 120)
	want := view(t, applyAll(t, parent), true)
	var ids []string
	for _, tc := range []struct {
		kind      string
		maxLowers int
	}{{layers.SnapshotterOverlay, 0}, {layers.SnapshotterOverlay, 8}, {layers.SnapshotterCopy, 0}} {
		s := snapStore(t)
		sn := newSnap(t, s, tc.kind, layers.SnapshotOptions{MaxLowers: tc.maxLowers})
		m := prepare(t, sn, parent)
		sameView(t, fmt.Sprintf("%s (MaxLowers %d) of 120 layers", tc.kind, tc.maxLowers), view(t, m.Dir, true), want)
		o := fsOps{t, m.Dir}
		o.rm("l/f100")
		o.write("l/f119", "changed", 0o644)
		o.write("d/more", "more", 0o644)
		l, err := sn.Commit(context.Background(), m, layers.CommitOptions{SourceDateEpoch: &testTime})
		if err != nil || l == nil {
			t.Fatalf("Commit: %v, %v", l, err)
		}
		ids = append(ids, diffIDHex(t, l))
		if tc.maxLowers == 8 {
			ents, _ := os.ReadDir(filepath.Join(s.Root(), "layers"))
			var chains int
			for _, e := range ents {
				if strings.HasPrefix(e.Name(), "c-") && e.IsDir() {
					chains++
				}
			}
			if chains != 1 {
				t.Errorf("%d merged stacks in layers/, want 1", chains)
			}
		}
	}
	if ids[0] != ids[1] || ids[0] != ids[2] {
		t.Errorf("diffIDs differ: %v", ids)
	}
}

func TestPruneExtractedLayers(t *testing.T) {
	registrytest.RequireRoot(t)
	ctx := context.Background()
	s := snapStore(t)
	parent := manyLayers(t, 4)
	sn := newSnap(t, s, layers.SnapshotterOverlay, layers.SnapshotOptions{MaxLowers: 2})
	m := prepare(t, sn, parent) // layers 0-2 merged, layer 3 on its own
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if _, _, err := s.PruneExtractedLayers(short, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("PruneExtractedLayers with a mount alive: %v, want to wait for its lease", err)
	}
	if err := sn.Release(ctx, m); err != nil {
		t.Fatal(err)
	}
	keep := diffIDHex(t, parent[0])
	m = prepare(t, newSnap(t, s, layers.SnapshotterOverlay, layers.SnapshotOptions{}), parent[:1])
	if err := sn.Release(ctx, m); err != nil {
		t.Fatal(err)
	}
	trees, bytes, err := s.PruneExtractedLayers(ctx, func(h v1.Hash) bool { return h.Hex == keep })
	if err != nil || trees != 2 || bytes != 6 {
		t.Errorf("PruneExtractedLayers = %d trees, %d bytes, %v; want 2 trees (layers 0-2 merged: 5 bytes, layer 3: 1 byte)", trees, bytes, err)
	}
	ents, _ := os.ReadDir(filepath.Join(s.Root(), "layers"))
	var left []string
	for _, e := range ents {
		left = append(left, e.Name())
	}
	if strings.Join(left, " ") != keep+" "+keep+".lock" {
		t.Errorf("layers/ after pruning: %v, want only %s and its lock", left, keep)
	}
}

// TestSnapshotCleansKilledProcess runs a child that prepares a mount of
// each kind and dies without releasing them: the next NewSnapshotter
// unmounts and removes what it left.
func TestSnapshotCleansKilledProcess(t *testing.T) {
	registrytest.RequireRoot(t)
	s := snapStore(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestSnapshotKilledChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), "IMGBUILD_SNAPSHOT_CHILD_STORE="+s.Root())
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "prepared") {
		t.Fatalf("child: %v (want exit status 3)\n%s", err, out)
	}
	if len(mountsBelow(t, s.Root())) != 1 {
		t.Fatalf("child left mounts %v, want its overlay", mountsBelow(t, s.Root()))
	}
	// A scratch directory whose creator died before locking it.
	if err := os.Mkdir(filepath.Join(s.Root(), "snapshots", "sdead"), 0o700); err != nil {
		t.Fatal(err)
	}
	newSnap(t, s, layers.SnapshotterCopy, layers.SnapshotOptions{})
	// snapStore checks that no mount and no scratch directory is left.
}

func TestSnapshotKilledChild(t *testing.T) {
	root := os.Getenv("IMGBUILD_SNAPSHOT_CHILD_STORE")
	if root == "" {
		t.Skip("[allowed-skip] helper process, run by TestSnapshotCleansKilledProcess")
	}
	ctx := context.Background()
	s, err := layers.OpenStore(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	for _, kind := range snapKinds {
		sn, err := layers.NewSnapshotter(ctx, s, kind, layers.SnapshotOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sn.Prepare(ctx, []v1.Layer{memLayer(t, baseEnts()...)}); err != nil {
			t.Fatal(err)
		}
	}
	fmt.Println("prepared")
	os.Exit(3)
}

// TestSnapshotRepeatedLayer stacks the same layer twice with a layer that
// undoes part of it in between (overlayfs refuses a lowerdir twice).
func TestSnapshotRepeatedLayer(t *testing.T) {
	registrytest.RequireRoot(t)
	x := memLayer(t, dirE("x/", 0o755), fileE("x/f", "f", 0o644), dirE("etc/", 0o755), fileE("etc/.wh.group", "", 0))
	undo := memLayer(t, dirE("x/", 0o700), fileE("x/.wh.f", "", 0), fileE("x/g", "g", 0o644), dirE("etc/", 0o755), fileE("etc/group", "g", 0o644))
	parent := []v1.Layer{memLayer(t, baseEnts()...), x, undo, x}
	want := view(t, applyAll(t, parent), true)
	for _, maxLowers := range []int{0, 2} {
		s := snapStore(t)
		sn := newSnap(t, s, layers.SnapshotterOverlay, layers.SnapshotOptions{MaxLowers: maxLowers})
		sameView(t, fmt.Sprintf("MaxLowers %d", maxLowers), view(t, prepare(t, sn, parent).Dir, true), want)
	}
}
