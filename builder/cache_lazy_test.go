package builder_test

import (
	"context"
	"io"
	"log"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/imgbuild/imgbuild/builder"
	"github.com/imgbuild/imgbuild/builder/run"
	"github.com/imgbuild/imgbuild/layers"
	"github.com/imgbuild/imgbuild/registry"
	"github.com/imgbuild/imgbuild/registry/registrytest"
)

// requestLog records the registry requests a machine makes.
type requestLog struct {
	mu   sync.Mutex
	reqs []string // "METHOD path?query"
}

func (l *requestLog) RoundTrip(req *http.Request) (*http.Response, error) {
	l.mu.Lock()
	l.reqs = append(l.reqs, req.Method+" "+req.URL.Path+"?"+req.URL.RawQuery)
	l.mu.Unlock()
	return remote.DefaultTransport.RoundTrip(req)
}

// blobTransfers lists the GETs of the blobs among digests, and the uploads
// of those blobs (the config, which the push makes, is not among them).
func (l *requestLog) blobTransfers(digests map[v1.Hash]bool) (gets, uploads []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range l.reqs {
		method, rest, _ := strings.Cut(r, " ")
		switch {
		case method == http.MethodGet && strings.Contains(rest, "/blobs/sha256:"):
			i := strings.Index(rest, "/blobs/")
			h, err := v1.NewHash(strings.TrimSuffix(rest[i+len("/blobs/"):], "?"))
			if err == nil && digests[h] {
				gets = append(gets, r)
			}
		case method == http.MethodPut && strings.Contains(rest, "/blobs/uploads/"):
			// The upload's last request names the blob it committed.
			q, err := url.ParseQuery(rest[strings.Index(rest, "?")+1:])
			h, herr := v1.NewHash(q.Get("digest"))
			if err != nil || herr != nil || digests[h] {
				uploads = append(uploads, r)
			}
		}
	}
	return gets, uploads
}

func (l *requestLog) count(prefix string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, r := range l.reqs {
		if strings.HasPrefix(r, prefix) {
			n++
		}
	}
	return n
}

