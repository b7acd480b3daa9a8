package builder

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// BenchmarkCopyContext copies a 5,000-file, 50 MB context (the size of the
// issue's COPY benchmark) into an empty root.
func BenchmarkCopyContext(b *testing.B) {
	dir := b.TempDir()
	data := make([]byte, 10<<10)
	for i := range 5000 {
		p := filepath.Join(dir, fmt.Sprintf("d%02d", i%50), fmt.Sprintf("f%04d", i))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	for _, ignore := range []string{"", "**/*.log\n!keep.log\nd49\n"} {
		if ignore != "" {
			if err := os.WriteFile(filepath.Join(dir, ".dockerignore"), []byte(ignore), 0o644); err != nil {
				b.Fatal(err)
			}
		}
		bc, err := loadContext(context.Background(), contextOptions{Dir: dir, DockerfileContent: []byte("FROM scratch")})
		if err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprintf("dockerignore=%v", ignore != ""), func(b *testing.B) {
			b.SetBytes(5000 * int64(len(data)))
			for b.Loop() {
				root := b.TempDir()
				if _, err := copyFiles(context.Background(), copyOp{Context: bc, Sources: []string{"."}, Dest: "/app/", DestRoot: root}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
