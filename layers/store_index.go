package layers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sys/unix"
)

// RefNameAnnotation names an index.json entry of the OCI layout.
const RefNameAnnotation = "org.opencontainers.image.ref.name"

// MinIDPrefix is the shortest hex digest prefix Image accepts.
const MinIDPrefix = 4

// ImageInfo describes one image of the store's index.
type ImageInfo struct {
	Ref     string  // the tag as stored ("user/app:1.0"); "" for an untagged image
	Digest  v1.Hash // manifest digest
	Created time.Time
	Size    int64 // stored bytes: manifest, config and compressed layers
}

// ParseTag checks a tag reference and returns the form the store records in
// its org.opencontainers.image.ref.name annotations (the name as the user
// wrote it, ":latest" added when it has no tag, e.g. "user/app:1.0",
// "localhost:5000/x:latest") and the key tags are compared by (the fully
// qualified name, "index.docker.io/user/app:1.0"). Digest references are
// not tags.
func ParseTag(ref string) (stored, key string, err error) {
	if strings.Contains(ref, "@") {
		return "", "", fmt.Errorf("%q is a digest reference, not a tag", ref)
	}
	t, err := name.NewTag(ref, name.WeakValidation)
	if err != nil {
		return "", "", fmt.Errorf("invalid tag %q: %w", ref, err)
	}
	stored = ref
	if i := strings.LastIndex(ref, ":"); i < 0 || strings.Contains(ref[i:], "/") {
		stored += ":" + name.DefaultTag
	}
	return stored, t.Name(), nil
}

// refKey is the comparison key of an index entry's ref name; names that do
// not parse (written by other tools) compare as themselves.
func refKey(ref string) string {
	if _, key, err := ParseTag(ref); err == nil {
		return key
	}
	return ref
}

// readIndex reads index.json; it is replaced atomically, so no lock is
// needed to read it.
func (s *Store) readIndex() (*v1.IndexManifest, error) {
	b, err := os.ReadFile(filepath.Join(s.ociPath(), indexFile))
	if errors.Is(err, os.ErrNotExist) {
		return &v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading index: %w", err)
	}
	var idx v1.IndexManifest
	if err := json.Unmarshal(b, &idx); err != nil {
		return nil, fmt.Errorf("reading index: %w", err)
	}
	return &idx, nil
}

// updateIndex runs a read-modify-write of index.json under the exclusive
// index lock and replaces the file atomically.
func (s *Store) updateIndex(ctx context.Context, fn func(*v1.IndexManifest) error) error {
	release, err := lockFile(ctx, filepath.Join(s.root, indexLock), unix.LOCK_EX)
	if err != nil {
		return fmt.Errorf("locking index: %w", err)
	}
	defer release()
	idx, err := s.readIndex()
	if err != nil {
		return err
	}
	if err := fn(idx); err != nil {
		return err
	}
	if idx.Manifests == nil {
		idx.Manifests = []v1.Descriptor{}
	}
	if idx.MediaType == "" {
		idx.MediaType = types.OCIImageIndex
	}
	sort.SliceStable(idx.Manifests, func(i, j int) bool {
		a, b := idx.Manifests[i], idx.Manifests[j]
		ra, rb := a.Annotations[RefNameAnnotation], b.Annotations[RefNameAnnotation]
		if (ra == "") != (rb == "") {
			return ra != "" // tagged entries first
		}
		if ra != rb {
			return ra < rb
		}
		return a.Digest.Hex < b.Digest.Hex
	})
	b, err := json.MarshalIndent(idx, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding index: %w", err)
	}
	return s.writeFileAtomic(s.ociPath(), indexFile, append(b, '\n'))
}

// Tag points ref at the stored image with manifest digest digest, moving
// the tag if it pointed elsewhere (an image left without tags stays listed,
// untagged, until Prune). ref is recorded as ParseTag's stored form, so
// `skopeo inspect oci:ROOT/oci:user/app:1.0` finds it.
func (s *Store) Tag(ctx context.Context, ref string, digest v1.Hash) error {
	stored, key, err := ParseTag(ref)
	if err != nil {
		return err
	}
	// The lease keeps a concurrent Prune from deleting the image's blobs
	// between this check and the index update.
	release, err := s.Lease(ctx)
	if err != nil {
		return err
	}
	defer release()
	desc, err := s.manifestDescriptor(digest)
	if err != nil {
		return fmt.Errorf("tagging %s: %w", ref, err)
	}
	desc.Annotations = map[string]string{RefNameAnnotation: stored}
	return s.updateIndex(ctx, func(idx *v1.IndexManifest) error {
		var kept []v1.Descriptor
		var orphans []v1.Descriptor
		for _, d := range idx.Manifests {
			r := d.Annotations[RefNameAnnotation]
			switch {
			case r == "" && d.Digest == digest:
				continue // the untagged entry gives way to the tag
			case r != "" && refKey(r) == key:
				if d.Digest != digest {
					orphans = append(orphans, d)
				}
				continue
			}
			kept = append(kept, d)
		}
		kept = append(kept, desc)
		for _, o := range orphans {
			if !hasDigest(kept, o.Digest) {
				o.Annotations = nil
				kept = append(kept, o)
			}
		}
		idx.Manifests = kept
		return nil
	})
}

func hasDigest(ds []v1.Descriptor, h v1.Hash) bool {
	for _, d := range ds {
		if d.Digest == h {
			return true
		}
	}
	return false
}

