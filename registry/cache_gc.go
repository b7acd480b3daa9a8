package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sys/unix"
)

// maxLayoutDepth bounds the nesting of indexes the sweep follows.
const maxLayoutDepth = 16

// lockLayout takes an exclusive flock(2) lock on the directory dir, waiting
// until it is granted or ctx is done. locked is false (and release a no-op)
// when the file system cannot lock it: the caller then must not sweep.
func lockLayout(ctx context.Context, dir string) (release func(), locked bool, err error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, false, err
	}
	delay := time.Millisecond
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, true, nil // closing drops the lock
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			return func() {}, false, nil
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, false, fmt.Errorf("waiting for the lock on %s: %w", dir, ctx.Err())
		case <-time.After(delay):
		}
		delay = min(2*delay, 50*time.Millisecond)
	}
}

// replaceCacheEntry points the index.json of the layout dir at img under
// the ref.name CacheRefName, dropping the entries of that name before it.
// Other entries are kept. The new index.json replaces the old by a rename.
func replaceCacheEntry(dir string, img v1.Image) error {
	desc, err := partial.Descriptor(img)
	if err != nil {
		return err
	}
	desc.Annotations = map[string]string{AnnotationRefName: CacheRefName}
	raw, err := readFileLimit(filepath.Join(dir, "index.json"), maxCacheManifest)
	if err != nil {
		return err
	}
	var idx v1.IndexManifest
	if err := json.Unmarshal(raw, &idx); err != nil {
		return fmt.Errorf("index.json: %w", err)
	}
	kept := make([]v1.Descriptor, 0, len(idx.Manifests)+1)
	for _, d := range idx.Manifests {
		if d.Annotations[AnnotationRefName] != CacheRefName {
			kept = append(kept, d)
		}
	}
	idx.Manifests = append(kept, *desc)
	out, err := json.MarshalIndent(idx, "", "   ")
	if err != nil {
		return err
	}
	return replaceFile(dir, "index.json", out)
}

// replaceFile writes data to dir/name through a synced temporary file in
// dir and a rename.
func replaceFile(dir, name string, data []byte) error {
	f, err := os.CreateTemp(dir, "."+name+"-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // fails harmlessly after the rename
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(0o644)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), filepath.Join(dir, name))
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// sweepLayout removes the files of dir/blobs/sha256 named by a digest that
// liveBlobs does not list, and returns their names. When liveBlobs fails
// (something in the layout cannot be read or understood) it removes
// nothing and returns no error. Files not named by a digest (another
// writer's temporary files) and directories are left alone.
func sweepLayout(ctx context.Context, dir string) (removed []string, err error) {
	live, err := liveBlobs(ctx, dir)
	if err != nil {
		return nil, nil // in doubt, keep everything
	}
	blobs := filepath.Join(dir, "blobs", "sha256")
	entries, err := os.ReadDir(blobs)
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return removed, err
		}
		name := e.Name()
		if live[name] || !e.Type().IsRegular() || !validDigest(v1.Hash{Algorithm: "sha256", Hex: name}) {
			continue
		}
		if err := os.Remove(filepath.Join(blobs, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return removed, err
		}
		removed = append(removed, name)
	}
	return removed, nil
}

// liveBlobs returns the hex digests of the sha256 blobs that the index.json
// of the layout dir references: the manifests and indexes it lists, and
// what those reference (configs, layers, the manifests of indexes, subjects)
// down to the leaves. Manifests are read whole and checked against their
// descriptors. Any error means the references are not known for sure.
func liveBlobs(ctx context.Context, dir string) (map[string]bool, error) {
	raw, err := readFileLimit(filepath.Join(dir, "index.json"), maxCacheManifest)
	if err != nil {
		return nil, err
	}
	var idx layoutDoc
	if err := json.Unmarshal(raw, &idx); err != nil {
		return nil, fmt.Errorf("index.json: %w", err)
	}
	w := &layoutWalker{dir: dir, live: map[string]bool{}, walked: map[v1.Hash]bool{}}
	if err := w.children(ctx, idx, 0); err != nil {
		return nil, err
	}
	return w.live, nil
}