// emptyMachine is a crMachine whose store starts empty and whose registry
// requests are logged.
func emptyMachine(t *testing.T, dir, host string) (*crMachine, *requestLog, registry.Options) {
	t.Helper()
	registrytest.RequireRoot(t)
	st, err := layers.OpenStore(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ex, err := run.New(run.Options{StateDir: builder.RunStateDir(st)})
	if err != nil {
		t.Fatal(err)
	}
	log := &requestLog{}
	reg := registry.Options{Insecure: []string{host}, Keychain: authn.NewMultiKeychain(), Transport: log}
	return &crMachine{t: t, store: st, exec: &countingExecutor{Executor: ex}, ctx: dir}, log, reg
}

func layerDigests(t *testing.T, img v1.Image) map[v1.Hash]bool {
	t.Helper()
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	out := map[v1.Hash]bool{}
	for _, l := range ls {
		d, err := l.Digest()
		if err != nil {
			t.Fatal(err)
		}
		out[d] = true
	}
	return out
}

// storedBlobs lists which of digests have a blob file in st.
func storedBlobs(t *testing.T, st *layers.Store, digests map[v1.Hash]bool) int {
	t.Helper()
	n := 0
	for d := range digests {
		if _, err := os.Stat(filepath.Join(st.OCILayout(), "blobs", d.Algorithm, d.Hex)); err == nil {
			n++
		}
	}
	return n
}

// TestRemoteCachePushMounts: machine A builds FROM an image of the
// registry and exports its cache there; machine B, an empty store, builds
// the same with --cache-from and pushes to the same registry: it runs no
// RUN, downloads no layer (neither the base's nor the steps'), uploads no
// layer (the push, and the export of its cache to another repository,
// mount them from the base and cache repositories), and the pushed image
// is complete and identical to A's.
func TestRemoteCachePushMounts(t *testing.T) {
	host := registrytest.Start(t)
	base := registrytest.PushBusybox(t, host)
	df := strings.ReplaceAll(crDockerfile, "FROM busybox", "FROM "+base)
	dir := btContext(t, map[string]string{"Dockerfile": df})
	cacheRef := host + "/app:buildcache"

	a, _, regA := emptyMachine(t, dir, host)
	resA, runs := a.build(func(o *builder.Options) {
		o.Registry = regA
		o.CacheTo = cacheTo(t, "type=registry,ref="+cacheRef+",mode=max")
	})
	if runs != 3 {
		t.Fatalf("machine A ran %d RUNs, want 3", runs)
	}
	cache, err := registry.PullCache(context.Background(), cacheRef, regA)
	if err != nil {
		t.Fatal(err)
	}
	digests := layerDigests(t, resA.Image)

	b, log, regB := emptyMachine(t, dir, host)
	target := host + "/other/app:b"
	resB, err := builder.Build(context.Background(), builder.Options{
		ContextDir: dir, Store: b.store, Executor: b.exec, Registry: regB,
		BuildArgs: map[string]string{"SOURCE_DATE_EPOCH": "1700000000"},
		CacheFrom: cacheFrom(t, "type=registry,ref="+cacheRef),
		CacheTo:   cacheTo(t, "type=registry,ref="+host+"/branch/cache:b,mode=max"),
		Tags:      []string{target},
		Outputs:   []builder.Output{{Type: builder.OutputRegistry}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if n := b.exec.runs.Load(); n != 0 || resB.Digest != resA.Digest {
		t.Fatalf("machine B ran %d RUNs and built %s, want 0 and %s", n, resB.Digest, resA.Digest)
	}
	watched := maps.Clone(digests)
	for _, d := range artifactLayers(t, cacheRef) {
		watched[d] = true // the build stage's layers too, exported to the new cache
	}
	gets, uploads := log.blobTransfers(watched)
	if len(gets) != 0 || len(uploads) != 0 {
		t.Errorf("machine B downloaded layers %q and uploaded %q, want none", gets, uploads)
	}
	if log.count("POST ") == 0 || resB.Cache.BytesDownloaded != cache.MetadataBytes {
		t.Errorf("%d upload sessions (mounts), %d bytes downloaded (metadata %d)", log.count("POST "), resB.Cache.BytesDownloaded, cache.MetadataBytes)
	}
	if n := storedBlobs(t, b.store, digests); n != 0 {
		t.Errorf("machine B stored %d layer blobs, want 0 (lazy)", n)
	}

	// The pushed image is complete: every blob reads and verifies.
	pushed := pullImage(t, target, regA)
	if err := validate.Image(pushed); err != nil {
		t.Fatalf("pushed image: %v", err)
	}
	if d, _ := pushed.Digest(); d != resA.Digest {
		t.Errorf("pushed %s, want %s", d, resA.Digest)
	}

	t.Run("an output read later fetches the lazy layers", func(t *testing.T) {
		dest := filepath.Join(t.TempDir(), "oci")
		err := builder.Export(context.Background(), resB, []builder.Output{{Type: builder.OutputOCI, Dest: dest}},
			builder.ExportOptions{Registry: regB})
		if err != nil {
			t.Fatal(err)
		}
		img := layoutImage(t, dest)
		if err := validate.Image(img); err != nil {
			t.Fatalf("exported image: %v", err)
		}
		if n := storedBlobs(t, b.store, digests); n != len(digests) {
			t.Errorf("%d of %d layers fetched into the store", n, len(digests))
		}
	})

	t.Run("a build without a push stores the whole image", func(t *testing.T) {
		c, _, regC := emptyMachine(t, dir, host)
		res, runs := c.build(func(o *builder.Options) {
			o.Registry = regC
			o.CacheFrom = cacheFrom(t, "type=registry,ref="+cacheRef)
		})
		if runs != 0 || res.Digest != resA.Digest {
			t.Fatalf("%d RUNs, built %s", runs, res.Digest)
		}
		if n := storedBlobs(t, c.store, digests); n != len(digests) {
			t.Errorf("%d of %d layers stored", n, len(digests))
		}
		stepBytes := layerBytes(t, res.Image, pullImage(t, base, regC))
		if want := cache.MetadataBytes + stepBytes; res.Cache.BytesDownloaded != want {
			t.Errorf("%d bytes downloaded from the cache, want %d (metadata and step layers)", res.Cache.BytesDownloaded, want)
		}
	})
}

func pullImage(t *testing.T, ref string, reg registry.Options) v1.Image {
	t.Helper()
	img, err := registry.Pull(context.Background(), ref, reg)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func layoutImage(t *testing.T, dir string) v1.Image {
	t.Helper()
	p, err := layout.FromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	m, err := idx.IndexManifest()
	if err != nil || len(m.Manifests) != 1 {
		t.Fatalf("index: %v, %d manifests", err, len(m.Manifests))
	}
	img, err := idx.Image(m.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// losingRegistry is go-containerregistry's registry answering 404 for the
// blobs in lost (a registry whose garbage collection removed them).
type losingRegistry struct {
	http.Handler
	mu   sync.Mutex
	lost map[string]bool // digest strings
}

func (l *losingRegistry) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	l.mu.Lock()
	i := strings.LastIndex(r.URL.Path, "/blobs/")
	lost := i >= 0 && l.lost[r.URL.Path[i+len("/blobs/"):]]
	l.mu.Unlock()
	if lost {
		http.Error(w, `{"errors":[{"code":"BLOB_UNKNOWN"}]}`, http.StatusNotFound)
		return
	}
	l.Handler.ServeHTTP(w, r)
}

// TestRemoteCacheLostLayer: a registry cache whose layer blob is gone is
// found out when the step hits (a HEAD request), not when the lazy layer
// would be read: a warning, and the step runs; the other steps still come
// from the cache.
func TestRemoteCacheLostLayer(t *testing.T) {
	reg := &losingRegistry{Handler: ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0))), lost: map[string]bool{}}
	srv := httptest.NewServer(reg)
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	opts := registry.Options{Insecure: []string{host}, Keychain: authn.NewMultiKeychain()}
	dir := btContext(t, map[string]string{"Dockerfile": crDockerfile})
	ref := host + "/app:cache"
	a := newCRMachine(t, dir)
	resA, _ := a.build(func(o *builder.Options) {
		o.Registry = opts
		o.CacheTo = cacheTo(t, "type=registry,ref="+ref+",mode=max")
	})
	ls, err := resA.Image.Layers()
	if err != nil {
		t.Fatal(err)
	}
	last, _ := ls[len(ls)-1].Digest() // the final RUN's
	reg.mu.Lock()
	reg.lost[last.String()] = true
	reg.mu.Unlock()

	b := newCRMachine(t, dir)
	res, runs := b.build(func(o *builder.Options) {
		o.Registry = opts
		o.CacheFrom = cacheFrom(t, "type=registry,ref="+ref)
	})
	w := b.warnings()
	if runs != 1 || res.Cache.Hits != 5 || len(w) != 1 || !strings.Contains(w[0], "cat /app/artifact > /app/copy") ||
		!strings.Contains(w[0], last.String()) {
		t.Errorf("%d RUNs (want 1), %+v (want 5 hits), warnings %q", runs, res.Cache, w)
	}
}

// artifactLayers lists the layer digests of the manifest at ref.
func artifactLayers(t *testing.T, ref string) []v1.Hash {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(r)
	if err != nil {
		t.Fatal(err)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	var out []v1.Hash
	for _, l := range m.Layers {
		out = append(out, l.Digest)
	}
	return out
}
