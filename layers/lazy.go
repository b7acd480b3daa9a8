package layers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// sourcesDir holds one record per layer blob known to be in registry
// repositories (see AddBlobSource): sources/<hex>.
const sourcesDir = "sources"

// maxSources bounds the repositories recorded for one blob.
const maxSources = 8

// A Fetcher opens a layer blob in a registry repository. The store calls it
// to read a lazy blob: one it knows by its source repositories (see
// AddBlobSource) but does not hold.
type Fetcher interface {
	// Fetch opens blob desc of repository repo ("registry/path", as
	// recorded by AddBlobSource).
	Fetch(ctx context.Context, repo string, desc v1.Descriptor) (io.ReadCloser, error)
}

// blobSource is the record of a blob's source repositories.
type blobSource struct {
	MediaType types.MediaType `json:"mediaType"`
	Size      int64           `json:"size"`
	DiffID    v1.Hash         `json:"diffID"`
	Repos     []string        `json:"repositories"`
}

// lazyState is shared by the Store values WithFetcher makes.
type lazyState struct {
	ctx     context.Context
	fetcher Fetcher
	mu      sync.Mutex
	locks   map[v1.Hash]*sync.Mutex // one fetch per blob at a time
}

// WithFetcher returns a Store on the same root that fetches lazy blobs
// through f when a layer is read; ctx bounds those fetches. Without a
// fetcher, reading a lazy blob fails with ErrNotFound.
func (s *Store) WithFetcher(ctx context.Context, f Fetcher) *Store {
	c := *s
	c.lazy = &lazyState{ctx: ctx, fetcher: f, locks: map[v1.Hash]*sync.Mutex{}}
	return &c
}

func (s *Store) sourcePath(h v1.Hash) (string, error) {
	if _, err := s.blobPath(h); err != nil {
		return "", err
	}
	return filepath.Join(s.root, sourcesDir, h.Hex), nil
}

// AddBlobSource records that layer blob desc, whose uncompressed content
// has digest diffID, is in registry repository repo. A layer read from the
// store whose blob is not stored is then fetched from there (lazily, see
// WithFetcher), and a push to another repository of the same registry
// mounts it from there (see BlobSources).
func (s *Store) AddBlobSource(ctx context.Context, desc v1.Descriptor, diffID v1.Hash, repo string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p, err := s.sourcePath(desc.Digest)
	if err != nil {
		return err
	}
	if repo == "" || diffID.Algorithm != "sha256" {
		return fmt.Errorf("blob source %s: repository and diffID are required", desc.Digest)
	}
	rec, err := s.readSource(desc.Digest)
	if err != nil || rec.Size != desc.Size || rec.DiffID != diffID {
		rec = &blobSource{MediaType: desc.MediaType, Size: desc.Size, DiffID: diffID}
	}
	if slices.Contains(rec.Repos, repo) {
		return nil
	}
	rec.Repos = append([]string{repo}, rec.Repos...) // the latest first
	if len(rec.Repos) > maxSources {
		rec.Repos = rec.Repos[:maxSources]
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("recording blob source: %w", err)
	}
	return s.writeFileAtomic(filepath.Dir(p), filepath.Base(p), b)
}

func (s *Store) readSource(h v1.Hash) (*blobSource, error) {
	p, err := s.sourcePath(h)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	var rec blobSource
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, fmt.Errorf("blob source %s: %w", h, err)
	}
	return &rec, nil
}

// BlobSources lists the repositories blob h is known to be in, the most
// recently recorded first.
func (s *Store) BlobSources(h v1.Hash) []string {
	rec, err := s.readSource(h)
	if err != nil {
		return nil
	}
	return rec.Repos
}

// lazyLayer returns the layer desc when the store holds its blob or knows
// a source for it; ok is false otherwise.
func (s *Store) lazyLayer(desc v1.Descriptor, diffID v1.Hash) (l *storeLayer, ok bool) {
	l = &storeLayer{s: s, digest: desc.Digest, diffID: diffID, size: desc.Size, mediaType: desc.MediaType}
	if s.hasBlob(desc.Digest, desc.Size) {
		return l, true
	}
	rec, err := s.readSource(desc.Digest)
	if err != nil || len(rec.Repos) == 0 || rec.Size != desc.Size || (diffID != (v1.Hash{}) && rec.DiffID != diffID) {
		return nil, false
	}
	if l.diffID == (v1.Hash{}) {
		l.diffID = rec.DiffID
	}
	return l, true
}

