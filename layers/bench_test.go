//go:build linux

package layers_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"

	"github.com/imgbuild/imgbuild/layers"
)

// benchTreeSize is the size of the generated tree (make bench: 200 MB).
const benchTreeSize = 200 << 20

// makeBenchTree writes about size bytes in 20 directories of files from
// 1 KiB to 1 MiB: two thirds source-like text, one third binary-like bytes,
// which compress together by about 2.5:1, as typical layers do.
func makeBenchTree(b *testing.B, root string, size int) {
	b.Helper()
	r := rand.New(rand.NewSource(42))
	words := [][]byte{[]byte("func "), []byte("return "), []byte("if err != nil {\n"), []byte("}\n"),
		[]byte("layer"), []byte("image "), []byte("\t"), []byte("context.Context"), []byte(" = "), []byte("(ctx, "),
		[]byte("fmt.Errorf(\"%w\", err)\n"), []byte("// "), []byte("for i := 0; i < n; i++ "), []byte("digest")}
	buf := make([]byte, 0, 1<<20)
	for total, i := 0, 0; total < size; i++ {
		n := 1<<10 + r.Intn(1<<20)
		buf = buf[:0]
		if i%3 == 2 {
			// Machine-code-like: skewed byte frequencies, few long
			// matches (compresses about 1.6:1, slowly, like binaries).
			buf = buf[:n]
			r.Read(buf)
			for j := range buf {
				if buf[j] < 160 {
					buf[j] &= 0x0f
				}
			}
		} else {
			for len(buf) < n {
				if r.Intn(8) == 0 {
					buf = fmt.Appendf(buf, "v%d ", r.Intn(100000))
				}
				buf = append(buf, words[r.Intn(len(words))]...)
			}
			buf = buf[:n]
		}
		dir := filepath.Join(root, fmt.Sprintf("dir%02d", i%20))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("file%05d", i)), buf, 0o644); err != nil {
			b.Fatal(err)
		}
		total += n
	}
}

// BenchmarkLayers measures WriteLayer (tar + 2 x sha256 + compression +
// fsync'd blob) on a generated 200 MB tree against the compression library
// alone on the same tar bytes in memory, with WriteLayer's settings. The
// Ratio* sub-benchmarks report write/raw (target: at least 0.8).
//
//	go test -run '^$' -bench BenchmarkLayers -benchtime 3x ./layers
func BenchmarkLayers(b *testing.B) {
	ctx := context.Background()
	tree := b.TempDir()
	makeBenchTree(b, tree, benchTreeSize)
	var tarBuf bytes.Buffer
	if err := layers.WriteTar(ctx, &tarBuf, tree, layers.TarOptions{}); err != nil {
		b.Fatal(err)
	}
	tarBytes := tarBuf.Bytes()
	s, err := layers.OpenStore(ctx, b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	b.Run("WriteTar", func(b *testing.B) {
		b.SetBytes(int64(len(tarBytes)))
		for i := 0; i < b.N; i++ {
			if err := layers.WriteTar(ctx, io.Discard, tree, layers.TarOptions{}); err != nil {
				b.Fatal(err)
			}
		}
	})
	// For reference: klauspost's single-threaded gzip, which WriteLayer's
	// pgzip (same deflate code, blocks compressed on every core) replaces.
	b.Run("RawGzipSingleThread", func(b *testing.B) {
		b.SetBytes(int64(len(tarBytes)))
		for i := 0; i < b.N; i++ {
			w := gzip.NewWriter(io.Discard)
			if _, err := w.Write(tarBytes); err != nil {
				b.Fatal(err)
			}
			if err := w.Close(); err != nil {
				b.Fatal(err)
			}
		}
	})
	for _, c := range []struct {
		name string
		opts layers.LayerOptions
	}{
		{"Gzip", layers.LayerOptions{Compression: layers.Gzip}},
		{"Zstd", layers.LayerOptions{Compression: layers.Zstd}},
	} {
		benchCompression(b, s, tree, tarBytes, c.name, c.opts)
	}
}

// benchCompression runs the Raw, WriteLayer and Ratio sub-benchmarks of
// one compression.
func benchCompression(b *testing.B, s *layers.Store, tree string, tarBytes []byte, name string, opts layers.LayerOptions) {
	ctx := context.Background()
	raw := func(b *testing.B) {
		w, err := layers.NewCompressor(io.Discard, opts)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := w.Write(tarBytes); err != nil {
			b.Fatal(err)
		}
		if err := w.Close(); err != nil {
			b.Fatal(err)
		}
	}
	write := func(b *testing.B) int64 {
		l, err := s.WriteLayer(ctx, func(w io.Writer) error {
			return layers.WriteTar(ctx, w, tree, layers.TarOptions{})
		}, opts)
		if err != nil {
			b.Fatal(err)
		}
		size, _ := l.Size()
		return size
	}
	// forget deletes the blob write made, so that the next write stores it
	// anew (WriteLayer skips the fsync of a blob it has already).
	forget := func(b *testing.B) {
		b.StopTimer()
		if _, err := s.Prune(ctx); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.Run("Raw"+name, func(b *testing.B) {
		b.SetBytes(int64(len(tarBytes)))
		for i := 0; i < b.N; i++ {
			raw(b)
		}
	})
	b.Run("WriteLayer"+name, func(b *testing.B) {
		b.SetBytes(int64(len(tarBytes)))
		var size int64
		for i := 0; i < b.N; i++ {
			size = write(b)
			forget(b)
		}
		b.ReportMetric(float64(len(tarBytes))/float64(size), "x-smaller")
	})
	// Ratio alternates the two, so that a busy machine slows both alike:
	// write/raw is WriteLayer's throughput as a fraction of the library's.
	b.Run("Ratio"+name, func(b *testing.B) {
		var tRaw, tWrite time.Duration
		for i := 0; i < b.N; i++ {
			t0 := time.Now()
			raw(b)
			t1 := time.Now()
			write(b)
			tRaw, tWrite = tRaw+t1.Sub(t0), tWrite+time.Since(t1)
			forget(b)
		}
		mb := float64(len(tarBytes)) / 1e6 * float64(b.N)
		b.ReportMetric(mb/tRaw.Seconds(), "raw-MB/s")
		b.ReportMetric(mb/tWrite.Seconds(), "write-MB/s")
		b.ReportMetric(tRaw.Seconds()/tWrite.Seconds(), "write/raw")
	})
}
