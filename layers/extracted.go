package layers

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"
)

// layerCache is the cache of extracted layer trees in Root()/layers, shared
// read-only by every mount of every build using the store:
//
//	layers/<diffID hex>[suffix]   one layer, in overlay format: whiteouts are
//	                               0/0 character devices, opaque directories
//	                               carry the <prefix>opaque="y" xattr
//	layers/c-<chain ID hex>       layers merged bottom up (Apply), for the
//	                               bottom of stacks deeper than MaxLowers
//	layers/<name>.lock            flock(2) serialising the extraction of name
//
// A tree appears under its final name by rename(2) once it is complete,
// verified (the layer was read to its end, so a digest mismatch fails the
// extraction) and synced (syncfs): its presence is its ready marker. Writers
// racing on one name (goroutines or processes) serialise on its lock file;
// the later ones find the tree ready. Nothing ever writes below a ready
// tree; users hold a store lease (Lease) while they use one, which keeps
// PruneExtractedLayers away.
type layerCache struct {
	s       *Store
	suffix  string       // "" (trusted.overlay.*) or "-u" (user.overlay.*)
	apply   ApplyOptions // owners (NoChown) for every extraction
	convert func(ctx context.Context, root string) error
}

func (c *layerCache) path(name string) string {
	return filepath.Join(c.s.root, extractedDir, name)
}

// layer returns the extracted tree of l, extracting it first when missing:
// Apply without whiteout handling, then convert turns the OCI whiteout files
// into overlay whiteouts.
func (c *layerCache) layer(ctx context.Context, l v1.Layer, diffID v1.Hash) (string, error) {
	return c.ensure(ctx, diffID.Hex+c.suffix, func(tree string) error {
		opts := c.apply
		opts.NoWhiteouts = true
		if err := applyVerified(ctx, tree, l, diffID, opts); err != nil {
			return err
		}
		return c.convert(ctx, tree)
	})
}

// chain returns the tree of ls applied in order (OCI whiteouts honoured),
// extracting it first when missing. It serves as the bottom lower of a
// mount only: nothing below it needs whiteouts.
func (c *layerCache) chain(ctx context.Context, ls []v1.Layer, diffIDs []v1.Hash) (string, error) {
	return c.ensure(ctx, "c-"+chainID(diffIDs).Hex, func(tree string) error {
		for i, l := range ls {
			if err := applyVerified(ctx, tree, l, diffIDs[i], c.apply); err != nil {
				return fmt.Errorf("layer %d: %w", i, err)
			}
		}
		return nil
	})
}

// ensure returns the ready tree name, filling it first when missing: fill
// writes a fresh directory in the store's tmp/, which is then synced and
// renamed into place.
func (c *layerCache) ensure(ctx context.Context, name string, fill func(tree string) error) (string, error) {
	final := c.path(name)
	if isDir(final) {
		return final, nil
	}
	if err := os.MkdirAll(filepath.Dir(final), 0o755); err != nil {
		return "", fmt.Errorf("extracting layer: %w", err)
	}
	unlock, err := lockFile(ctx, final+".lock", unix.LOCK_EX)
	if err != nil {
		return "", fmt.Errorf("extracting layer %s: %w", name, err)
	}
	defer unlock()
	if isDir(final) {
		return final, nil // extracted meanwhile
	}
	tmp, err := c.s.TempDir(ctx, "extract-")
	if err != nil {
		return "", err
	}
	defer removeTree(tmp)
	tree := filepath.Join(tmp, "tree")
	if err := fill(tree); err != nil {
		return "", fmt.Errorf("extracting layer %s: %w", name, err)
	}
	if err := c.publish(tree, final); err != nil {
		return "", fmt.Errorf("extracting layer %s: %w", name, err)
	}
	return final, nil
}

// adopt makes tree (a committed overlay upperdir, already in overlay
// format) the extracted tree of name, unless one is there already; tree is
// then left in place for its owner to remove.
func (c *layerCache) adopt(ctx context.Context, name, tree string) error {
	final := c.path(name)
	if isDir(final) {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(final), 0o755); err != nil {
		return fmt.Errorf("keeping layer tree: %w", err)
	}
	unlock, err := lockFile(ctx, final+".lock", unix.LOCK_EX)
	if err != nil {
		return fmt.Errorf("keeping layer tree %s: %w", name, err)
	}
	defer unlock()
	if isDir(final) {
		return nil
	}
	if err := c.publish(tree, final); err != nil {
		return fmt.Errorf("keeping layer tree %s: %w", name, err)
	}
	return nil
}

