package builder

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/imgbuild/imgbuild/layers"
)

// BenchmarkSourcesDigest digests `COPY . /app/` of a 5,000-file, 50 MB
// context (the benchmark context): cold with an empty stat index
// (every file read), warm with the index saved by an earlier build and
// loaded from disk in each iteration (no file read). files-read/op counts
// the files actually read. lstat-walk is the reference floor: a walk that
// lstats every entry and does nothing else.
func BenchmarkSourcesDigest(b *testing.B) {
	ctx := context.Background()
	dir := b.TempDir()
	data := make([]byte, 10<<10)
	for i := range 5000 {
		p := filepath.Join(dir, fmt.Sprintf("d%02d", i%50), fmt.Sprintf("f%04d", i))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			b.Fatal(err)
		}
		copy(data, fmt.Sprint(i))
		if err := os.WriteFile(p, data, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	bc, err := loadContext(ctx, contextOptions{Dir: dir, DockerfileContent: []byte("FROM scratch")})
	if err != nil {
		b.Fatal(err)
	}
	op := copyOp{Context: bc, Sources: []string{"."}, Dest: "/app/"}
	s, err := layers.OpenStore(ctx, b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	// Files changed less than the racy window ago are never recorded.
	time.Sleep(layers.StatIndexRacyWindow + 100*time.Millisecond)

	run := func(b *testing.B, open func() *layers.StatIndex) {
		var read int64
		for b.Loop() {
			idx := open()
			if _, err := sourcesDigest(ctx, op, idx); err != nil {
				b.Fatal(err)
			}
			read += idx.Hashed()
		}
		b.ReportMetric(float64(read)/float64(b.N), "files-read/op")
	}
	b.Run("cold", func(b *testing.B) {
		empty, err := layers.OpenStore(ctx, b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		run(b, func() *layers.StatIndex { return openIndex(b, empty) })
	})
	warm := openIndex(b, s)
	if _, err := sourcesDigest(ctx, op, warm); err != nil {
		b.Fatal(err)
	}
	if err := warm.Save(ctx); err != nil {
		b.Fatal(err)
	}
	b.Run("warm", func(b *testing.B) {
		run(b, func() *layers.StatIndex { return openIndex(b, s) })
	})
	// The floor a warm digest cannot go below: one lstat per entry.
	b.Run("lstat-walk", func(b *testing.B) {
		for b.Loop() {
			err := filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
				if err == nil {
					_, err = os.Lstat(p)
				}
				return err
			})
			if err != nil {
				b.Fatal(err)
			}
		}
	})
}

func openIndex(b *testing.B, s *layers.Store) *layers.StatIndex {
	idx, err := layers.OpenStatIndex(context.Background(), s)
	if err != nil {
		b.Fatal(err)
	}
	return idx
}
