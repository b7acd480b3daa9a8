package layers

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"
)

// ErrNotFound is wrapped by errors about images, tags and blobs that are not
// in the store.
var ErrNotFound = errors.New("not found")

// Store is the content-addressed local store. Its root directory holds:
//
//	oci/          an OCI image layout: oci-layout, index.json, blobs/sha256/
//	              (index.json entries carry org.opencontainers.image.ref.name
//	              annotations such as "user/app:1.0"; see Tag)
//	tmp/          scratch space: blobs being written, TempDir directories
//	index.lock    flock(2) serialising index.json updates across processes
//	gc.lock       flock(2): shared by leases (see Lease), exclusive for Prune
//	sources/      the registry repositories layer blobs are known to be in
//	              (see AddBlobSource): a blob listed there may be absent
//	              from oci/blobs (lazy) until a layer read fetches it
//
// and leaves every other name (layers/, cache/, ...) to the rest of imgbuild.
// A Store is safe for concurrent use by goroutines and by processes sharing
// the root.
type Store struct {
	root string
	lazy *lazyState // set by WithFetcher
}

const (
	ociDir       = "oci"
	tmpDir       = "tmp"
	indexLock    = "index.lock"
	gcLock       = "gc.lock"
	layoutFile   = "oci-layout"
	indexFile    = "index.json"
	layoutString = `{"imageLayoutVersion":"1.0.0"}`
)

// OpenStore opens (creating if needed) the store rooted at root.
func OpenStore(ctx context.Context, root string) (*Store, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("opening store %s: %w", root, err)
	}
	s := &Store{root: abs}
	for _, d := range []string{filepath.Join(ociDir, "blobs", "sha256"), tmpDir} {
		if err := os.MkdirAll(filepath.Join(abs, d), 0o755); err != nil {
			return nil, fmt.Errorf("opening store: %w", err)
		}
	}
	if err := s.initLayout(ctx); err != nil {
		return nil, fmt.Errorf("opening store %s: %w", abs, err)
	}
	return s, nil
}

// initLayout writes oci-layout and an empty index.json when missing, and
// checks the layout version otherwise.
func (s *Store) initLayout(ctx context.Context) error {
	p := filepath.Join(s.ociPath(), layoutFile)
	b, err := os.ReadFile(p)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if err := s.writeFileAtomic(s.ociPath(), layoutFile, []byte(layoutString)); err != nil {
			return err
		}
	case err != nil:
		return err
	default:
		var l struct {
			Version string `json:"imageLayoutVersion"`
		}
		if err := json.Unmarshal(b, &l); err != nil || l.Version != "1.0.0" {
			return fmt.Errorf("%s: not an OCI image layout 1.0.0", p)
		}
	}
	if _, err := os.Stat(filepath.Join(s.ociPath(), indexFile)); err == nil {
		return nil
	}
	return s.updateIndex(ctx, func(*v1.IndexManifest) error { return nil })
}

// Root is the store's root directory (absolute).
func (s *Store) Root() string { return s.root }

// OCILayout is the directory of the store's OCI image layout (Root()/oci),
// readable by skopeo ("oci:DIR:user/app:1.0") and umoci.
func (s *Store) OCILayout() string { return s.ociPath() }

func (s *Store) ociPath() string { return filepath.Join(s.root, ociDir) }

func (s *Store) blobPath(h v1.Hash) (string, error) {
	if h.Algorithm != "sha256" || len(h.Hex) != 64 || !isHex(h.Hex) {
		return "", fmt.Errorf("unsupported digest %q", h)
	}
	return filepath.Join(s.root, ociDir, "blobs", "sha256", h.Hex), nil
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// Blob opens a stored blob. The reader fails at EOF with ErrDigestMismatch
// if the stored bytes do not match h.
func (s *Store) Blob(ctx context.Context, h v1.Hash) (io.ReadCloser, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return s.openBlob(h, -1)
}

// hasBlob reports whether blob h is stored with the given size (any size
// when size < 0).
func (s *Store) hasBlob(h v1.Hash, size int64) bool {
	p, err := s.blobPath(h)
	if err != nil {
		return false
	}
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && (size < 0 || fi.Size() == size)
}

// TempDir makes a fresh directory under Root()/tmp for scratch work. The
// caller removes it when done; Prune removes leftovers when no lease is held.
func (s *Store) TempDir(ctx context.Context, prefix string) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	d, err := os.MkdirTemp(filepath.Join(s.root, tmpDir), prefix+"*")
	if err != nil {
		return "", fmt.Errorf("making temporary directory: %w", err)
	}
	return d, nil
}

