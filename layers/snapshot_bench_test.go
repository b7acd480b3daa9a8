//go:build linux

package layers_test

import (
	"context"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"golang.org/x/sys/unix"

	"github.com/imgbuild/imgbuild/layers"
)

// BenchmarkCommitOverlay measures a trivial step (Prepare, one small file
// written, Commit, Release; each step on top of the previous one, as in a
// stage) on a base of many small files: 80 MB (10,000 files) and 1 GB
// (131,000 files). With overlay the commit walks the upperdir only, so
// the cost per step should not depend on the base. The bases are generated
// once into a store cached in $TMPDIR/imgbuild-bench-snapshots (about
// 3 GB with the extracted trees; delete it to regenerate).
//
//	go test -run '^$' -bench 'BenchmarkCommit' -benchtime 20x ./layers
func BenchmarkCommitOverlay(b *testing.B) { benchCommit(b, layers.SnapshotterOverlay) }

// BenchmarkCommitCopy is BenchmarkCommitOverlay with the copy snapshotter,
// whose commit walks the whole rootfs: for comparison.
func BenchmarkCommitCopy(b *testing.B) { benchCommit(b, layers.SnapshotterCopy) }

func benchCommit(b *testing.B, kind string) {
	if testing.Short() {
		b.Skip("generates a 1 GB base")
	}
	if os.Geteuid() != 0 {
		b.Skip("needs root (overlay mounts, owners)")
	}
	for _, size := range []struct {
		name  string
		bytes int
	}{{"80MB", 80 << 20}, {"1GB", 1 << 30}} {
		b.Run(size.name, func(b *testing.B) {
			ctx := context.Background()
			s, base := benchBase(b, size.name, size.bytes)
			sn, err := layers.NewSnapshotter(ctx, s, kind, layers.SnapshotOptions{})
			if err != nil {
				b.Fatal(err)
			}
			defer pruneBench(b, s, sn)
			// A first step outside the timer extracts the base (copy:
			// into its private tree, parked for the next step).
			parent := []v1.Layer{base}
			parent = benchStep(b, sn, parent, -1, nil)
			var commit time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if kind == layers.SnapshotterOverlay && len(parent) > 32 {
					parent = parent[:1] // stay below MaxLowers (no merged stack)
				}
				parent = benchStep(b, sn, parent, i, &commit)
			}
			b.StopTimer()
			b.ReportMetric(float64(commit.Milliseconds())/float64(b.N), "commit-ms/op")
		})
	}
}

// benchStep runs one step writing one file on parent and returns parent
// plus its layer; commit accumulates the time of Commit.
func benchStep(b *testing.B, sn layers.Snapshotter, parent []v1.Layer, i int, commit *time.Duration) []v1.Layer {
	ctx := context.Background()
	m, err := sn.Prepare(ctx, parent)
	if err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(m.Dir, "etc", fmt.Sprintf("step-%d", i)), []byte("x"), 0o644); err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	l, err := sn.Commit(ctx, m, layers.CommitOptions{})
	if commit != nil {
		*commit += time.Since(start)
	}
	if err != nil || l == nil {
		b.Fatalf("Commit: %v, %v", l, err)
	}
	if err := sn.Release(ctx, m); err != nil {
		b.Fatal(err)
	}
	return append(parent, l)
}

// pruneBench closes sn and drops from the bench store what the benchmark
// added (blobs of untagged layers, their extracted trees), keeping the
// bases.
func pruneBench(b *testing.B, s *layers.Store, sn layers.Snapshotter) {
	ctx := context.Background()
	if err := sn.Close(); err != nil {
		b.Error(err)
	}
	keep := map[v1.Hash]bool{}
	for _, name := range []string{"80MB", "1GB"} {
		if img, err := s.Image(ctx, "bench/base:"+name); err == nil {
			if ids, err := img.ConfigFile(); err == nil {
				for _, h := range ids.RootFS.DiffIDs {
					keep[h] = true
				}
			}
		}
	}
	if _, err := s.Prune(ctx); err != nil {
		b.Error(err)
	}
	if _, _, err := s.PruneExtractedLayers(ctx, func(h v1.Hash) bool { return keep[h] }); err != nil {
		b.Error(err)
	}
}

