package layers

// TEMPORARY API SKETCH owned by the store helper: replace with real files and delete this file.

import (
	"context"
	"errors"
	"io"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

var errStub = errors.New("not implemented yet")

// PruneReport says what Prune removed.
type PruneReport struct {
	Blobs int
	Bytes int64
}

// Prune removes unreferenced blobs and stale temporary data.
func (s *Store) Prune(ctx context.Context) (PruneReport, error) { return PruneReport{}, errStub }

// Compression names a layer compression.
type Compression string

// Supported compressions.
const (
	Gzip         Compression = "gzip"
	Zstd         Compression = "zstd"
	Uncompressed Compression = "uncompressed"
)

// LayerOptions control how a layer is written. The zero value writes gzip at
// the library's default level.
type LayerOptions struct {
	Compression Compression // "" means Gzip
	Level       int         // 0 means the compressor's default
}

// TarOptions control WriteTar.
type TarOptions struct {
	// Paths, when non-nil, selects the entries to write: slash-separated paths
	// relative to root ("app/main.go"), each written non-recursively, plus all
	// of their ancestor directories. When nil the whole tree is written.
	Paths []string
	// SourceDateEpoch, when non-nil, clamps every timestamp to it.
	SourceDateEpoch *time.Time
}

// WriteTar writes a deterministic tar (sorted, PAX, numeric ids, xattrs,
// hardlinks as hardlinks) of the tree under root into w.
func WriteTar(ctx context.Context, w io.Writer, root string, opts TarOptions) error {
	return errStub
}

// Store is the content-addressed local store.
type Store struct {
	root string
}

// ImageInfo describes one tagged image in the store.
type ImageInfo struct {
	Ref     string
	Digest  v1.Hash
	Created time.Time
	Size    int64
}

// OpenStore opens (creating if needed) the store rooted at root.
func OpenStore(ctx context.Context, root string) (*Store, error) { return nil, errStub }

// Root is the store's root directory.
func (s *Store) Root() string { return s.root }

// WriteLayer runs writeTar into one streaming pass: tar -> sha256 (diffID) ->
// compressor -> sha256 (digest) -> blob in the store. The returned layer is
// backed by the stored blob.
func (s *Store) WriteLayer(ctx context.Context, writeTar func(io.Writer) error, opts LayerOptions) (v1.Layer, error) {
	return nil, errStub
}

// PutImage stores every blob of img (verifying digests), its config and manifest.
func (s *Store) PutImage(ctx context.Context, img v1.Image) (v1.Hash, error) {
	return v1.Hash{}, errStub
}

// Tag points ref at the stored manifest digest.
func (s *Store) Tag(ctx context.Context, ref string, digest v1.Hash) error { return errStub }

// Image returns a stored image by tag, full digest or unique digest prefix.
func (s *Store) Image(ctx context.Context, ref string) (v1.Image, error) { return nil, errStub }

// Images lists the tagged images.
func (s *Store) Images(ctx context.Context) ([]ImageInfo, error) { return nil, errStub }

// Untag removes a tag.
func (s *Store) Untag(ctx context.Context, ref string) error { return errStub }

// TempDir makes a fresh directory under the store for scratch work.
func (s *Store) TempDir(ctx context.Context, prefix string) (string, error) { return "", errStub }