// WriteLayer runs writeTar into one streaming pass: tar -> sha256 (diffID) ->
// compressor -> sha256 (digest) -> temporary file -> fsync -> rename into the
// blob store. Memory stays bounded whatever the layer size. The returned
// layer (OCI media type) is backed by the stored blob.
func (s *Store) WriteLayer(ctx context.Context, writeTar func(io.Writer) error, opts LayerOptions) (v1.Layer, error) {
	mt, err := opts.MediaType()
	if err != nil {
		return nil, err
	}
	release, err := s.Lease(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	bw, err := s.newBlobWriter()
	if err != nil {
		return nil, err
	}
	defer bw.abort()
	comp, err := newCompressor(bw, opts)
	if err != nil {
		return nil, err
	}
	diff := sha256.New()
	if err := writeTar(io.MultiWriter(diff, comp)); err != nil {
		comp.Close()
		return nil, fmt.Errorf("writing layer: %w", err)
	}
	if err := comp.Close(); err != nil {
		return nil, fmt.Errorf("compressing layer: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	digest, size := bw.digest(), bw.n
	if err := bw.commit(digest); err != nil {
		return nil, err
	}
	return &storeLayer{s: s, digest: digest, diffID: hashOf(diff), size: size, mediaType: mt}, nil
}

// putBlob streams r into the store as blob want (of the given size when
// size >= 0). Bytes that do not match are not stored: the error wraps
// ErrDigestMismatch.
func (s *Store) putBlob(ctx context.Context, r io.Reader, want v1.Hash, size int64) error {
	if _, err := s.blobPath(want); err != nil {
		return err
	}
	bw, err := s.newBlobWriter()
	if err != nil {
		return err
	}
	defer bw.abort()
	src := r
	if size >= 0 {
		src = io.LimitReader(r, size+1)
	}
	if _, err := io.Copy(bw, storeCtxReader{ctx, src}); err != nil {
		return fmt.Errorf("storing blob %s: %w", want, err)
	}
	if got := bw.digest(); got != want || (size >= 0 && bw.n != size) {
		return fmt.Errorf("storing blob %s: got %d bytes with digest %s: %w", want, bw.n, got, ErrDigestMismatch)
	}
	return bw.commit(want)
}

// blobWriter writes a temporary blob file in tmp/, hashing what it writes.
type blobWriter struct {
	s   *Store
	f   *os.File
	buf *bufio.Writer
	h   hash.Hash
	n   int64 // bytes written
	// synced is the offset up to which writeback has been started.
	synced int64
	done   bool
}

func (s *Store) newBlobWriter() (*blobWriter, error) {
	f, err := os.CreateTemp(filepath.Join(s.root, tmpDir), "blob-*")
	if err != nil {
		return nil, fmt.Errorf("creating temporary blob: %w", err)
	}
	return &blobWriter{s: s, f: f, buf: bufio.NewWriterSize(f, 64<<10), h: sha256.New()}, nil
}

// writebackChunk is how much written data a blobWriter lets accumulate
// before starting its writeback.
const writebackChunk = 8 << 20

func (b *blobWriter) Write(p []byte) (int, error) {
	n, err := b.buf.Write(p)
	b.h.Write(p[:n])
	b.n += int64(n)
	if onDisk := b.n - int64(b.buf.Buffered()); onDisk-b.synced >= writebackChunk {
		startWriteback(b.f, b.synced, onDisk-b.synced)
		b.synced = onDisk
	}
	return n, err
}

func (b *blobWriter) digest() v1.Hash { return hashOf(b.h) }

// commit flushes, fsyncs and renames the file to blob h (keeping an
// existing copy of the blob).
func (b *blobWriter) commit(h v1.Hash) error {
	dst, err := b.s.blobPath(h)
	if err != nil {
		return err
	}
	if err := b.buf.Flush(); err != nil {
		return fmt.Errorf("writing blob %s: %w", h, err)
	}
	if b.s.hasBlob(h, b.n) {
		return nil // stored already (it was verified then): abort removes our copy
	}
	if err := b.f.Chmod(0o644); err != nil {
		return fmt.Errorf("writing blob %s: %w", h, err)
	}
	if err := b.f.Sync(); err != nil {
		return fmt.Errorf("syncing blob %s: %w", h, err)
	}
	if err := os.Rename(b.f.Name(), dst); err != nil {
		return fmt.Errorf("storing blob %s: %w", h, err)
	}
	b.done = true
	b.f.Close()
	return syncDir(filepath.Dir(dst))
}

// abort removes the temporary file unless it was committed.
func (b *blobWriter) abort() {
	if !b.done {
		b.f.Close()
		os.Remove(b.f.Name())
	}
}

func hashOf(h hash.Hash) v1.Hash {
	return v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", h.Sum(nil))}
}

func sha256Of(b []byte) v1.Hash {
	sum := sha256.Sum256(b)
	return v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", sum[:])}
}

// putBytes stores a small blob unless present.
func (s *Store) putBytes(ctx context.Context, b []byte, want v1.Hash) error {
	if s.hasBlob(want, int64(len(b))) {
		return nil
	}
	return s.putBlob(ctx, bytes.NewReader(b), want, int64(len(b)))
}

type storeCtxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c storeCtxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// writeFileAtomic writes dir/name through a synced temporary file in the
// store's tmp/ and a rename, so readers see the old or the new content,
// never a mix.
func (s *Store) writeFileAtomic(dir, name string, b []byte) error {
	f, err := os.CreateTemp(filepath.Join(s.root, tmpDir), name+"-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	_, err = f.Write(b)
	if err == nil {
		err = f.Chmod(0o644)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	if err := os.Rename(f.Name(), filepath.Join(dir, name)); err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("syncing %s: %w", dir, err)
	}
	return nil
}
