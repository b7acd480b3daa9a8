package layers

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// maxManifestSize bounds manifests and configs read into memory.
const maxManifestSize = 64 << 20

// Image returns a stored image by tag, digest reference, full digest or
// unique digest prefix (see resolve). Image IDs here are manifest digests
// (what `imgbuild build` prints and registries address), not docker's
// config digests. The manifest and config are verified now; layer blobs
// when they are read.
func (s *Store) Image(ctx context.Context, ref string) (v1.Image, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	desc, err := s.resolve(ref)
	if err != nil {
		return nil, err
	}
	img, err := s.loadImage(desc)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", ref, err)
	}
	return img, nil
}

// PutImage stores every blob of img (layers, config, manifest), verifying
// each against its digest and skipping those already stored, lists the
// image in the index (untagged until Tag) and returns its manifest digest.
// Bytes that do not match their digest are not stored: the error wraps
// ErrDigestMismatch. The repositories of layers pulled from a registry are
// recorded (see AddBlobSource), so that pushes can mount them.
func (s *Store) PutImage(ctx context.Context, img v1.Image) (v1.Hash, error) {
	return s.putImage(ctx, img, false)
}

// PutImageLazy is PutImage except that the layer blobs the store can fetch
// later are not downloaded: those of layers pulled from a registry (their
// repository is recorded, see AddBlobSource) and the lazy layers of this
// store. Reading such a layer, from the store or from Image, fetches it
// (see WithFetcher); FetchImage fetches them all.
func (s *Store) PutImageLazy(ctx context.Context, img v1.Image) (v1.Hash, error) {
	return s.putImage(ctx, img, true)
}

func (s *Store) putImage(ctx context.Context, img v1.Image, lazy bool) (v1.Hash, error) {
	release, err := s.Lease(ctx)
	if err != nil {
		return v1.Hash{}, err
	}
	defer release()
	rawManifest, err := img.RawManifest()
	if err != nil {
		return v1.Hash{}, fmt.Errorf("storing image: %w", err)
	}
	digest := sha256Of(rawManifest)
	if d, err := img.Digest(); err != nil || d != digest {
		return v1.Hash{}, fmt.Errorf("storing image: manifest digest %s, image says %v (%v): %w", digest, d, err, ErrDigestMismatch)
	}
	m, err := v1.ParseManifest(bytes.NewReader(rawManifest))
	if err != nil {
		return v1.Hash{}, fmt.Errorf("storing image %s: %w", digest, err)
	}
	for _, desc := range m.Layers {
		if err := s.putLayer(ctx, img, desc, lazy); err != nil {
			return v1.Hash{}, fmt.Errorf("storing image %s: %w", digest, err)
		}
	}
	rawConfig, err := img.RawConfigFile()
	if err != nil {
		return v1.Hash{}, fmt.Errorf("storing image %s: config: %w", digest, err)
	}
	if err := s.putBytes(ctx, rawConfig, m.Config.Digest); err != nil {
		return v1.Hash{}, fmt.Errorf("storing image %s: config: %w", digest, err)
	}
	if err := s.putBytes(ctx, rawManifest, digest); err != nil {
		return v1.Hash{}, fmt.Errorf("storing image %s: manifest: %w", digest, err)
	}
	mt, err := manifestMediaType(rawManifest)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("storing image %s: %w", digest, err)
	}
	desc := v1.Descriptor{MediaType: mt, Size: int64(len(rawManifest)), Digest: digest}
	if err := s.addUntagged(ctx, desc); err != nil {
		return v1.Hash{}, fmt.Errorf("storing image %s: %w", digest, err)
	}
	return digest, nil
}

func (s *Store) putLayer(ctx context.Context, img v1.Image, desc v1.Descriptor, lazy bool) error {
	stored := s.hasBlob(desc.Digest, desc.Size)
	if stored && !lazy {
		return nil
	}
	if _, ok := s.lazyLayer(desc, v1.Hash{}); ok && !stored && lazy {
		return nil // a lazy blob of this store
	}
	l, err := img.LayerByDigest(desc.Digest)
	if err != nil {
		return fmt.Errorf("layer %s: %w", desc.Digest, err)
	}
	if ml, ok := l.(*remote.MountableLayer); ok { // pulled: record where from
		diffID, err := l.DiffID()
		if err != nil {
			return fmt.Errorf("layer %s: %w", desc.Digest, err)
		}
		if err := s.AddBlobSource(ctx, desc, diffID, ml.Reference.Context().Name()); err != nil {
			return err
		}
		if lazy {
			return nil
		}
	}
	if stored {
		return nil
	}
	rc, err := l.Compressed()
	if err != nil {
		return fmt.Errorf("layer %s: %w", desc.Digest, err)
	}
	defer rc.Close()
	return s.putBlob(ctx, rc, desc.Digest, desc.Size)
}