// benchBase returns the cached bench store and its base layer of about
// size bytes, generating them the first time.
func benchBase(b *testing.B, name string, size int) (*layers.Store, v1.Layer) {
	ctx := context.Background()
	root := filepath.Join(os.TempDir(), "imgbuild-bench-snapshots")
	s, err := layers.OpenStore(ctx, root)
	if err != nil {
		b.Fatal(err)
	}
	ref := "bench/base:" + name
	if img, err := s.Image(ctx, ref); err == nil {
		if ls, err := img.Layers(); err == nil && len(ls) == 1 {
			return s, ls[0]
		}
	}
	b.Logf("generating the %s base in %s", name, root)
	tree, err := os.MkdirTemp(root, "gen-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(tree)
	makeManyFiles(b, tree, size, 14<<10)
	l, err := s.WriteLayer(ctx, func(w io.Writer) error {
		return layers.WriteTar(ctx, w, tree, layers.TarOptions{})
	}, layers.LayerOptions{Compression: layers.Uncompressed})
	if err != nil {
		b.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, l)
	if err != nil {
		b.Fatal(err)
	}
	d, err := s.PutImage(ctx, img)
	if err != nil {
		b.Fatal(err)
	}
	if err := s.Tag(ctx, ref, d); err != nil {
		b.Fatal(err)
	}
	return s, l
}

// makeManyFiles writes about size bytes as files of 1 KiB to 1 KiB +
// spread (random), 100 per directory, plus etc/.
func makeManyFiles(b *testing.B, root string, size, spread int) {
	r := rand.New(rand.NewSource(1))
	buf := make([]byte, 1<<10+spread)
	r.Read(buf)
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		b.Fatal(err)
	}
	for total, i := 0, 0; total < size; i++ {
		dir := filepath.Join(root, "usr", fmt.Sprintf("d%03d", i/100/100), fmt.Sprintf("d%02d", i/100%100))
		if i%100 == 0 {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				b.Fatal(err)
			}
		}
		n := 1<<10 + r.Intn(spread)
		copy(buf, fmt.Sprintf("file %d\n", i))
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%02d", i%100)), buf[:n], 0o644); err != nil {
			b.Fatal(err)
		}
		total += n
	}
}

// BenchmarkCommitLargeStep measures the commit of a step that wrote 10,000
// files, 200 MB in all, on the 80 MB base, and reports the process's peak
// RSS afterwards (the bound: 200 MB).
//
//	go test -run '^$' -bench 'BenchmarkCommitLargeStep' -benchtime 3x ./layers
func BenchmarkCommitLargeStep(b *testing.B) {
	if testing.Short() {
		b.Skip("writes 200 MB per iteration")
	}
	if os.Geteuid() != 0 {
		b.Skip("needs root (overlay mounts, owners)")
	}
	for _, kind := range []string{layers.SnapshotterOverlay, layers.SnapshotterCopy} {
		b.Run(kind, func(b *testing.B) {
			ctx := context.Background()
			s, base := benchBase(b, "80MB", 80<<20)
			sn, err := layers.NewSnapshotter(ctx, s, kind, layers.SnapshotOptions{})
			if err != nil {
				b.Fatal(err)
			}
			defer pruneBench(b, s, sn)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				m, err := sn.Prepare(ctx, []v1.Layer{base})
				if err != nil {
					b.Fatal(err)
				}
				makeManyFiles(b, filepath.Join(m.Dir, "big"), 200<<20, 38<<10) // 10,000 files
				b.StartTimer()
				if l, err := sn.Commit(ctx, m, layers.CommitOptions{}); err != nil || l == nil {
					b.Fatalf("Commit: %v, %v", l, err)
				}
				b.StopTimer()
				if err := sn.Release(ctx, m); err != nil {
					b.Fatal(err)
				}
			}
			var ru unix.Rusage
			if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err == nil {
				b.ReportMetric(float64(ru.Maxrss)/1024, "peak-RSS-MB")
			}
		})
	}
}
