package builder

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/imgbuild/imgbuild/layers"
)

// extractTarContext extracts a build context sent as a tar stream
// (`imgbuild build -`), possibly gzip, bzip2, xz or zstd compressed, into
// dir. Entries are confined to dir; owners are not kept (BuildKit resets
// context files to 0:0 anyway).
func extractTarContext(ctx context.Context, r io.Reader, dir string) (string, error) {
	if dir == "" {
		return "", fmt.Errorf("tar build context: no scratch directory given")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("tar build context: %w", err)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("tar build context: %w", err)
	}
	if abs, err = filepath.EvalSymlinks(abs); err != nil {
		return "", fmt.Errorf("tar build context: %w", err)
	}
	dr, err := decompress(r)
	if err != nil {
		return "", fmt.Errorf("tar build context: %w", err)
	}
	defer dr.Close()
	if err := layers.Apply(ctx, abs, dr, layers.ApplyOptions{NoChown: true, NoWhiteouts: true}); err != nil {
		return "", fmt.Errorf("tar build context: %w", err)
	}
	return abs, nil
}
