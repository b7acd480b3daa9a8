package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/imgbuild/imgbuild/layers"
	"github.com/imgbuild/imgbuild/registry/registrytest"
)

// cacheSteps are three steps over two layers: the third step committed the
// same layer as the first.
func cacheSteps(t *testing.T) []CacheStep {
	t.Helper()
	l1 := registrytest.Layer(t, []registrytest.File{{Name: "a", Mode: 0o644, Body: []byte("one")}})
	l2 := registrytest.Layer(t, []registrytest.File{{Name: "b", Mode: 0o644, Body: []byte(strings.Repeat("two", 1000))}})
	return []CacheStep{
		{Key: sha256Hash([]byte("k1")), Layer: l1, CreatedBy: "RUN one"},
		{Key: sha256Hash([]byte("k2")), Layer: l2, CreatedBy: "RUN two"},
		{Key: sha256Hash([]byte("k3")), Layer: l1, CreatedBy: "COPY --from=x / /", Next: sha256Hash([]byte("k1"))},
	}
}

// checkCache checks that c holds exactly steps, and that their layers read
// back byte for byte.
func checkCache(t *testing.T, c *Cache, steps []CacheStep) {
	t.Helper()
	if c.Len() != len(steps) {
		t.Fatalf("cache has %d records, want %d", c.Len(), len(steps))
	}
	for _, s := range steps {
		hit, ok := c.Lookup(s.Key)
		if !ok {
			t.Fatalf("key %s not found", s.Key)
		}
		d, _ := s.Layer.Digest()
		diffID, _ := s.Layer.DiffID()
		mt, _ := s.Layer.MediaType()
		size, _ := s.Layer.Size()
		want := CacheHit{Key: s.Key, Layer: v1.Descriptor{MediaType: mt, Size: size, Digest: d}, DiffID: diffID, CreatedBy: s.CreatedBy, Next: s.Next}
		if hit.Key != want.Key || hit.DiffID != want.DiffID || hit.CreatedBy != want.CreatedBy || hit.Next != want.Next ||
			hit.Layer.Digest != d || hit.Layer.Size != size || hit.Layer.MediaType != mt {
			t.Errorf("record %s = %+v, want %+v", s.Key, hit, want)
		}
		got, err := readCacheLayer(context.Background(), c, hit.Layer)
		if err != nil {
			t.Fatalf("reading layer %s: %v", d, err)
		}
		if !bytes.Equal(got, compressedBytes(t, s.Layer)) {
			t.Errorf("layer %s: bytes differ", d)
		}
	}
	if _, ok := c.Lookup(sha256Hash([]byte("absent"))); ok {
		t.Error("an absent key was found")
	}
}