// Untag removes tag ref; the error wraps ErrNotFound when the store has no
// such tag. The image's blobs stay until Prune.
func (s *Store) Untag(ctx context.Context, ref string) error {
	_, key, err := ParseTag(ref)
	if err != nil {
		return err
	}
	return s.updateIndex(ctx, func(idx *v1.IndexManifest) error {
		found := false
		kept := idx.Manifests[:0]
		for _, d := range idx.Manifests {
			if r := d.Annotations[RefNameAnnotation]; r != "" && refKey(r) == key {
				found = true
				continue
			}
			kept = append(kept, d)
		}
		if !found {
			return fmt.Errorf("untagging %s: %w", ref, ErrNotFound)
		}
		idx.Manifests = kept
		return nil
	})
}

// addUntagged lists digest in the index (without a ref name) unless an entry
// for it exists, so that it can be found by digest until Prune.
func (s *Store) addUntagged(ctx context.Context, desc v1.Descriptor) error {
	desc.Annotations = nil
	return s.updateIndex(ctx, func(idx *v1.IndexManifest) error {
		if !hasDigest(idx.Manifests, desc.Digest) {
			idx.Manifests = append(idx.Manifests, desc)
		}
		return nil
	})
}

// resolve finds the manifest descriptor of ref: a tag, a digest reference
// ("user/app@sha256:..."), a full digest ("sha256:<64 hex>", or the 64 hex
// alone), or a unique prefix of at least MinIDPrefix hex digits of the
// manifest digest of an image in the index ("sha256:" optional). Tags win
// over prefixes, as in docker.
func (s *Store) resolve(ref string) (v1.Descriptor, error) {
	idx, err := s.readIndex()
	if err != nil {
		return v1.Descriptor{}, err
	}
	hexPart := strings.TrimPrefix(ref, "sha256:")
	if len(hexPart) == 64 && isHex(hexPart) {
		return s.byDigest(idx, v1.Hash{Algorithm: "sha256", Hex: hexPart})
	}
	if i := strings.LastIndex(ref, "@"); i >= 0 {
		d, err := name.NewDigest(ref, name.WeakValidation)
		if err != nil {
			return v1.Descriptor{}, fmt.Errorf("invalid reference %q: %w", ref, err)
		}
		h, err := v1.NewHash(d.DigestStr())
		if err != nil {
			return v1.Descriptor{}, fmt.Errorf("invalid reference %q: %w", ref, err)
		}
		return s.byDigest(idx, h)
	}
	if _, key, err := ParseTag(ref); err == nil {
		for _, d := range idx.Manifests {
			if r := d.Annotations[RefNameAnnotation]; r != "" && refKey(r) == key {
				return d, nil
			}
		}
	}
	if len(hexPart) >= MinIDPrefix && isHex(hexPart) {
		var found []v1.Descriptor
		for _, d := range idx.Manifests {
			if strings.HasPrefix(d.Digest.Hex, hexPart) && !hasDigest(found, d.Digest) {
				found = append(found, d)
			}
		}
		switch len(found) {
		case 1:
			return found[0], nil
		case 0:
		default:
			return v1.Descriptor{}, fmt.Errorf("image ID prefix %q matches %d images", ref, len(found))
		}
	}
	return v1.Descriptor{}, fmt.Errorf("image %s: %w", ref, ErrNotFound)
}

// byDigest returns the index entry of h, or a descriptor made from the
// manifest blob if h is stored but not listed.
func (s *Store) byDigest(idx *v1.IndexManifest, h v1.Hash) (v1.Descriptor, error) {
	for _, d := range idx.Manifests {
		if d.Digest == h {
			return d, nil
		}
	}
	d, err := s.manifestDescriptor(h)
	if errors.Is(err, ErrNotFound) {
		return v1.Descriptor{}, fmt.Errorf("image %s: %w", h, ErrNotFound)
	}
	return d, err
}

// manifestDescriptor describes the stored image manifest h.
func (s *Store) manifestDescriptor(h v1.Hash) (v1.Descriptor, error) {
	b, err := s.readBlob(h, -1)
	if err != nil {
		return v1.Descriptor{}, err
	}
	mt, err := manifestMediaType(b)
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("manifest %s: %w", h, err)
	}
	if !mt.IsImage() {
		return v1.Descriptor{}, fmt.Errorf("manifest %s: media type %s is not an image", h, mt)
	}
	return v1.Descriptor{MediaType: mt, Size: int64(len(b)), Digest: h}, nil
}

// manifestMediaType reads the mediaType field of a manifest, which OCI
// manifests may omit.
func manifestMediaType(b []byte) (types.MediaType, error) {
	var m struct {
		MediaType types.MediaType `json:"mediaType"`
		Manifests json.RawMessage `json:"manifests"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return "", fmt.Errorf("decoding manifest: %w", err)
	}
	switch {
	case m.MediaType != "":
		return m.MediaType, nil
	case m.Manifests != nil:
		return types.OCIImageIndex, nil
	}
	return types.OCIManifestSchema1, nil
}

// Images lists the images of the index: tagged ones sorted by tag, then
// untagged ones (Ref "").
func (s *Store) Images(ctx context.Context) ([]ImageInfo, error) {
	idx, err := s.readIndex()
	if err != nil {
		return nil, err
	}
	var out []ImageInfo
	for _, d := range idx.Manifests {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if !d.MediaType.IsImage() {
			continue
		}
		ref := d.Annotations[RefNameAnnotation]
		img, err := s.loadImage(d)
		if err != nil {
			if ref == "" {
				ref = d.Digest.String()
			}
			return nil, fmt.Errorf("image %s: %w", ref, err)
		}
		info := ImageInfo{Ref: ref, Digest: d.Digest, Size: img.storedSize()}
		if img.config.Created.Time != (time.Time{}) {
			info.Created = img.config.Created.Time
		}
		out = append(out, info)
	}
	return out, nil
}
