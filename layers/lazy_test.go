package layers_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/imgbuild/imgbuild/layers"
)

// fakeFetcher serves blobs by repository; a repository it does not know
// fails. It counts the fetches.
type fakeFetcher struct {
	mu    sync.Mutex
	repos map[string]map[v1.Hash][]byte
	calls []string
}

func (f *fakeFetcher) Fetch(_ context.Context, repo string, desc v1.Descriptor) (io.ReadCloser, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, repo)
	b, ok := f.repos[repo][desc.Digest]
	if !ok {
		return nil, errors.New("404 blob unknown")
	}
	return io.NopCloser(bytes.NewReader(b)), nil
}

func (f *fakeFetcher) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.calls)
}

// TestLazyLayers: a step imported from a registry cache is recorded
// without its blob; reading the layer fetches it once through the store's
// Fetcher and verifies it (digest, size and diffID), trying each source.
func TestLazyLayers(t *testing.T) {
	ctx := context.Background()
	src := openTestStore(t)
	l := bytesLayerTar(t, src, strings.Repeat("lazy layer ", 3000))
	good, err := readAllClose(l.Compressed())
	if err != nil {
		t.Fatal(err)
	}
	d, err := partial.Descriptor(l)
	if err != nil {
		t.Fatal(err)
	}
	diffID, _ := l.DiffID()
	other := bytesLayerTar(t, src, "another layer")
	otherDiffID, _ := other.DiffID()
	corrupt := bytes.Clone(good)
	corrupt[len(corrupt)/2] ^= 0xff

	cases := []struct {
		name     string
		serve    map[string]map[v1.Hash][]byte // nil: no fetcher
		repos    []string                      // recorded sources, the last is tried first
		claim    v1.Hash                       // the diffID the cache claims
		want     error
		fetches  int
		retrieve bool
	}{
		{name: "no fetcher", repos: []string{"r/cache"}, claim: diffID, want: layers.ErrNotFound},
		{name: "fetched once", serve: map[string]map[v1.Hash][]byte{"r/cache": {d.Digest: good}},
			repos: []string{"r/cache"}, claim: diffID, fetches: 1, retrieve: true},
		{name: "corrupt bytes", serve: map[string]map[v1.Hash][]byte{"r/cache": {d.Digest: corrupt}},
			repos: []string{"r/cache"}, claim: diffID, want: layers.ErrDigestMismatch, fetches: 1},
		{name: "wrong diffID claim", serve: map[string]map[v1.Hash][]byte{"r/cache": {d.Digest: good}},
			repos: []string{"r/cache"}, claim: otherDiffID, want: layers.ErrDigestMismatch, fetches: 1},
		{name: "first source fails, second serves", serve: map[string]map[v1.Hash][]byte{"r/old": {d.Digest: good}},
			repos: []string{"r/old", "r/gone"}, claim: diffID, fetches: 2, retrieve: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dst := openTestStore(t)
			f := &fakeFetcher{repos: tc.serve}
			if tc.serve != nil {
				dst = dst.WithFetcher(ctx, f)
			}
			for i, repo := range tc.repos {
				_, err := dst.CacheImport(ctx, layers.CacheImportOptions{Key: keyOf(tc.name), Layer: *d, DiffID: tc.claim,
					Repository: repo, Open: func(context.Context) (io.ReadCloser, error) {
						t.Fatal("a registry cache's blob was downloaded at import")
						return nil, nil
					}})
				if err != nil {
					t.Fatalf("import %d: %v", i, err)
				}
			}
			if got := dst.BlobSources(d.Digest); len(got) != len(tc.repos) || got[0] != tc.repos[len(tc.repos)-1] {
				t.Errorf("sources %q, want %q latest first", got, tc.repos)
			}
			hit, ok, err := dst.CacheGet(ctx, keyOf(tc.name))
			if err != nil || !ok {
				t.Fatalf("lazy record: ok %v, %v", ok, err)
			}
			b, err := readAllClose(hit.Uncompressed())
			if !errors.Is(err, tc.want) || f.count() != tc.fetches {
				t.Fatalf("read: %v (want %v), %d fetches (want %d)", err, tc.want, f.count(), tc.fetches)
			}
			if err == nil && !strings.Contains(string(b), "lazy layer") {
				t.Errorf("content %q", b)
			}
			// A fetched blob is stored: reading again fetches nothing.
			// Refused bytes never verify.
			again, err := readAllClose(hit.Uncompressed())
			if tc.retrieve != (err == nil) || (tc.retrieve && f.count() != tc.fetches) {
				t.Errorf("second read: %v after %d fetches", err, f.count())
			}
			if tc.retrieve && !strings.Contains(string(again), "lazy layer") {
				t.Error("second read differs")
			}
		})
	}
}

// sourcedImage presents its layers as pulled from repo (as
// remote.Image's are).
type sourcedImage struct {
	v1.Image
	repo string
}