func compressedBytes(t *testing.T, l v1.Layer) []byte {
	t.Helper()
	b, err := readAllClose(l.Compressed())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// readCacheLayer reads the layer blob d of c whole (OpenLayer's error and
// the read's alike).
func readCacheLayer(ctx context.Context, c *Cache, d v1.Descriptor) ([]byte, error) {
	return readAllClose(c.OpenLayer(ctx, d))
}

// readAllClose reads rc whole and closes it, or returns err.
func readAllClose(rc io.ReadCloser, err error) ([]byte, error) {
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

// checkCacheManifest checks the format of a pushed or written manifest.
func checkCacheFormat(t *testing.T, raw []byte, steps []CacheStep) {
	t.Helper()
	var m struct {
		SchemaVersion int             `json:"schemaVersion"`
		MediaType     string          `json:"mediaType"`
		ArtifactType  string          `json:"artifactType"`
		Config        v1.Descriptor   `json:"config"`
		Layers        []v1.Descriptor `json:"layers"`
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	if m.SchemaVersion != 2 || m.MediaType != string(types.OCIManifestSchema1) || m.ArtifactType != CacheArtifactType ||
		m.Config.MediaType != CacheConfigMediaType {
		t.Errorf("manifest header = %d %q %q config %q", m.SchemaVersion, m.MediaType, m.ArtifactType, m.Config.MediaType)
	}
	distinct := map[v1.Hash]bool{}
	for _, s := range steps {
		d, _ := s.Layer.Digest()
		distinct[d] = true
	}
	if len(m.Layers) != len(distinct) {
		t.Errorf("manifest lists %d layers, want %d (each blob once)", len(m.Layers), len(distinct))
	}
	for _, l := range m.Layers {
		if l.MediaType != types.DockerLayer && l.MediaType != types.OCILayer {
			t.Errorf("layer media type %q", l.MediaType)
		}
	}
}

// countingTransport counts the requests that start blob uploads.
type countingTransport struct {
	mu      sync.Mutex
	uploads int
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method == http.MethodPost && strings.Contains(r.URL.Path, "/blobs/uploads/") {
		c.mu.Lock()
		c.uploads++
		c.mu.Unlock()
	}
	return http.DefaultTransport.RoundTrip(r)
}

func (c *countingTransport) take() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.uploads
	c.uploads = 0
	return n
}

// TestCacheDistribution pushes and pulls caches with Debian's
// docker-registry (distribution 2.8).
func TestCacheDistribution(t *testing.T) {
	ctx := context.Background()
	host := registrytest.Start(t)
	ct := &countingTransport{}
	opts := Options{Insecure: []string{host}, Keychain: anonymous{}, Transport: ct}
	steps := cacheSteps(t)
	ref := host + "/app:buildcache"
	if err := PushCache(ctx, ref, steps, opts); err != nil {
		t.Fatal(err)
	}
	if n := ct.take(); n != 3 { // two layers and the config
		t.Errorf("first push started %d uploads, want 3", n)
	}
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := remote.Get(r)
	if err != nil {
		t.Fatal(err)
	}
	checkCacheFormat(t, desc.Manifest, steps)
	c, err := PullCache(ctx, ref, opts)
	if err != nil {
		t.Fatal(err)
	}
	checkCache(t, c, steps)
	if c.Digest != desc.Digest || c.MetadataBytes <= int64(len(desc.Manifest)) {
		t.Errorf("digest %s (want %s), metadata bytes %d", c.Digest, desc.Digest, c.MetadataBytes)
	}

	t.Run("present blobs are skipped", func(t *testing.T) {
		ct.take()
		if err := PushCache(ctx, host+"/app:buildcache2", steps[:2], opts); err != nil {
			t.Fatal(err)
		}
		if n := ct.take(); n != 1 { // the new config only
			t.Errorf("push to the same repository started %d uploads, want 1", n)
		}
	})
	t.Run("the image's repository", func(t *testing.T) {
		img := registrytest.Image(t, []registrytest.File{{Name: "c", Mode: 0o644, Body: []byte("image layer")}}, v1.Config{}, HostPlatform())
		if err := Push(ctx, img, []string{host + "/img:1"}, opts); err != nil {
			t.Fatal(err)
		}
		ls, _ := img.Layers()
		ct.take()
		if err := PushCache(ctx, host+"/img:cache", []CacheStep{{Key: sha256Hash([]byte("x")), Layer: ls[0]}}, opts); err != nil {
			t.Fatal(err)
		}
		if n := ct.take(); n != 1 {
			t.Errorf("cache next to its image started %d uploads, want 1 (its config)", n)
		}
		_, err := PullCache(ctx, host+"/img:1", opts)
		if err == nil || !strings.Contains(err.Error(), "not an imgbuild cache") {
			t.Errorf("an image pulled as a cache: %v", err)
		}
	})
	t.Run("empty", func(t *testing.T) {
		if err := PushCache(ctx, host+"/app:empty", nil, opts); err != nil {
			t.Fatal(err)
		}
		c, err := PullCache(ctx, host+"/app:empty", opts)
		if err != nil || c.Len() != 0 {
			t.Fatalf("empty cache: %v, %v", c, err)
		}
	})
	t.Run("missing", func(t *testing.T) {
		_, err := PullCache(ctx, host+"/app:nope", opts)
		if !errors.Is(err, ErrNotFound) {
			t.Errorf("missing tag: %v, want ErrNotFound", err)
		}
		_, err = PullCache(ctx, host+"/nope:x", opts)
		if !errors.Is(err, ErrNotFound) {
			t.Errorf("missing repository: %v, want ErrNotFound", err)
		}
	})
}

// TestCacheOCIRegistry round-trips a cache through go-containerregistry's
// registry, an OCI 1.1 implementation.
func TestCacheOCIRegistry(t *testing.T) {
	ctx := context.Background()
	f := newFakeRegistry(t)
	steps := cacheSteps(t)
	ref := f.host + "/team/cache:main"
	if err := PushCache(ctx, ref, steps, f.opts()); err != nil {
		t.Fatal(err)
	}
	c, err := PullCache(ctx, ref, f.opts())
	if err != nil {
		t.Fatal(err)
	}
	checkCache(t, c, steps)

	// A blob the registry serves corrupted fails the read with a digest
	// error naming the reference.
	hit, _ := c.Lookup(steps[1].Key)
	f.setHook(func(w http.ResponseWriter, r *http.Request, next http.Handler) bool {
		if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, hit.Layer.Digest.String()) {
			return false
		}
		b := compressedBytes(t, steps[1].Layer)
		b[len(b)/2] ^= 0xff
		w.Write(b)
		return true
	})
	_, err = readCacheLayer(ctx, c, hit.Layer)
	if err == nil || !strings.Contains(err.Error(), ref) {
		t.Errorf("corrupt blob read: %v", err)
	}
}

// TestCacheLayout writes and reads local caches (type=local).
func TestCacheLayout(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "cache")
	steps := cacheSteps(t)
	// Another image in the layout stays.
	img := registrytest.Image(t, []registrytest.File{{Name: "c", Mode: 0o644, Body: []byte("x")}}, v1.Config{}, HostPlatform())
	if err := WriteOCILayout(ctx, dir, []Tagged{{Image: img, Tags: []string{"app:1"}}}); err != nil {
		t.Fatal(err)
	}
	if err := WriteCacheLayout(ctx, dir, steps[:1]); err != nil {
		t.Fatal(err)
	}
	if err := WriteCacheLayout(ctx, dir, steps); err != nil { // replaces the first
		t.Fatal(err)
	}
	var idx v1.IndexManifest
	b, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &idx); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, d := range idx.Manifests {
		names = append(names, d.Annotations[AnnotationRefName])
	}
	if strings.Join(names, ",") != "1,cache" {
		t.Fatalf("index.json entries named %q, want 1 and cache", names)
	}
	c, err := ReadCacheLayout(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	checkCache(t, c, steps)
	raw, err := os.ReadFile(filepath.Join(dir, "blobs", "sha256", c.Digest.Hex))
	if err != nil {
		t.Fatal(err)
	}
	checkCacheFormat(t, raw, steps)

	// skopeo reads it as any OCI artifact.
	out, err := exec.Command("skopeo", "inspect", "--raw", "oci:"+dir+":cache").CombinedOutput()
	if err != nil {
		t.Fatalf("skopeo inspect: %v: %s", err, out)
	}
	if !bytes.Equal(bytes.TrimSpace(out), bytes.TrimSpace(raw)) {
		t.Errorf("skopeo read another manifest: %s", out)
	}

	t.Run("corrupt layer", func(t *testing.T) {
		hit, _ := c.Lookup(steps[1].Key)
		flipByte(t, filepath.Join(dir, "blobs", "sha256", hit.Layer.Digest.Hex))
		_, err := readCacheLayer(ctx, c, hit.Layer)
		if !errors.Is(err, layers.ErrDigestMismatch) {
			t.Errorf("corrupt layer read: %v, want a digest mismatch", err)
		}
	})
	t.Run("corrupt config", func(t *testing.T) {
		var m v1.Manifest
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatal(err)
		}
		flipByte(t, filepath.Join(dir, "blobs", "sha256", m.Config.Digest.Hex))
		_, err := ReadCacheLayout(ctx, dir)
		if !errors.Is(err, layers.ErrDigestMismatch) {
			t.Errorf("corrupt config: %v, want a digest mismatch", err)
		}
	})
	t.Run("missing", func(t *testing.T) {
		_, err := ReadCacheLayout(ctx, filepath.Join(t.TempDir(), "none"))
		if !errors.Is(err, os.ErrNotExist) {
			t.Errorf("missing directory: %v", err)
		}
		only := t.TempDir()
		if err := WriteOCILayout(ctx, only, []Tagged{{Image: img, Tags: []string{"app:1"}}}); err != nil {
			t.Fatal(err)
		}
		if _, err := ReadCacheLayout(ctx, only); err == nil || !strings.Contains(err.Error(), `no manifest named "cache"`) {
			t.Errorf("layout without a cache: %v", err)
		}
	})
}

