package registry

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"os"
	"path/filepath"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/imgbuild/imgbuild/layers"
)

// CacheHit is a step found in an imported cache.
type CacheHit struct {
	Key       v1.Hash
	Layer     v1.Descriptor // the layer blob: digest, size, media type
	DiffID    v1.Hash
	CreatedBy string
	Next      v1.Hash // zero: the steps after it chain from Key
}

// Cache is an imported cache artifact: its records, read when it was
// opened, and its layer blobs, read only through OpenLayer.
type Cache struct {
	// Source is the reference or the layout directory it was read from.
	Source string
	// Repository is the registry repository ("registry/path") of a cache
	// read by PullCache, where its layer blobs can be fetched or mounted
	// from; "" for a layout directory.
	Repository string
	// Digest is the digest of its manifest.
	Digest v1.Hash
	// MetadataBytes counts the bytes of the manifest and config read.
	MetadataBytes int64

	hits map[v1.Hash]CacheHit
	open func(ctx context.Context, d v1.Descriptor) (io.ReadCloser, error)
	head func(ctx context.Context, d v1.Descriptor) error // nil: nothing to check
}

// CheckLayer checks, without downloading it, that a registry cache still
// holds the layer blob d with its size (a HEAD request): a layer left lazy
// (see Repository) must be there when it is fetched or mounted later. It
// does nothing for a layout directory, whose blobs are copied.
func (c *Cache) CheckLayer(ctx context.Context, d v1.Descriptor) error {
	if c.head == nil {
		return nil
	}
	if !validDigest(d.Digest) {
		return fmt.Errorf("invalid layer digest %q", d.Digest)
	}
	return c.head(ctx, d)
}

// Len is the number of records.
func (c *Cache) Len() int { return len(c.hits) }

// Lookup returns the record of key.
func (c *Cache) Lookup(key v1.Hash) (CacheHit, bool) {
	h, ok := c.hits[key]
	return h, ok
}

// OpenLayer opens the layer blob d. The reader fails (at the latest at
// EOF) with an error wrapping layers.ErrDigestMismatch when the bytes do not
// match d.
func (c *Cache) OpenLayer(ctx context.Context, d v1.Descriptor) (io.ReadCloser, error) {
	if !validDigest(d.Digest) {
		return nil, fmt.Errorf("invalid layer digest %q", d.Digest)
	}
	return c.open(ctx, d)
}

// PullCache reads the cache artifact at ref (a tag or digest): its
// manifest and config, not its layers. A reference that is not an imgbuild
// cache, a config that does not match its digest or does not parse, or a
// record that names no layer fail it whole.
func PullCache(ctx context.Context, ref string, opts Options) (*Cache, error) {
	r, err := opts.parseRef(ref)
	if err != nil {
		return nil, &Error{Op: "pulling cache", Ref: ref, Cause: "invalid reference: " + oneLine(err.Error()), Err: err}
	}
	puller, err := remote.NewPuller(opts.remoteOptions(ctx)...)
	if err != nil {
		return nil, wrapErr("pulling cache", ref, r, err)
	}
	c, err := pullCache(ctx, puller, r)
	if err != nil {
		return nil, wrapErr("pulling cache", ref, r, err)
	}
	c.Source = ref
	repo := r.Context()
	c.Repository = repo.Name()
	c.open = func(ctx context.Context, d v1.Descriptor) (io.ReadCloser, error) {
		rc, err := remoteBlob(ctx, puller, repo, d)
		if err != nil {
			return nil, wrapErr("pulling cache", ref, r, fmt.Errorf("layer %s: %w", d.Digest, err))
		}
		return &errReader{rc: newBlobVerifier(rc, d), wrap: func(err error) error {
			return wrapErr("pulling cache", ref, r, fmt.Errorf("layer %s: %w", d.Digest, err))
		}}, nil
	}
	c.head = func(ctx context.Context, d v1.Descriptor) error {
		l, err := puller.Layer(ctx, repo.Digest(d.Digest.String()))
		if err == nil {
			var size int64
			if size, err = l.Size(); err == nil && size != d.Size {
				err = fmt.Errorf("the registry has %d bytes, the cache says %d: %w", size, d.Size, layers.ErrDigestMismatch)
			}
		}
		var te *transport.Error
		if errors.As(err, &te) && te.StatusCode == http.StatusNotFound {
			return fmt.Errorf("layer %s is not in %s (HTTP 404): %w", d.Digest, repo, layers.ErrNotFound)
		}
		if err != nil {
			return wrapErr("pulling cache", ref, r, fmt.Errorf("layer %s: %w", d.Digest, err))
		}
		return nil
	}
	return c, nil
}

func pullCache(ctx context.Context, puller *remote.Puller, r name.Reference) (*Cache, error) {
	desc, err := puller.Get(ctx, r)
	if err != nil {
		return nil, err
	}
	if desc.MediaType != types.OCIManifestSchema1 {
		return nil, fmt.Errorf("not an imgbuild cache (media type %q)", desc.MediaType)
	}
	if len(desc.Manifest) > maxCacheManifest {
		return nil, fmt.Errorf("cache manifest of %d bytes is too large", len(desc.Manifest))
	}
	cfgDesc, err := checkCacheManifest(desc.Manifest)
	if err != nil {
		return nil, err
	}
	rc, err := remoteBlob(ctx, puller, r.Context(), cfgDesc)
	if err != nil {
		return nil, fmt.Errorf("cache config: %w", err)
	}
	raw, err := readBlob(rc, cfgDesc)
	if err != nil {
		return nil, fmt.Errorf("cache config: %w", err)
	}
	hits, err := parseCacheArtifact(desc.Manifest, raw)
	if err != nil {
		return nil, err
	}
	return &Cache{Digest: desc.Digest, MetadataBytes: int64(len(desc.Manifest) + len(raw)), hits: hits}, nil
}

