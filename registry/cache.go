package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// A build cache travels as one OCI image manifest (schemaVersion 2, media
// type application/vnd.oci.image.manifest.v1+json) with artifactType
// CacheArtifactType. Its config blob (CacheConfigMediaType) is a
// CacheConfig: the list of cached steps, each naming its layer by its index
// in the manifest's layers. The layers are the steps' layer blobs with
// their own media types, each listed once however many steps share it.
// Registries that accept OCI artifacts (distribution 2.7 and later, OCI
// 1.1 registries) store it as they store Helm charts; in an OCI image
// layout (type=local) index.json points at it with the ref.name
// CacheRefName.
const (
	CacheArtifactType    = "application/vnd.imgbuild.cache.v1+json"
	CacheConfigMediaType = "application/vnd.imgbuild.cache.config.v1+json"
	// CacheRefName is the org.opencontainers.image.ref.name of the cache
	// manifest in a local cache layout.
	CacheRefName = "cache"
)

// Limits on what a cache import reads before any layer.
const (
	maxCacheManifest = 16 << 20
	maxCacheConfig   = 64 << 20
)

// CacheConfig is the config blob of a cache artifact.
type CacheConfig struct {
	Records []CacheRecord `json:"records"`
}

// CacheRecord is one cached step: under the step's cache key, the layer it
// committed (an index into the manifest's layers), the layer's diffID
// (the digest of its uncompressed tar), its history text and, when set,
// the key the steps after it chain from instead of Key (see
// layers.CacheRecord.Next).
type CacheRecord struct {
	Key       v1.Hash  `json:"key"`
	Layer     int      `json:"layer"`
	DiffID    v1.Hash  `json:"diffID"`
	CreatedBy string   `json:"createdBy,omitempty"`
	Next      *v1.Hash `json:"next,omitempty"`
}

// CacheStep is a step to export: its cache key, the layer it committed,
// its history text and its Next key (zero: none).
type CacheStep struct {
	Key       v1.Hash
	Layer     v1.Layer
	CreatedBy string
	Next      v1.Hash
}

// CacheArtifact makes the cache artifact of steps (in their order; a key
// given twice is exported once) as an image whose "config" is the
// CacheConfig. Layers are read only when the artifact is written.
func CacheArtifact(steps []CacheStep) (v1.Image, error) {
	core := &cacheCore{layers: map[v1.Hash]v1.Layer{}}
	m := v1.Manifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		ArtifactType:  CacheArtifactType,
		Layers:        []v1.Descriptor{},
	}
	cfg := CacheConfig{Records: []CacheRecord{}}
	index := map[v1.Hash]int{}
	seen := map[v1.Hash]bool{}
	for _, s := range steps {
		if seen[s.Key] {
			continue
		}
		seen[s.Key] = true
		desc, err := partial.Descriptor(s.Layer)
		if err != nil {
			return nil, fmt.Errorf("cache step %s: %w", s.Key, err)
		}
		diffID, err := s.Layer.DiffID()
		if err != nil {
			return nil, fmt.Errorf("cache step %s: %w", s.Key, err)
		}
		i, ok := index[desc.Digest]
		if !ok {
			i = len(m.Layers)
			index[desc.Digest] = i
			m.Layers = append(m.Layers, v1.Descriptor{MediaType: desc.MediaType, Size: desc.Size, Digest: desc.Digest})
			core.layers[desc.Digest] = s.Layer
		}
		rec := CacheRecord{Key: s.Key, Layer: i, DiffID: diffID, CreatedBy: s.CreatedBy}
		if s.Next != (v1.Hash{}) {
			next := s.Next
			rec.Next = &next
		}
		cfg.Records = append(cfg.Records, rec)
	}
	var err error
	if core.config, err = json.Marshal(cfg); err != nil {
		return nil, err
	}
	m.Config = v1.Descriptor{MediaType: CacheConfigMediaType, Size: int64(len(core.config)), Digest: sha256Hash(core.config)}
	if core.manifest, err = json.Marshal(m); err != nil {
		return nil, err
	}
	return partial.CompressedToImage(core)
}

// cacheCore is the partial.CompressedImageCore of a cache artifact.
type cacheCore struct {
	manifest, config []byte
	layers           map[v1.Hash]v1.Layer
}

func (c *cacheCore) RawConfigFile() ([]byte, error)      { return c.config, nil }
func (c *cacheCore) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }
func (c *cacheCore) RawManifest() ([]byte, error)        { return c.manifest, nil }

func (c *cacheCore) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	if l, ok := c.layers[h]; ok {
		return l, nil
	}
	return nil, fmt.Errorf("cache artifact has no blob %s", h)
}

// PushCache writes the cache artifact of steps to ref (a tag). Blobs the
// repository holds already are not uploaded again (one HEAD each); the
// manifest is written after its blobs.
func PushCache(ctx context.Context, ref string, steps []CacheStep, opts Options) error {
	t, err := opts.parseTag(ref)
	if err != nil {
		return &Error{Op: "pushing cache", Ref: ref, Cause: "invalid reference: " + oneLine(err.Error()), Err: err}
	}
	img, err := CacheArtifact(steps)
	if err != nil {
		return &Error{Op: "pushing cache", Ref: ref, Cause: oneLine(err.Error()), Err: err}
	}
	// Lazy step layers (from another cache of this registry) are mounted,
	// not downloaded to be uploaded again.
	originals := map[v1.Hash]v1.Layer{}
	for _, s := range steps {
		if d, err := s.Layer.Digest(); err == nil {
			originals[d] = s.Layer
		}
	}
	pusher, err := remote.NewPusher(opts.remoteOptions(ctx)...)
	if err == nil {
		err = pusher.Push(ctx, t, &mountImage{Image: img, mount: opts.mountSources(t.Context(), originals)})
	}
	return wrapErr("pushing cache", ref, t, err)
}