func flipByte(t *testing.T, p string) {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x01
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestCacheParseErrors: a cache that does not hold together is refused
// whole.
func TestCacheParseErrors(t *testing.T) {
	key := sha256Hash([]byte("k")).String()
	layer := `{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","size":3,"digest":"` + key + `"}`
	manifest := func(cfgType, layers string) []byte {
		return []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",` +
			`"config":{"mediaType":"` + cfgType + `","size":2,"digest":"` + key + `"},"layers":[` + layers + `]}`)
	}
	for _, tc := range []struct {
		name             string
		manifest, config string
		want             string
	}{
		{"image config", string(manifest("application/vnd.oci.image.config.v1+json", layer)), `{}`, "not an imgbuild cache"},
		{"schema 1", `{"schemaVersion":1}`, `{}`, "not an OCI image manifest"},
		{"layer out of range", string(manifest(CacheConfigMediaType, layer)),
			`{"records":[{"key":"` + key + `","layer":1,"diffID":"` + key + `"}]}`, "out of range"},
		{"negative layer", string(manifest(CacheConfigMediaType, layer)),
			`{"records":[{"key":"` + key + `","layer":-1,"diffID":"` + key + `"}]}`, "out of range"},
		{"no diffID", string(manifest(CacheConfigMediaType, layer)),
			`{"records":[{"key":"` + key + `","layer":0}]}`, "invalid key, diffID or next"},
		{"bad next", string(manifest(CacheConfigMediaType, layer)),
			`{"records":[{"key":"` + key + `","layer":0,"diffID":"` + key + `","next":"sha512:` + strings.Repeat("00", 64) + `"}]}`, "invalid key, diffID or next"},
		{"path in digest", string(manifest(CacheConfigMediaType, `{"mediaType":"x","size":1,"digest":"sha256:../../etc/passwd"}`)),
			`{"records":[]}`, "non-hex"},
		{"other algorithm", string(manifest(CacheConfigMediaType, `{"mediaType":"x","size":1,"digest":"sha512:`+strings.Repeat("ab", 64)+`"}`)),
			`{"records":[]}`, "invalid descriptor"},
		{"config not json", string(manifest(CacheConfigMediaType, layer)), `[`, "cache config"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := checkCacheManifest([]byte(tc.manifest))
			if err == nil {
				_, err = parseCacheArtifact([]byte(tc.manifest), []byte(tc.config))
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}
