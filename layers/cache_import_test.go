package layers_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"

	"github.com/imgbuild/imgbuild/layers"
)

func keyOf(s string) v1.Hash {
	return v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", sha256.Sum256([]byte(s)))}
}

// TestCacheImport fetches layers from "another machine's" store into an
// empty one, as --cache-from does, and refuses every blob or diffID that
// does not match.
func TestCacheImport(t *testing.T) {
	ctx := context.Background()
	src := openTestStore(t)
	gz := bytesLayerTar(t, src, strings.Repeat("gzip layer ", 5000))
	zst := func() v1.Layer {
		l, err := src.WriteLayer(ctx, func(w io.Writer) error {
			return writeOneFileTar(w, "z", strings.Repeat("zstd layer ", 5000))
		}, layers.LayerOptions{Compression: layers.Zstd})
		if err != nil {
			t.Fatal(err)
		}
		return l
	}()
	blob := func(l v1.Layer) []byte {
		b, err := readAllClose(l.Compressed())
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	desc := func(l v1.Layer) v1.Descriptor {
		d, err := partial.Descriptor(l)
		if err != nil {
			t.Fatal(err)
		}
		return *d
	}
	diffID := func(l v1.Layer) v1.Hash {
		h, err := l.DiffID()
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	flipped := blob(gz)
	flipped[len(flipped)/2] ^= 1
	for _, tc := range []struct {
		name   string
		layer  v1.Layer
		bytes  []byte  // served; nil: the layer's own
		diffID v1.Hash // claimed; zero: the layer's own
		want   error   // nil: imported
	}{
		{name: "gzip", layer: gz},
		{name: "zstd", layer: zst},
		{name: "flipped byte", layer: gz, bytes: flipped, want: layers.ErrDigestMismatch},
		{name: "truncated", layer: gz, bytes: blob(gz)[:100], want: layers.ErrDigestMismatch},
		{name: "longer", layer: gz, bytes: append(blob(gz), 0), want: layers.ErrDigestMismatch},
		{name: "wrong diffID", layer: gz, diffID: keyOf("not the content"), want: layers.ErrDigestMismatch},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst := openTestStore(t)
			served := tc.bytes
			if served == nil {
				served = blob(tc.layer)
			}
			claim := tc.diffID
			if claim == (v1.Hash{}) {
				claim = diffID(tc.layer)
			}
			opened := 0
			open := func(context.Context) (io.ReadCloser, error) {
				opened++
				return io.NopCloser(bytes.NewReader(served)), nil
			}
			d := desc(tc.layer)
			l, err := dst.CacheImport(ctx, layers.CacheImportOptions{Key: keyOf(tc.name), Next: keyOf("next"), Layer: d, DiffID: claim, CreatedBy: "RUN " + tc.name, Open: open})
			if opened != 1 {
				t.Errorf("blob opened %d times, want 1", opened)
			}
			got, next, ok, gerr := dst.CacheLookup(ctx, keyOf(tc.name))
			if gerr != nil {
				t.Fatal(gerr)
			}
			if tc.want != nil {
				if !errors.Is(err, tc.want) {
					t.Fatalf("CacheImport: %v, want %v", err, tc.want)
				}
				if ok {
					t.Error("a refused layer was recorded")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !ok || mustDigest(t, got) != d.Digest || diffID(got) != claim || mustDigest(t, l) != d.Digest || next != keyOf("next") {
				t.Fatalf("recorded %v (ok %v), want %s", got, ok, d.Digest)
			}
			if b, err := readAllClose(got.Uncompressed()); err != nil || len(b) == 0 {
				t.Fatalf("reading the imported layer: %v", err)
			}
			// A second key on the same blob: nothing is fetched, the
			// diffID claim is still checked.
			if _, err := dst.CacheImport(ctx, layers.CacheImportOptions{Key: keyOf("again"), Layer: d, DiffID: claim, Open: open}); err != nil || opened != 1 {
				t.Errorf("second import: %v, blob opened %d times", err, opened)
			}
			if _, err := dst.CacheImport(ctx, layers.CacheImportOptions{Key: keyOf("lie"), Layer: d, DiffID: keyOf("x"), Open: open}); !errors.Is(err, layers.ErrDigestMismatch) || opened != 1 {
				t.Errorf("wrong diffID for a stored blob: %v, blob opened %d times", err, opened)
			}
		})
	}
	t.Run("open fails", func(t *testing.T) {
		dst := openTestStore(t)
		_, err := dst.CacheImport(ctx, layers.CacheImportOptions{Key: keyOf("x"), Layer: desc(gz), DiffID: diffID(gz),
			Open: func(context.Context) (io.ReadCloser, error) { return nil, os.ErrPermission }})
		if !errors.Is(err, os.ErrPermission) {
			t.Errorf("error %v", err)
		}
	})
}
