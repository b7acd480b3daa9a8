package layers

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// CacheImport records under key a step that a remote cache supplied: the
// layer blob desc, whose uncompressed content has the digest diffID, and
// the record's Next (zero: none; see CacheRecord.Next). open
// returns the blob's bytes; it is called only when the store lacks the
// blob. The blob's digest and size and the diffID of its content are
// verified before the record is written: bytes that do not match are not
// recorded and the error wraps ErrDigestMismatch. The returned layer is
// backed by the stored blob.
func (s *Store) CacheImport(ctx context.Context, key, next v1.Hash, desc v1.Descriptor, diffID v1.Hash, createdBy string,
	open func(context.Context) (io.ReadCloser, error)) (v1.Layer, error) {
	if _, err := s.cacheRecordPath(key); err != nil {
		return nil, err
	}
	if _, err := s.blobPath(diffID); err != nil {
		return nil, fmt.Errorf("layer %s: diffID: %w", desc.Digest, err)
	}
	release, err := s.Lease(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	l := &storeLayer{s: s, digest: desc.Digest, diffID: diffID, size: desc.Size, mediaType: desc.MediaType}
	if s.hasBlob(desc.Digest, desc.Size) {
		// Stored already, maybe under another diffID claim: check this one.
		if err := readAll(l.Uncompressed()); err != nil {
			return nil, fmt.Errorf("layer %s: %w", desc.Digest, err)
		}
	} else {
		rc, err := open(ctx)
		if err != nil {
			return nil, err
		}
		err = s.putLayerBlob(ctx, rc, desc, diffID)
		rc.Close()
		if err != nil {
			return nil, err
		}
	}
	if err := s.CachePutNext(ctx, key, next, l, createdBy); err != nil {
		return nil, err
	}
	return l, nil
}

func readAll(rc io.ReadCloser, err error) error {
	if err != nil {
		return err
	}
	defer rc.Close()
	_, err = io.Copy(io.Discard, rc)
	return err
}

// putLayerBlob stores the blob desc from r while a second goroutine
// decompresses the same bytes and checks their digest against diffID, so
// that the blob is read once. A blob with the right digest but the wrong
// diffID stays in the store (nothing refers to it: Prune removes it).
func (s *Store) putLayerBlob(ctx context.Context, r io.Reader, desc v1.Descriptor, diffID v1.Hash) error {
	pr, pw := io.Pipe()
	diffErr := make(chan error, 1)
	go func() {
		err := checkDiffID(pr, diffID)
		io.Copy(io.Discard, pr) // let the writer finish whatever happened
		diffErr <- err
	}()
	err := s.putBlob(ctx, io.TeeReader(r, pw), desc.Digest, desc.Size)
	pw.CloseWithError(err) // nil: the decompressor sees EOF
	derr := <-diffErr
	if err != nil {
		return err
	}
	if derr != nil {
		return fmt.Errorf("layer %s: %w", desc.Digest, derr)
	}
	return nil
}

// checkDiffID decompresses r and compares the digest of its content with
// want.
func checkDiffID(r io.Reader, want v1.Hash) error {
	u, err := Decompress(io.NopCloser(r))
	if err != nil {
		return err
	}
	defer u.Close()
	h := sha256.New()
	if _, err := io.Copy(h, u); err != nil {
		return fmt.Errorf("decompressing: %w", err)
	}
	if got := hashOf(h); got != want {
		return fmt.Errorf("content has digest %s, want diffID %s: %w", got, want, ErrDigestMismatch)
	}
	return nil
}
