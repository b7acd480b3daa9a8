package layers

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// metaDir holds small records the builder keeps beside the step cache
// (what an ADD URL answered last, ...): cache/meta/KIND/<sha256 of key>.
const metaDir = "meta"

func (s *Store) metaPath(kind, key string) (string, error) {
	if kind == "" {
		return "", errors.New("cache meta: empty kind")
	}
	for _, c := range kind {
		if c < 'a' || c > 'z' {
			return "", fmt.Errorf("cache meta: invalid kind %q", kind)
		}
	}
	return filepath.Join(s.root, cacheDir, metaDir, kind, sha256Of([]byte(key)).Hex), nil
}

// PutCacheMeta records b under kind (lower-case letters) and key in the
// build cache, replacing what was there. PruneCache drops such records
// with All, and with Until those not written for that long.
func (s *Store) PutCacheMeta(ctx context.Context, kind, key string, b []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p, err := s.metaPath(kind, key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("cache meta: %w", err)
	}
	return s.writeFileAtomic(filepath.Dir(p), filepath.Base(p), b)
}

// CacheMeta returns what PutCacheMeta recorded under kind and key; the
// error wraps ErrNotFound when nothing is.
func (s *Store) CacheMeta(ctx context.Context, kind, key string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p, err := s.metaPath(kind, key)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("cache meta %s: %w", kind, ErrNotFound)
	}
	return b, err
}

// pruneMeta removes every meta record (all), or those older than until.
func (s *Store) pruneMeta(all bool, until time.Duration) error {
	dir := filepath.Join(s.root, cacheDir, metaDir)
	if all {
		return os.RemoveAll(dir)
	}
	if until <= 0 {
		return nil
	}
	now := time.Now()
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		if fi, err := d.Info(); err == nil && now.Sub(fi.ModTime()) > until {
			os.Remove(p)
		}
		return nil
	})
}