func (s *sourcedImage) LayerByDigest(h v1.Hash) (v1.Layer, error) {
	l, err := s.Image.LayerByDigest(h)
	if err != nil {
		return nil, err
	}
	return &remote.MountableLayer{Layer: l, Reference: mustRef(s.repo + "@" + h.String())}, nil
}

// TestPutImageLazy: a pulled image stored lazily keeps its layers in the
// registry until read or FetchImage; its sources survive Prune while it is
// tagged and go with it.
func TestPutImageLazy(t *testing.T) {
	ctx := context.Background()
	src := openTestStore(t)
	const repo = "127.0.0.1:5000/base"
	f := &fakeFetcher{repos: map[string]map[v1.Hash][]byte{repo: {}}}
	var ls []v1.Layer
	for i := range 6 { // more than FetchLayers fetches at once
		l := bytesLayerTar(t, src, fmt.Sprintf("base layer %d", i))
		blob, _ := readAllClose(l.Compressed())
		d, _ := l.Digest()
		f.repos[repo][d] = blob
		ls = append(ls, l)
	}
	img, err := mutate.AppendLayers(empty.Image, ls...)
	if err != nil {
		t.Fatal(err)
	}
	pulled := &sourcedImage{Image: img, repo: repo}
	ld, _ := ls[0].Digest()
	dst := openTestStore(t).WithFetcher(ctx, f)

	dgst, err := dst.PutImageLazy(ctx, pulled)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(blobFile(dst, ld)); !os.IsNotExist(err) || f.count() != 0 {
		t.Fatalf("PutImageLazy stored the layer (%v) or fetched (%d)", err, f.count())
	}
	stored, err := dst.Image(ctx, dgst.String())
	if err != nil {
		t.Fatal(err)
	}
	sl, _ := stored.LayerByDigest(ld)
	if s, ok := sl.(interface{ BlobSources() []string }); !ok || len(s.BlobSources()) != 1 || s.BlobSources()[0] != repo {
		t.Fatalf("stored layer sources: %T", sl)
	}
	if err := dst.Tag(ctx, "base:1", dgst); err != nil {
		t.Fatal(err)
	}
	if _, err := dst.Prune(ctx); err != nil || len(dst.BlobSources(ld)) != 1 {
		t.Fatalf("prune of a tagged lazy image: %v, sources %q", err, dst.BlobSources(ld))
	}
	if err := dst.FetchImage(ctx, stored); err != nil || f.count() != len(ls) {
		t.Fatalf("FetchImage: %v, %d fetches, want %d", err, f.count(), len(ls))
	}
	for _, l := range ls {
		d, _ := l.Digest()
		if _, err := os.Stat(blobFile(dst, d)); err != nil {
			t.Fatalf("after FetchImage: %v", err)
		}
	}
	if err := dst.FetchImage(ctx, stored); err != nil || f.count() != len(ls) {
		t.Fatalf("second FetchImage: %v, %d fetches, want none more", err, f.count())
	}
	// An eager PutImage of the same pulled image records the source too.
	eager := openTestStore(t)
	if _, err := eager.PutImage(ctx, pulled); err != nil || len(eager.BlobSources(ld)) != 1 {
		t.Fatalf("PutImage: %v, sources %q", err, eager.BlobSources(ld))
	}
	if err := dst.Untag(ctx, "base:1"); err != nil {
		t.Fatal(err)
	}
	if _, err := dst.Prune(ctx); err != nil || len(dst.BlobSources(ld)) != 0 {
		t.Fatalf("prune of an untagged image: %v, sources %q left", err, dst.BlobSources(ld))
	}
}

func mustRef(s string) name.Reference {
	r, err := name.ParseReference(s)
	if err != nil {
		panic(err)
	}
	return r
}

// TestCacheImportCheck: Check runs only for a blob that stays lazy; its
// error fails the import and records nothing.
func TestCacheImportCheck(t *testing.T) {
	ctx := context.Background()
	src := openTestStore(t)
	l := bytesLayerTar(t, src, "checked layer")
	d, _ := partial.Descriptor(l)
	diffID, _ := l.DiffID()
	checks := 0
	gone := errors.New("blob unknown")
	dst := openTestStore(t)
	_, err := dst.CacheImport(ctx, layers.CacheImportOptions{Key: keyOf("a"), Layer: *d, DiffID: diffID, Repository: "r/c",
		Check: func(context.Context) error { checks++; return gone }})
	if !errors.Is(err, gone) || checks != 1 {
		t.Fatalf("failing check: %v after %d checks", err, checks)
	}
	if _, ok, _ := dst.CacheGet(ctx, keyOf("a")); ok || len(dst.BlobSources(d.Digest)) != 0 {
		t.Fatal("a failed check recorded the step")
	}
	// The same blob stored already: nothing to check.
	if _, err := src.CacheImport(ctx, layers.CacheImportOptions{Key: keyOf("b"), Layer: *d, DiffID: diffID, Repository: "r/c",
		Check: func(context.Context) error { checks++; return nil }}); err != nil || checks != 1 {
		t.Fatalf("stored blob: %v, %d checks (want none more)", err, checks)
	}
}