func remoteBlob(ctx context.Context, puller *remote.Puller, repo name.Repository, d v1.Descriptor) (io.ReadCloser, error) {
	l, err := puller.Layer(ctx, repo.Digest(d.Digest.String()))
	if err != nil {
		return nil, err
	}
	return l.Compressed()
}

// ReadCacheLayout reads the cache artifact of the OCI image layout at dir
// (the index.json entry named CacheRefName): its manifest and config, not
// its layers.
func ReadCacheLayout(ctx context.Context, dir string) (*Cache, error) {
	c, err := readCacheLayout(ctx, dir)
	if err != nil {
		return nil, fmt.Errorf("cache layout %s: %w", dir, err)
	}
	return c, nil
}

func readCacheLayout(ctx context.Context, dir string) (*Cache, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	raw, err := readFileLimit(filepath.Join(dir, "index.json"), maxCacheManifest)
	if err != nil {
		return nil, err
	}
	var idx v1.IndexManifest
	if err := json.Unmarshal(raw, &idx); err != nil {
		return nil, fmt.Errorf("index.json: %w", err)
	}
	var mdesc *v1.Descriptor
	for i, d := range idx.Manifests {
		if d.Annotations[AnnotationRefName] == CacheRefName {
			mdesc = &idx.Manifests[i]
		}
	}
	if mdesc == nil {
		return nil, fmt.Errorf("index.json has no manifest named %q", CacheRefName)
	}
	if !validDigest(mdesc.Digest) || mdesc.Size < 0 || mdesc.Size > maxCacheManifest {
		return nil, errors.New("index.json: invalid cache manifest descriptor")
	}
	open := func(ctx context.Context, d v1.Descriptor) (io.ReadCloser, error) {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		f, err := os.Open(filepath.Join(dir, "blobs", d.Digest.Algorithm, d.Digest.Hex))
		if err != nil {
			return nil, err
		}
		return newBlobVerifier(f, d), nil
	}
	manifest, err := openRead(ctx, open, *mdesc)
	if err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	cfgDesc, err := checkCacheManifest(manifest)
	if err != nil {
		return nil, err
	}
	cfg, err := openRead(ctx, open, cfgDesc)
	if err != nil {
		return nil, fmt.Errorf("cache config: %w", err)
	}
	hits, err := parseCacheArtifact(manifest, cfg)
	if err != nil {
		return nil, err
	}
	return &Cache{Source: dir, Digest: mdesc.Digest, MetadataBytes: int64(len(manifest) + len(cfg)),
		hits: hits, open: open}, nil
}

func openRead(ctx context.Context, open func(context.Context, v1.Descriptor) (io.ReadCloser, error), d v1.Descriptor) ([]byte, error) {
	rc, err := open(ctx, d)
	if err != nil {
		return nil, err
	}
	return readBlob(rc, d)
}

// readBlob reads a small blob whole, checking it against d.
func readBlob(rc io.ReadCloser, d v1.Descriptor) ([]byte, error) {
	defer rc.Close()
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, newBlobVerifier(rc, d)); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func readFileLimit(p string, limit int64) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err == nil && int64(len(b)) > limit {
		err = fmt.Errorf("%s: larger than %d bytes", p, limit)
	}
	return b, err
}

// blobVerifier passes a blob's bytes through and fails with
// layers.ErrDigestMismatch as soon as there are more than the descriptor's size,
// or at EOF when their size or digest differ from it.
type blobVerifier struct {
	rc  io.ReadCloser
	d   v1.Descriptor
	h   hash.Hash
	n   int64
	err error
}

func newBlobVerifier(rc io.ReadCloser, d v1.Descriptor) *blobVerifier {
	return &blobVerifier{rc: rc, d: d, h: sha256.New()}
}

func (v *blobVerifier) Read(p []byte) (int, error) {
	if v.err != nil {
		return 0, v.err
	}
	n, err := v.rc.Read(p)
	v.h.Write(p[:n])
	v.n += int64(n)
	switch {
	case v.n > v.d.Size:
		err = fmt.Errorf("blob %s: more than %d bytes: %w", v.d.Digest, v.d.Size, layers.ErrDigestMismatch)
	case err == io.EOF && v.n != v.d.Size:
		err = fmt.Errorf("blob %s: %d bytes, want %d: %w", v.d.Digest, v.n, v.d.Size, layers.ErrDigestMismatch)
	case err == io.EOF:
		if got := hex.EncodeToString(v.h.Sum(nil)); got != v.d.Digest.Hex {
			err = fmt.Errorf("blob %s: content has digest sha256:%s: %w", v.d.Digest, got, layers.ErrDigestMismatch)
		}
	}
	if err != nil {
		v.err = err
	}
	return n, err
}

func (v *blobVerifier) Close() error { return v.rc.Close() }

func sha256Hash(b []byte) v1.Hash {
	sum := sha256.Sum256(b)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
}