// WriteCacheLayout writes the cache artifact of steps into the OCI image
// layout at dir (created when missing), replacing the index.json entry
// named CacheRefName; other entries are kept. Blobs present already are
// not written again.
//
// The write goes in three steps: the new blobs, then index.json (replaced
// through a rename, so a reader sees the old index or the new one), then a
// sweep that removes the files under blobs/sha256 that no manifest listed
// in index.json references any more (the replaced cache's blobs). The sweep
// walks every entry of index.json: image manifests (their config and
// layers), indexes (their manifests, recursively) and subjects. Blobs of
// other images listed in index.json therefore stay. When anything cannot be
// read or understood (a missing or corrupt manifest, an unknown media type,
// an index.json that does not parse), or dir cannot be locked, nothing is
// removed. Concurrent WriteCacheLayout calls on one dir are serialized by a
// flock(2) lock on the directory; other programs writing into dir at the
// same time are not excluded. A blob that cannot be removed fails the call,
// after the new cache was written.
func WriteCacheLayout(ctx context.Context, dir string, steps []CacheStep) error {
	img, err := CacheArtifact(steps)
	if err != nil {
		return fmt.Errorf("cache layout %s: %w", dir, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("cache layout %s: %w", dir, err)
	}
	release, locked, err := lockLayout(ctx, dir)
	if err != nil {
		return fmt.Errorf("cache layout %s: %w", dir, err)
	}
	defer release()
	p, err := layout.FromPath(dir)
	if err != nil {
		if p, err = layout.Write(dir, empty.Index); err != nil {
			return fmt.Errorf("cache layout %s: %w", dir, err)
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := p.WriteImage(img); err != nil {
		return fmt.Errorf("cache layout %s: %w", dir, err)
	}
	if err := replaceCacheEntry(dir, img); err != nil {
		return fmt.Errorf("cache layout %s: %w", dir, err)
	}
	if !locked {
		return nil
	}
	if _, err := sweepLayout(ctx, dir); err != nil {
		return fmt.Errorf("cache layout %s: removing unused blobs: %w", dir, err)
	}
	return nil
}

// parseCacheArtifact checks a cache manifest and its config and returns the
// records by key with their layer descriptors.
func parseCacheArtifact(rawManifest, rawConfig []byte) (map[v1.Hash]CacheHit, error) {
	var m v1.Manifest
	if err := json.Unmarshal(rawManifest, &m); err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	var cfg CacheConfig
	if err := json.Unmarshal(rawConfig, &cfg); err != nil {
		return nil, fmt.Errorf("cache config: %w", err)
	}
	hits := make(map[v1.Hash]CacheHit, len(cfg.Records))
	for _, d := range m.Layers {
		if !validDigest(d.Digest) || d.Size < 0 {
			return nil, fmt.Errorf("layer %q: invalid descriptor", d.Digest)
		}
	}
	for _, r := range cfg.Records {
		if r.Layer < 0 || r.Layer >= len(m.Layers) {
			return nil, fmt.Errorf("record %s: layer %d out of range", r.Key, r.Layer)
		}
		if !validDigest(r.Key) || !validDigest(r.DiffID) || (r.Next != nil && !validDigest(*r.Next)) {
			return nil, fmt.Errorf("record %q: invalid key, diffID or next", r.Key)
		}
		d := m.Layers[r.Layer]
		hit := CacheHit{Key: r.Key, DiffID: r.DiffID, CreatedBy: r.CreatedBy,
			Layer: v1.Descriptor{MediaType: d.MediaType, Size: d.Size, Digest: d.Digest}}
		if r.Next != nil {
			hit.Next = *r.Next
		}
		hits[r.Key] = hit
	}
	return hits, nil
}

// checkCacheManifest checks that raw is an imgbuild cache manifest and
// returns its config descriptor.
func checkCacheManifest(raw []byte) (v1.Descriptor, error) {
	var m v1.Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return v1.Descriptor{}, fmt.Errorf("manifest: %w", err)
	}
	if m.SchemaVersion != 2 || (m.MediaType != "" && m.MediaType != types.OCIManifestSchema1) {
		return v1.Descriptor{}, fmt.Errorf("not an OCI image manifest (schemaVersion %d, mediaType %q)", m.SchemaVersion, m.MediaType)
	}
	if m.Config.MediaType != CacheConfigMediaType {
		return v1.Descriptor{}, fmt.Errorf("not an imgbuild cache (config media type %q, artifact type %q)", m.Config.MediaType, m.ArtifactType)
	}
	if !validDigest(m.Config.Digest) || m.Config.Size < 0 || m.Config.Size > maxCacheConfig {
		return v1.Descriptor{}, errors.New("cache config: invalid descriptor")
	}
	return m.Config, nil
}

// validDigest accepts sha256 digests (64 lower-case hex digits) only: they
// also name files in local layouts.
func validDigest(h v1.Hash) bool {
	if h.Algorithm != "sha256" || len(h.Hex) != 64 {
		return false
	}
	for _, c := range h.Hex {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
