package layers

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// ErrDigestMismatch is wrapped by every error about bytes that do not match
// the digest (or size) they are stored or announced under.
var ErrDigestMismatch = errors.New("digest mismatch")

// storeLayer is a v1.Layer backed by a blob in the store.
type storeLayer struct {
	s         *Store
	digest    v1.Hash
	diffID    v1.Hash
	size      int64
	mediaType types.MediaType
}

var _ v1.Layer = (*storeLayer)(nil)

func (l *storeLayer) Digest() (v1.Hash, error)            { return l.digest, nil }
func (l *storeLayer) DiffID() (v1.Hash, error)            { return l.diffID, nil }
func (l *storeLayer) Size() (int64, error)                { return l.size, nil }
func (l *storeLayer) MediaType() (types.MediaType, error) { return l.mediaType, nil }

// Compressed opens the stored blob; the reader fails at EOF if the bytes do
// not match the layer's digest and size. A lazy blob (see AddBlobSource) is
// fetched into the store first.
func (l *storeLayer) Compressed() (io.ReadCloser, error) {
	rc, err := l.s.openBlob(l.digest, l.size)
	if errors.Is(err, ErrNotFound) && l.s.lazy != nil {
		if ferr := l.s.fetchBlob(l); ferr != nil {
			return nil, ferr
		}
		rc, err = l.s.openBlob(l.digest, l.size)
	}
	return rc, err
}

// Uncompressed decompresses the stored blob; the reader fails at EOF if the
// blob does not match its digest or the tar does not match the diffID.
func (l *storeLayer) Uncompressed() (io.ReadCloser, error) {
	rc, err := l.Compressed()
	if err != nil {
		return nil, err
	}
	u, err := Decompress(rc)
	if err != nil {
		return nil, fmt.Errorf("layer %s: %w", l.digest, err)
	}
	if l.diffID == (v1.Hash{}) {
		return u, nil
	}
	return newVerifyReader(u, l.diffID, -1), nil
}

// verifyReader passes reads through and, at EOF, fails with
// ErrDigestMismatch unless the bytes read hash to want (and, when size >= 0,
// number exactly size).
type verifyReader struct {
	rc   io.ReadCloser
	want v1.Hash
	size int64
	n    int64
	h    hash.Hash
	err  error
}

func newVerifyReader(rc io.ReadCloser, want v1.Hash, size int64) *verifyReader {
	return &verifyReader{rc: rc, want: want, size: size, h: sha256.New()}
}

func (v *verifyReader) Read(p []byte) (int, error) {
	if v.err != nil {
		return 0, v.err
	}
	n, err := v.rc.Read(p)
	v.h.Write(p[:n])
	v.n += int64(n)
	if v.size >= 0 && v.n > v.size {
		v.err = fmt.Errorf("%s: more than the expected %d bytes: %w", v.want, v.size, ErrDigestMismatch)
		return n, v.err
	}
	if err == io.EOF {
		got := v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", v.h.Sum(nil))}
		switch {
		case v.size >= 0 && v.n != v.size:
			v.err = fmt.Errorf("%s: got %d bytes, want %d: %w", v.want, v.n, v.size, ErrDigestMismatch)
		case got != v.want:
			v.err = fmt.Errorf("content has digest %s, want %s: %w", got, v.want, ErrDigestMismatch)
		default:
			v.err = io.EOF
		}
		return n, v.err
	}
	if err != nil {
		v.err = err
	}
	return n, err
}

func (v *verifyReader) Close() error { return v.rc.Close() }

// openBlob opens blob h for reading, verifying it against h (and size when
// size >= 0) as it is read.
func (s *Store) openBlob(h v1.Hash, size int64) (io.ReadCloser, error) {
	p, err := s.blobPath(h)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("blob %s: %w", h, ErrNotFound)
		}
		return nil, fmt.Errorf("opening blob: %w", err)
	}
	return newVerifyReader(f, h, size), nil
}

// readBlob reads a whole (small: at most maxManifestSize) blob and
// verifies it.
func (s *Store) readBlob(h v1.Hash, size int64) ([]byte, error) {
	rc, err := s.openBlob(h, size)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, maxManifestSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading blob %s: %w", h, err)
	}
	if len(b) > maxManifestSize {
		return nil, fmt.Errorf("reading blob %s: larger than %d bytes", h, maxManifestSize)
	}
	return b, nil
}
