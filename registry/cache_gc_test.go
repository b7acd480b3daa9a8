package registry

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/imgbuild/imgbuild/registry/registrytest"
)

// gcSteps are the steps of cache "A" and "B": both hold the shared layer,
// each one layer of its own.
func gcSteps(t *testing.T) (a, b []CacheStep) {
	t.Helper()
	layer := func(name, body string) v1.Layer {
		return registrytest.Layer(t, []registrytest.File{{Name: name, Mode: 0o644, Body: []byte(body)}})
	}
	shared, onlyA, onlyB := layer("shared", "both"), layer("a", "only A"), layer("b", "only B")
	a = []CacheStep{
		{Key: sha256Hash([]byte("shared")), Layer: shared, CreatedBy: "RUN shared"},
		{Key: sha256Hash([]byte("a")), Layer: onlyA, CreatedBy: "RUN a"},
	}
	b = []CacheStep{
		{Key: sha256Hash([]byte("shared")), Layer: shared, CreatedBy: "RUN shared"},
		{Key: sha256Hash([]byte("b")), Layer: onlyB, CreatedBy: "RUN b"},
	}
	return a, b
}

// artifactBlobs lists the hex digests of the blobs of the cache artifact of
// steps: manifest, config and layers.
func artifactBlobs(t *testing.T, steps []CacheStep) map[string]bool {
	t.Helper()
	img, err := CacheArtifact(steps)
	if err != nil {
		t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{d.Hex: true, cfg.Hex: true}
	for _, s := range steps {
		ld, _ := s.Layer.Digest()
		out[ld.Hex] = true
	}
	return out
}

// blobFiles lists the files of dir/blobs/sha256.
func blobFiles(t *testing.T, dir string) map[string]bool {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(dir, "blobs", "sha256"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, e := range entries {
		out[e.Name()] = true
	}
	return out
}

func union(sets ...map[string]bool) map[string]bool {
	out := map[string]bool{}
	for _, s := range sets {
		for k := range s {
			out[k] = true
		}
	}
	return out
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// verifyBlobs checks that each blob of want is in dir with its digest.
func verifyBlobs(t *testing.T, dir string, want map[string]bool) {
	t.Helper()
	for h := range want {
		b, err := os.ReadFile(filepath.Join(dir, "blobs", "sha256", h))
		if err != nil {
			t.Errorf("blob %s: %v", h, err)
			continue
		}
		if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != h {
			t.Errorf("blob %s: content does not match its digest", h)
		}
	}
}

// addEntry writes blob into the layout dir and lists it in index.json with
// mediaType and the ref.name refName.
func addEntry(t *testing.T, dir string, mediaType types.MediaType, blob []byte, refName string) v1.Descriptor {
	t.Helper()
	p := layout.Path(dir)
	d := v1.Descriptor{MediaType: mediaType, Size: int64(len(blob)), Digest: sha256Hash(blob),
		Annotations: map[string]string{AnnotationRefName: refName}}
	if err := p.WriteBlob(d.Digest, io.NopCloser(bytes.NewReader(blob))); err != nil {
		t.Fatal(err)
	}
	if err := p.AppendDescriptor(d); err != nil {
		t.Fatal(err)
	}
	return d
}

// subjectManifest is an OCI manifest with an empty config whose subject
// names a manifest that is not in the layout (as a signature's).
func subjectManifest(t *testing.T, dir string) []byte {
	t.Helper()
	cfg := []byte("{}")
	if err := layout.Path(dir).WriteBlob(sha256Hash(cfg), io.NopCloser(bytes.NewReader(cfg))); err != nil {
		t.Fatal(err)
	}
	m := v1.Manifest{SchemaVersion: 2, MediaType: types.OCIManifestSchema1,
		Config:  v1.Descriptor{MediaType: "application/vnd.oci.empty.v1+json", Size: 2, Digest: sha256Hash(cfg)},
		Layers:  []v1.Descriptor{},
		Subject: &v1.Descriptor{MediaType: types.OCIManifestSchema1, Size: 100, Digest: sha256Hash([]byte("not here"))}}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestCacheLayoutSweep writes cache A, then lets prepare change the layout
// as another writer could, then writes cache B into the same directory:
// A's own blobs are removed unless something in the layout cannot be read
// (doubt), the blobs prepare added always stay, and B reads back whole.
func TestCacheLayoutSweep(t *testing.T) {
	ctx := context.Background()
	otherImage := func(t *testing.T, dir string) {
		img := registrytest.Image(t, []registrytest.File{{Name: "c", Mode: 0o644, Body: []byte("other image")}}, v1.Config{}, HostPlatform())
		if err := WriteOCILayout(ctx, dir, []Tagged{{Image: img, Tags: []string{"app:1"}}}); err != nil {
			t.Fatal(err)
		}
	}
	nestedIndex := func(t *testing.T, dir string) {
		inner, err := random.Index(64, 2, 2)
		if err != nil {
			t.Fatal(err)
		}
		outer := mutate.AppendManifests(empty.Index, mutate.IndexAddendum{Add: inner,
			Descriptor: v1.Descriptor{MediaType: types.OCIImageIndex}})
		if err := layout.Path(dir).AppendIndex(outer, layout.WithAnnotations(map[string]string{AnnotationRefName: "multi"})); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name    string
		prepare func(t *testing.T, dir string)
		doubt   string // "": A's blobs are swept; else the liveBlobs error
	}{
		{name: "cache only", prepare: func(*testing.T, string) {}},
		{name: "other image", prepare: otherImage},
		{name: "nested index", prepare: nestedIndex},
		{name: "docker image", prepare: func(t *testing.T, dir string) {
			img, err := random.Image(64, 2) // Docker media types
			if err != nil {
				t.Fatal(err)
			}
			if err := layout.Path(dir).AppendImage(img); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "subject not in the layout", prepare: func(t *testing.T, dir string) {
			addEntry(t, dir, types.OCIManifestSchema1, subjectManifest(t, dir), "sig")
		}},
		{name: "temporary file of another writer", prepare: func(t *testing.T, dir string) {
			tmp := filepath.Join(dir, "blobs", "sha256", sha256Hash([]byte("partial")).Hex+"123456")
			if err := os.WriteFile(tmp, []byte("part"), 0o644); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "corrupt manifest", doubt: "digest", prepare: func(t *testing.T, dir string) {
			otherImage(t, dir)
			idx, err := layout.Path(dir).ImageIndex()
			if err != nil {
				t.Fatal(err)
			}
			m, _ := idx.IndexManifest()
			for _, d := range m.Manifests {
				if d.Annotations[AnnotationRefName] == "1" {
					flipByte(t, filepath.Join(dir, "blobs", "sha256", d.Digest.Hex))
				}
			}
		}},
		{name: "unparseable manifest", doubt: "invalid character", prepare: func(t *testing.T, dir string) {
			addEntry(t, dir, types.OCIManifestSchema1, []byte("not json"), "junk")
		}},
		{name: "unknown media type", doubt: "unknown media type", prepare: func(t *testing.T, dir string) {
			addEntry(t, dir, "application/vnd.example.thing+json", []byte(`{"blobs":[]}`), "thing")
		}},
		{name: "missing manifest", doubt: "no such file", prepare: func(t *testing.T, dir string) {
			d := v1.Descriptor{MediaType: types.OCIManifestSchema1, Size: 10, Digest: sha256Hash([]byte("gone"))}
			if err := layout.Path(dir).AppendDescriptor(d); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "missing child of an index", doubt: "no such file", prepare: func(t *testing.T, dir string) {
			nestedIndex(t, dir)
			idx, _ := layout.Path(dir).ImageIndex()
			m, _ := idx.IndexManifest()
			outer, _ := idx.ImageIndex(m.Manifests[len(m.Manifests)-1].Digest)
			om, _ := outer.IndexManifest()
			if err := os.Remove(filepath.Join(dir, "blobs", "sha256", om.Manifests[0].Digest.Hex)); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "cache")
			a, b := gcSteps(t)
			if err := WriteCacheLayout(ctx, dir, a); err != nil {
				t.Fatal(err)
			}
			blobsA, blobsB := artifactBlobs(t, a), artifactBlobs(t, b)
			tc.prepare(t, dir)
			added := blobFiles(t, dir)
			for h := range blobsA {
				delete(added, h)
			}
			if err := WriteCacheLayout(ctx, dir, b); err != nil {
				t.Fatal(err)
			}
			want := union(blobsB, added)
			if tc.doubt != "" {
				want = union(want, blobsA)
			}
			if got := blobFiles(t, dir); !slices.Equal(sortedKeys(got), sortedKeys(want)) {
				t.Errorf("blobs after writing B:\n got %q\nwant %q", sortedKeys(got), sortedKeys(want))
			}
			c, err := ReadCacheLayout(ctx, dir)
			if err != nil {
				t.Fatal(err)
			}
			checkCache(t, c, b)
			verifyBlobs(t, dir, blobsB)
			_, err = liveBlobs(ctx, dir)
			if tc.doubt == "" {
				if err != nil {
					t.Fatalf("liveBlobs: %v", err)
				}
				validateOthers(t, dir)
			} else if err == nil || !strings.Contains(err.Error(), tc.doubt) {
				t.Errorf("liveBlobs error %v, want one containing %q", err, tc.doubt)
			}
		})
	}
}

// validateOthers validates every image and index index.json lists besides
// the cache (ggcr's validate reads and checks all their blobs).
func validateOthers(t *testing.T, dir string) {
	t.Helper()
	idx, err := layout.Path(dir).ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	m, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range m.Manifests {
		switch {
		case d.Annotations[AnnotationRefName] == CacheRefName:
		case d.MediaType.IsIndex():
			ii, err := idx.ImageIndex(d.Digest)
			if err == nil {
				err = validate.Index(ii)
			}
			if err != nil {
				t.Errorf("index %s: %v", d.Digest, err)
			}
		case d.Annotations[AnnotationRefName] == "sig": // its config is no image config
			verifyBlobs(t, dir, map[string]bool{d.Digest.Hex: true})
		default:
			img, err := idx.Image(d.Digest)
			if err == nil {
				err = validate.Image(img)
			}
			if err != nil {
				t.Errorf("image %s: %v", d.Digest, err)
			}
		}
	}
}

// TestCacheLayoutConcurrentWrites: writers sharing a directory are
// serialized, so no sweep removes the blobs of a cache whose index.json
// entry is not written yet; the cache left is one of them, whole.
func TestCacheLayoutConcurrentWrites(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "cache")
	const writers = 4
	steps := make([][]CacheStep, writers)
	byDigest := map[v1.Hash]int{}
	for i := range steps {
		l := registrytest.Layer(t, []registrytest.File{{Name: "f", Mode: 0o644, Body: []byte(fmt.Sprint("writer ", i))}})
		steps[i] = []CacheStep{{Key: sha256Hash([]byte(fmt.Sprint(i))), Layer: l, CreatedBy: "RUN x"}}
		img, err := CacheArtifact(steps[i])
		if err != nil {
			t.Fatal(err)
		}
		d, _ := img.Digest()
		byDigest[d] = i
	}
	var wg sync.WaitGroup
	errs := make([]error, writers)
	for i := range writers {
		wg.Go(func() {
			for range 10 {
				if errs[i] = WriteCacheLayout(ctx, dir, steps[i]); errs[i] != nil {
					return
				}
			}
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("writer %d: %v", i, err)
		}
	}
	c, err := ReadCacheLayout(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	i, ok := byDigest[c.Digest]
	if !ok {
		t.Fatalf("the cache left, %s, is none of the writers'", c.Digest)
	}
	checkCache(t, c, steps[i])
	want := artifactBlobs(t, steps[i])
	if got := blobFiles(t, dir); !slices.Equal(sortedKeys(got), sortedKeys(want)) {
		t.Errorf("blobs left %q, want those of writer %d: %q", sortedKeys(got), i, sortedKeys(want))
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".index.json") {
			t.Errorf("temporary file %s left", e.Name())
		}
	}
}