// storeImage is a v1.Image read from the store.
type storeImage struct {
	s           *Store
	desc        v1.Descriptor
	rawManifest []byte
	manifest    *v1.Manifest
	rawConfig   []byte
	config      *v1.ConfigFile
}

var _ v1.Image = (*storeImage)(nil)

// loadImage reads and verifies the manifest and config of desc.
func (s *Store) loadImage(desc v1.Descriptor) (*storeImage, error) {
	size := desc.Size
	if size <= 0 || size > maxManifestSize {
		size = -1
	}
	raw, err := s.readBlob(desc.Digest, size)
	if err != nil {
		return nil, err
	}
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w", desc.Digest, err)
	}
	if m.Config.Size > maxManifestSize {
		return nil, fmt.Errorf("config %s: too large (%d bytes)", m.Config.Digest, m.Config.Size)
	}
	rawConfig, err := s.readBlob(m.Config.Digest, m.Config.Size)
	if err != nil {
		return nil, err
	}
	cfg, err := v1.ParseConfigFile(bytes.NewReader(rawConfig))
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", m.Config.Digest, err)
	}
	if desc.MediaType == "" {
		if desc.MediaType, err = manifestMediaType(raw); err != nil {
			return nil, err
		}
	}
	return &storeImage{s: s, desc: desc, rawManifest: raw, manifest: m, rawConfig: rawConfig, config: cfg}, nil
}

func (i *storeImage) storedSize() int64 {
	n := int64(len(i.rawManifest)) + int64(len(i.rawConfig))
	for _, l := range i.manifest.Layers {
		n += l.Size
	}
	return n
}

func (i *storeImage) MediaType() (types.MediaType, error) { return i.desc.MediaType, nil }
func (i *storeImage) Size() (int64, error)                { return int64(len(i.rawManifest)), nil }
func (i *storeImage) Digest() (v1.Hash, error)            { return i.desc.Digest, nil }
func (i *storeImage) RawManifest() ([]byte, error)        { return i.rawManifest, nil }
func (i *storeImage) RawConfigFile() ([]byte, error)      { return i.rawConfig, nil }
func (i *storeImage) ConfigName() (v1.Hash, error)        { return i.manifest.Config.Digest, nil }

func (i *storeImage) Manifest() (*v1.Manifest, error) {
	return v1.ParseManifest(bytes.NewReader(i.rawManifest))
}

func (i *storeImage) ConfigFile() (*v1.ConfigFile, error) {
	var c v1.ConfigFile
	if err := json.Unmarshal(i.rawConfig, &c); err != nil {
		return nil, err
	}
	return &c, nil
}

func (i *storeImage) Layers() ([]v1.Layer, error) {
	ls := make([]v1.Layer, 0, len(i.manifest.Layers))
	for n := range i.manifest.Layers {
		ls = append(ls, i.layer(n))
	}
	return ls, nil
}

// layer returns the n-th layer; its diffID comes from the config.
func (i *storeImage) layer(n int) v1.Layer {
	d := i.manifest.Layers[n]
	l := &storeLayer{s: i.s, digest: d.Digest, size: d.Size, mediaType: d.MediaType}
	if n < len(i.config.RootFS.DiffIDs) {
		l.diffID = i.config.RootFS.DiffIDs[n]
	}
	return l
}

func (i *storeImage) LayerByDigest(h v1.Hash) (v1.Layer, error) {
	for n, d := range i.manifest.Layers {
		if d.Digest == h {
			return i.layer(n), nil
		}
	}
	return nil, fmt.Errorf("image %s has no layer %s: %w", i.desc.Digest, h, ErrNotFound)
}

func (i *storeImage) LayerByDiffID(h v1.Hash) (v1.Layer, error) {
	for n, d := range i.config.RootFS.DiffIDs {
		if d == h && n < len(i.manifest.Layers) {
			return i.layer(n), nil
		}
	}
	return nil, fmt.Errorf("image %s has no layer with diffID %s: %w", i.desc.Digest, h, ErrNotFound)
}