// publish syncs tree and renames it to final.
func (c *layerCache) publish(tree, final string) error {
	if err := syncTree(tree); err != nil {
		return err
	}
	if err := os.Rename(tree, final); err != nil {
		return err
	}
	return syncDir(filepath.Dir(final))
}

func isDir(p string) bool {
	fi, err := os.Lstat(p)
	return err == nil && fi.IsDir()
}

// applyVerified applies the uncompressed tar of l into dir, reads it to
// its end and checks that it hashes to diffID: the cache is keyed by
// diffID, whatever the layer's own reader verifies.
func applyVerified(ctx context.Context, dir string, l v1.Layer, diffID v1.Hash, opts ApplyOptions) error {
	rc, err := l.Uncompressed()
	if err != nil {
		return fmt.Errorf("opening layer: %w", err)
	}
	defer rc.Close()
	h := sha256.New()
	r := io.TeeReader(rc, h)
	if err := Apply(ctx, dir, r, opts); err != nil {
		return err
	}
	if _, err := io.Copy(io.Discard, r); err != nil {
		return fmt.Errorf("reading layer to its end: %w", err)
	}
	if got := hashOf(h); got != diffID {
		return fmt.Errorf("layer content has diffID %s, want %s: %w", got, diffID, ErrDigestMismatch)
	}
	return nil
}

// PruneExtractedLayers removes from Root()/layers the extracted trees of
// layers whose diffID keep does not report, every merged stack ("c-"
// trees, rebuilt when needed) and the lock files of removed trees, and
// from Root()/snapshots the scratch directories of dead processes. It
// returns how many trees it removed and the bytes of their regular files.
// Like Prune, it first waits (until ctx is done) for every lease to be
// released. Prune, which holds that lock already, calls pruneExtracted.
func (s *Store) PruneExtractedLayers(ctx context.Context, keep func(diffID v1.Hash) bool) (trees int, bytes int64, err error) {
	release, err := lockFile(ctx, filepath.Join(s.root, gcLock), unix.LOCK_EX)
	if err != nil {
		return 0, 0, fmt.Errorf("pruning extracted layers: %w", err)
	}
	defer release()
	return s.pruneExtracted(ctx, keep)
}

// pruneExtracted is PruneExtractedLayers for a caller holding the
// exclusive gc lock.
func (s *Store) pruneExtracted(ctx context.Context, keep func(diffID v1.Hash) bool) (trees int, bytes int64, err error) {
	if err := s.cleanScratch(ctx); err != nil {
		return 0, 0, fmt.Errorf("pruning extracted layers: %w", err)
	}
	dir := filepath.Join(s.root, extractedDir)
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, fmt.Errorf("pruning extracted layers: %w", err)
	}
	for _, e := range ents {
		if err := ctx.Err(); err != nil {
			return trees, bytes, err
		}
		name := e.Name()
		if !e.IsDir() || !prunable(name, keep) {
			continue
		}
		p := filepath.Join(dir, name)
		n := treeSize(p)
		if err := removeTree(p); err != nil {
			return trees, bytes, fmt.Errorf("pruning extracted layers: %w", err)
		}
		trees++
		bytes += n
	}
	for _, e := range ents {
		if name, ok := strings.CutSuffix(e.Name(), ".lock"); ok && !isDir(filepath.Join(dir, name)) {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
	return trees, bytes, nil
}

// prunable reports whether the tree named name in Root()/layers goes.
// Names imgbuild does not know are left alone.
func prunable(name string, keep func(v1.Hash) bool) bool {
	if h, ok := strings.CutPrefix(name, "c-"); ok {
		return len(h) == 64 && isHex(h)
	}
	h := strings.TrimSuffix(name, "-u")
	if len(h) != 64 || !isHex(h) {
		return false
	}
	return keep == nil || !keep(v1.Hash{Algorithm: "sha256", Hex: h})
}
