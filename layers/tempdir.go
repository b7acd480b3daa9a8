package layers

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// LockedTempDir is TempDir for a directory that lives as long as this
// process uses it: it is locked until release, which removes it. When its
// process dies first (kill -9), the next NewSnapshotter (so the next build)
// or Prune removes it, whatever its age.
func (s *Store) LockedTempDir(ctx context.Context, prefix string) (dir string, release func() error, err error) {
	d, err := s.TempDir(ctx, prefix)
	if err != nil {
		return "", nil, err
	}
	unlock, err := lockFile(ctx, filepath.Join(d, ownerLock), unix.LOCK_EX)
	if err != nil {
		os.RemoveAll(d)
		return "", nil, fmt.Errorf("making temporary directory: %w", err)
	}
	return d, func() error {
		err := removeTree(d)
		unlock()
		return err
	}, nil
}

// cleanTemp removes the LockedTempDir directories of dead processes and
// reports the bytes freed.
func (s *Store) cleanTemp() (int64, error) {
	dir := filepath.Join(s.root, tmpDir)
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("cleaning temporary directories: %w", err)
	}
	var freed int64
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		p := filepath.Join(dir, e.Name())
		release, err := tryLock(filepath.Join(p, ownerLock))
		if err != nil {
			continue // in use (EWOULDBLOCK), or not a LockedTempDir
		}
		freed += treeSize(p)
		err = removeTree(p)
		release()
		if err != nil {
			return freed, fmt.Errorf("cleaning temporary directory %s: %w", p, err)
		}
	}
	return freed, nil
}
