package layers

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// CacheImportOptions describe a step that a remote cache supplied.
type CacheImportOptions struct {
	Key       v1.Hash       // the step's cache key
	Next      v1.Hash       // the record's Next (zero: none; see CacheRecord.Next)
	Layer     v1.Descriptor // the layer blob
	DiffID    v1.Hash       // the digest of the blob's uncompressed content
	CreatedBy string
	// Repository, when set, is a registry repository holding the blob: a
	// blob the store lacks is then recorded as lazy (see AddBlobSource)
	// and fetched only when a layer read needs it; a push to the same
	// registry mounts it instead.
	Repository string
	// Open returns the blob's bytes. It is called only when the store
	// lacks the blob and Repository is empty.
	Open func(context.Context) (io.ReadCloser, error)
	// Check, when set, is called before a blob is recorded as lazy (the
	// store lacks it, Repository is set): an error fails the import.
	Check func(context.Context) error
}

// CacheImport records the step o describes under o.Key. A blob downloaded
// (through o.Open) or already stored is verified first, its digest and size
// and the diffID of its content: bytes that do not match are not recorded
// and the error wraps ErrDigestMismatch. A lazy blob is verified when it is
// fetched. The returned layer is backed by the store.
func (s *Store) CacheImport(ctx context.Context, o CacheImportOptions) (v1.Layer, error) {
	desc := o.Layer
	if _, err := s.cacheRecordPath(o.Key); err != nil {
		return nil, err
	}
	if _, err := s.blobPath(o.DiffID); err != nil {
		return nil, fmt.Errorf("layer %s: diffID: %w", desc.Digest, err)
	}
	release, err := s.Lease(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	l := &storeLayer{s: s, digest: desc.Digest, diffID: o.DiffID, size: desc.Size, mediaType: desc.MediaType}
	switch {
	case s.hasBlob(desc.Digest, desc.Size):
		// Stored already, maybe under another diffID claim: check this one.
		if err := readAll(l.Uncompressed()); err != nil {
			return nil, fmt.Errorf("layer %s: %w", desc.Digest, err)
		}
		if o.Repository != "" {
			if err := s.AddBlobSource(ctx, desc, o.DiffID, o.Repository); err != nil {
				return nil, err
			}
		}
	case o.Repository != "":
		if o.Check != nil {
			if err := o.Check(ctx); err != nil {
				return nil, err
			}
		}
		if err := s.AddBlobSource(ctx, desc, o.DiffID, o.Repository); err != nil {
			return nil, err
		}
	default:
		rc, err := o.Open(ctx)
		if err != nil {
			return nil, err
		}
		err = s.putLayerBlob(ctx, rc, desc, o.DiffID)
		rc.Close()
		if err != nil {
			return nil, err
		}
	}
	if err := s.CachePutNext(ctx, o.Key, o.Next, l, o.CreatedBy); err != nil {
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