// fetchBlob downloads lazy blob l from its sources into the store,
// verifying its digest, size and diffID. Concurrent readers of one blob
// wait for a single download.
func (s *Store) fetchBlob(l *storeLayer) error {
	lz := s.lazy
	if lz == nil {
		return fmt.Errorf("blob %s: not stored and no registry to fetch it from: %w", l.digest, ErrNotFound)
	}
	lz.mu.Lock()
	m, ok := lz.locks[l.digest]
	if !ok {
		m = &sync.Mutex{}
		lz.locks[l.digest] = m
	}
	lz.mu.Unlock()
	m.Lock()
	defer m.Unlock()
	if s.hasBlob(l.digest, l.size) {
		return nil // fetched meanwhile
	}
	rec, err := s.readSource(l.digest)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("blob %s: %w", l.digest, ErrNotFound)
		}
		return err
	}
	release, err := s.Lease(lz.ctx)
	if err != nil {
		return err
	}
	defer release()
	desc := v1.Descriptor{MediaType: l.mediaType, Size: l.size, Digest: l.digest}
	var errs []error
	for _, repo := range rec.Repos {
		err := s.fetchFrom(lz, repo, desc, rec.DiffID)
		if err == nil {
			return nil
		}
		if lz.ctx.Err() != nil {
			return lz.ctx.Err()
		}
		errs = append(errs, fmt.Errorf("from %s: %w", repo, err))
	}
	return fmt.Errorf("fetching layer %s: %w", l.digest, errors.Join(errs...))
}

func (s *Store) fetchFrom(lz *lazyState, repo string, desc v1.Descriptor, diffID v1.Hash) error {
	rc, err := lz.fetcher.Fetch(lz.ctx, repo, desc)
	if err != nil {
		return err
	}
	defer rc.Close()
	return s.putLayerBlob(lz.ctx, rc, desc, diffID)
}

// fetchParallel bounds the concurrent downloads of FetchImage.
const fetchParallel = 4

// FetchImage downloads every layer blob of stored image img that the store
// knows only by its sources, so that the OCI layout under OCILayout() holds
// the whole image (for tools that read it directly).
func (s *Store) FetchImage(ctx context.Context, img v1.Image) error {
	ls, err := img.Layers()
	if err != nil {
		return err
	}
	return s.FetchLayers(ctx, ls)
}

// FetchLayers downloads the lazy blobs among ls (layers of this store),
// fetchParallel at a time; other layers are left alone.
func (s *Store) FetchLayers(ctx context.Context, ls []v1.Layer) error {
	var missing []*storeLayer
	for _, l := range ls {
		sl, ok := l.(*storeLayer)
		if ok && sl.s.root == s.root && !s.hasBlob(sl.digest, sl.size) {
			missing = append(missing, sl)
		}
	}
	errs := make([]error, len(missing))
	sem := make(chan struct{}, fetchParallel)
	var wg sync.WaitGroup
	for i, sl := range missing {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			if errs[i] = ctx.Err(); errs[i] == nil {
				errs[i] = s.fetchBlob(sl)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// BlobSources lists the registry repositories the layer's blob is known to
// be in (see Store.AddBlobSource): a push to another repository of one of
// those registries can mount it instead of uploading it.
func (l *storeLayer) BlobSources() []string { return l.s.BlobSources(l.digest) }

// sweepSources deletes the source records of blobs not in keep.
func (s *Store) sweepSources(ctx context.Context, keep map[v1.Hash]bool) error {
	dir := filepath.Join(s.root, sourcesDir)
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := ctx.Err(); err != nil {
			return err
		}
		if h := (v1.Hash{Algorithm: "sha256", Hex: e.Name()}); !keep[h] {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
	}
	return nil
}