// layoutDoc is what the sweep reads of index.json, an image index, a
// Docker manifest list or an image manifest.
type layoutDoc struct {
	MediaType types.MediaType `json:"mediaType"`
	Config    *v1.Descriptor  `json:"config"`
	Layers    []v1.Descriptor `json:"layers"`
	Manifests []v1.Descriptor `json:"manifests"`
	Subject   *v1.Descriptor  `json:"subject"`
}

type layoutWalker struct {
	dir    string
	live   map[string]bool  // blobs referenced
	walked map[v1.Hash]bool // manifests read
}

// children marks what doc references: the manifests of an index, the
// config and layers of a manifest, and its subject.
func (w *layoutWalker) children(ctx context.Context, doc layoutDoc, depth int) error {
	for _, m := range doc.Manifests {
		if err := w.manifest(ctx, m, depth+1, false); err != nil {
			return err
		}
	}
	if doc.Config != nil {
		if err := w.leaf(*doc.Config); err != nil {
			return err
		}
	}
	for _, l := range doc.Layers {
		if err := w.leaf(l); err != nil {
			return err
		}
	}
	if doc.Subject != nil {
		return w.manifest(ctx, *doc.Subject, depth+1, true)
	}
	return nil
}

// leaf marks a blob that references nothing. Blobs of other algorithms
// live outside blobs/sha256 and are never swept.
func (w *layoutWalker) leaf(d v1.Descriptor) error {
	if d.Digest.Algorithm != "sha256" {
		return nil
	}
	if !validDigest(d.Digest) {
		return fmt.Errorf("blob %q: invalid digest", d.Digest)
	}
	w.live[d.Digest.Hex] = true
	return nil
}

// manifest marks the manifest or index d and walks it. A missing blob is
// an error unless optional (a subject need not be in the layout).
func (w *layoutWalker) manifest(ctx context.Context, d v1.Descriptor, depth int, optional bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if !validDigest(d.Digest) {
		return fmt.Errorf("manifest %q: not a sha256 digest", d.Digest)
	}
	if w.walked[d.Digest] {
		return nil
	}
	w.walked[d.Digest] = true
	w.live[d.Digest.Hex] = true
	if depth > maxLayoutDepth {
		return fmt.Errorf("manifest %s: indexes nested deeper than %d", d.Digest, maxLayoutDepth)
	}
	if d.Size < 0 || d.Size > maxCacheManifest {
		return fmt.Errorf("manifest %s: size %d", d.Digest, d.Size)
	}
	f, err := os.Open(filepath.Join(w.dir, "blobs", "sha256", d.Digest.Hex))
	if optional && errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("manifest %s: %w", d.Digest, err)
	}
	raw, err := readBlob(f, d)
	if err != nil {
		return fmt.Errorf("manifest %s: %w", d.Digest, err)
	}
	var doc layoutDoc
	if err := json.Unmarshal(raw, &doc); err != nil {
		return fmt.Errorf("manifest %s: %w", d.Digest, err)
	}
	mt := d.MediaType
	if mt == "" {
		mt = doc.MediaType
	}
	switch mt {
	case types.OCIImageIndex, types.DockerManifestList:
	case types.OCIManifestSchema1, types.DockerManifestSchema2:
		if doc.Config == nil {
			return fmt.Errorf("manifest %s: no config", d.Digest)
		}
	default:
		return fmt.Errorf("manifest %s: unknown media type %q", d.Digest, mt)
	}
	if doc.MediaType != "" && doc.MediaType != mt {
		return fmt.Errorf("manifest %s: media type %q, descriptor says %q", d.Digest, doc.MediaType, mt)
	}
	return w.children(ctx, doc, depth)
}
