package builder

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/imgbuild/imgbuild/layers"
)

// CacheMountsDir is where the directories of RUN --mount=type=cache live
// in st (ROOT/cache-mounts).
func CacheMountsDir(st *layers.Store) string {
	return filepath.Join(st.Root(), cacheMountsDir)
}

// PruneCacheMounts removes the RUN --mount=type=cache directories that no
// running step uses (imgbuild prune --all, as docker builder prune --all)
// and returns how many caches and bytes went. A cache in use (any of its
// instance locks held, or one being created) is kept.
func PruneCacheMounts(ctx context.Context, st *layers.Store) (caches int, bytes int64, err error) {
	dir := CacheMountsDir(st)
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, fmt.Errorf("cache mounts: %w", err)
	}
	for _, e := range ents {
		if err := ctx.Err(); err != nil {
			return caches, bytes, err
		}
		if !e.IsDir() {
			continue
		}
		kdir := filepath.Join(dir, e.Name())
		n, removed, err := pruneCacheMount(kdir)
		if err != nil {
			return caches, bytes, fmt.Errorf("cache mount %s: %w", e.Name(), err)
		}
		if removed {
			caches++
			bytes += n
		}
	}
	return caches, bytes, nil
}

// pruneCacheMount removes one cache directory unless it is in use: it
// holds create.lock and every instance lock while it removes.
func pruneCacheMount(kdir string) (int64, bool, error) {
	create, err := flockTry(filepath.Join(kdir, "create.lock"))
	if err != nil || create == nil {
		return 0, false, err
	}
	defer create()
	ents, err := os.ReadDir(kdir)
	if err != nil {
		return 0, false, err
	}
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".lock") || e.Name() == "create.lock" {
			continue
		}
		release, err := flockTry(filepath.Join(kdir, e.Name()))
		if err != nil || release == nil {
			return 0, false, err
		}
		defer release()
	}
	var n int64
	seen := map[[2]uint64]bool{} // hard links count once
	filepath.WalkDir(kdir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return nil
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			id := [2]uint64{uint64(st.Dev), st.Ino}
			if seen[id] {
				return nil
			}
			seen[id] = true
		}
		n += fi.Size()
		return nil
	})
	return n, true, os.RemoveAll(kdir)
}
