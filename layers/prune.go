package layers

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"
)

// PruneReport says what Prune removed.
type PruneReport struct {
	Images int   // untagged images dropped from the index
	Blobs  int   // blobs deleted
	Bytes  int64 // bytes freed: deleted blobs, extracted trees and temporary files
	Trees  int   // extracted layer trees (Root()/layers) removed
}

// TempGrace is how long Prune leaves entries of Root()/tmp alone after
// their last modification, in case a TempDir user holds no lease.
const TempGrace = 15 * time.Minute

// Prune drops untagged images from the index, deletes the blobs no tagged
// image and no build cache record references, and removes what is left in Root()/tmp (entries older
// than TempGrace). It first waits (until ctx is done) for every lease to be
// released, so it never deletes the blobs or scratch files of a build
// running in this or another process. If a tagged image cannot be read,
// Prune deletes no blob and fails.
func (s *Store) Prune(ctx context.Context) (PruneReport, error) {
	var rep PruneReport
	release, err := lockFile(ctx, filepath.Join(s.root, gcLock), unix.LOCK_EX)
	if err != nil {
		return rep, fmt.Errorf("pruning: %w", err)
	}
	defer release()
	var tagged []v1.Descriptor
	err = s.updateIndex(ctx, func(idx *v1.IndexManifest) error {
		kept := idx.Manifests[:0]
		for _, d := range idx.Manifests {
			if d.Annotations[RefNameAnnotation] == "" {
				rep.Images++
				continue
			}
			kept = append(kept, d)
		}
		idx.Manifests = kept
		tagged = append(tagged, kept...)
		return nil
	})
	if err != nil {
		return rep, fmt.Errorf("pruning: %w", err)
	}
	keep, diffIDs := map[v1.Hash]bool{}, map[v1.Hash]bool{}
	for _, d := range tagged {
		if err := s.markReachable(keep, diffIDs, d.Digest); err != nil {
			return rep, fmt.Errorf("pruning: image %s: %w", d.Annotations[RefNameAnnotation], err)
		}
	}
	recs, err := s.CacheRecords(ctx)
	if err != nil {
		return rep, fmt.Errorf("pruning: %w", err)
	}
	for _, r := range recs { // the build cache keeps its layers (PruneCache drops records)
		keep[r.Layer.Digest] = true
		diffIDs[r.DiffID] = true
	}
	if err := s.sweepBlobs(ctx, keep, &rep); err != nil {
		return rep, fmt.Errorf("pruning: %w", err)
	}
	if err := s.sweepSources(ctx, keep); err != nil {
		return rep, fmt.Errorf("pruning: %w", err)
	}
	trees, n, err := s.pruneExtracted(ctx, func(h v1.Hash) bool { return diffIDs[h] })
	rep.Trees += trees
	rep.Bytes += n
	if err != nil {
		return rep, fmt.Errorf("pruning: %w", err)
	}
	// index.json is written through tmp/ under the index lock.
	unlock, err := lockFile(ctx, filepath.Join(s.root, indexLock), unix.LOCK_EX)
	if err != nil {
		return rep, fmt.Errorf("pruning: %w", err)
	}
	defer unlock()
	if err := s.sweepTmp(&rep); err != nil {
		return rep, fmt.Errorf("pruning: %w", err)
	}
	return rep, nil
}

// markReachable adds manifest h and every blob it references (recursing
// into indexes) to keep, and its images' layer diffIDs to diffIDs.
func (s *Store) markReachable(keep, diffIDs map[v1.Hash]bool, h v1.Hash) error {
	if keep[h] {
		return nil
	}
	raw, err := s.readBlob(h, -1)
	if err != nil {
		return err
	}
	keep[h] = true
	mt, err := manifestMediaType(raw)
	if err != nil {
		return err
	}
	if mt.IsIndex() {
		idx, err := v1.ParseIndexManifest(bytes.NewReader(raw))
		if err != nil {
			return err
		}
		for _, d := range idx.Manifests {
			if err := s.markReachable(keep, diffIDs, d.Digest); err != nil {
				return err
			}
		}
		return nil
	}
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return err
	}
	keep[m.Config.Digest] = true
	for _, l := range m.Layers {
		keep[l.Digest] = true
	}
	rawCfg, err := s.readBlob(m.Config.Digest, m.Config.Size)
	if err != nil {
		return err
	}
	cfg, err := v1.ParseConfigFile(bytes.NewReader(rawCfg))
	if err != nil {
		return fmt.Errorf("config %s: %w", m.Config.Digest, err)
	}
	for _, d := range cfg.RootFS.DiffIDs {
		diffIDs[d] = true
	}
	return nil
}

func (s *Store) sweepBlobs(ctx context.Context, keep map[v1.Hash]bool, rep *PruneReport) error {
	dir := filepath.Join(s.ociPath(), "blobs", "sha256")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := ctx.Err(); err != nil {
			return err
		}
		h := v1.Hash{Algorithm: "sha256", Hex: e.Name()}
		if len(h.Hex) != 64 || !isHex(h.Hex) || keep[h] || !e.Type().IsRegular() {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue // removed meanwhile
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
		rep.Blobs++
		rep.Bytes += fi.Size()
	}
	return nil
}

// sweepTmp empties tmp/: with the exclusive gc lock and the index lock held
// no store writer is running, so everything there is left over, but for
// recent entries of TempDir users without a lease.
func (s *Store) sweepTmp(rep *PruneReport) error {
	freed, err := s.cleanTemp()
	rep.Bytes += freed
	if err != nil {
		return err
	}
	dir := filepath.Join(s.root, tmpDir)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil || time.Since(fi.ModTime()) < TempGrace {
			continue
		}
		p := filepath.Join(dir, e.Name())
		filepath.WalkDir(p, func(_ string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				if fi, err := d.Info(); err == nil {
					rep.Bytes += fi.Size()
				}
			}
			return nil
		})
		if err := os.RemoveAll(p); err != nil {
			return err
		}
	}
	return nil
}
