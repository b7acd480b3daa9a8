//go:build linux

package layers_test

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/imgbuild/imgbuild/layers"
)

func openTestStore(t testing.TB) *layers.Store {
	t.Helper()
	s, err := layers.OpenStore(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// treeLayer writes a layer of the tree at root.
func treeLayer(t testing.TB, s *layers.Store, root string, opts layers.LayerOptions) v1.Layer {
	t.Helper()
	ctx := context.Background()
	l, err := s.WriteLayer(ctx, func(w io.Writer) error {
		return layers.WriteTar(ctx, w, root, layers.TarOptions{})
	}, opts)
	if err != nil {
		t.Fatalf("WriteLayer: %v", err)
	}
	return l
}

// bytesLayer writes a layer whose "tar" is b (WriteLayer does not parse it).
func bytesLayer(t testing.TB, s *layers.Store, b []byte, opts layers.LayerOptions) v1.Layer {
	t.Helper()
	l, err := s.WriteLayer(context.Background(), func(w io.Writer) error {
		_, err := w.Write(b)
		return err
	}, opts)
	if err != nil {
		t.Fatalf("WriteLayer: %v", err)
	}
	return l
}

// imageOf builds an OCI image of ls created at the given time.
func imageOf(created time.Time, ls ...v1.Layer) (v1.Image, error) {
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	for _, l := range ls {
		var err error
		if img, err = mutate.Append(img, mutate.Addendum{Layer: l, History: v1.History{CreatedBy: "test", Created: v1.Time{Time: created}}}); err != nil {
			return nil, err
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Created = "linux", runtime.GOARCH, v1.Time{Time: created}
	cf.Config.Cmd = []string{"/bin/sh"}
	return mutate.ConfigFile(img, cf)
}

func ociImage(t testing.TB, created time.Time, ls ...v1.Layer) v1.Image {
	t.Helper()
	img, err := imageOf(created, ls...)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// writeOneFileTar writes a tar holding one file.
func writeOneFileTar(w io.Writer, name, content string) error {
	tw := tar.NewWriter(w)
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(content)), ModTime: time.Unix(1, 0)}
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	if _, err := io.WriteString(tw, content); err != nil {
		return err
	}
	return tw.Close()
}

// bytesLayerTar stores a gzip layer holding one file with the given content.
func bytesLayerTar(t testing.TB, s *layers.Store, content string) v1.Layer {
	t.Helper()
	l, err := s.WriteLayer(context.Background(), func(w io.Writer) error {
		return writeOneFileTar(w, "f", content)
	}, layers.LayerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func mustDigest(t testing.TB, x interface{ Digest() (v1.Hash, error) }) v1.Hash {
	t.Helper()
	d, err := x.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// blobsOf lists the manifest, config and layer digests of img.
func blobsOf(t testing.TB, img v1.Image) []v1.Hash {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	hs := []v1.Hash{mustDigest(t, img), m.Config.Digest}
	for _, l := range m.Layers {
		hs = append(hs, l.Digest)
	}
	return hs
}

func fileSize(t testing.TB, p string) int64 {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

func putImage(t testing.TB, s *layers.Store, img v1.Image, tags ...string) v1.Hash {
	t.Helper()
	ctx := context.Background()
	d, err := s.PutImage(ctx, img)
	if err != nil {
		t.Fatalf("PutImage: %v", err)
	}
	for _, tag := range tags {
		if err := s.Tag(ctx, tag, d); err != nil {
			t.Fatalf("Tag %s: %v", tag, err)
		}
	}
	return d
}

func blobFile(s *layers.Store, h v1.Hash) string {
	return filepath.Join(s.Root(), "oci", "blobs", "sha256", h.Hex)
}

func readAllClose(rc io.ReadCloser, err error) ([]byte, error) {
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

func dirNames(t testing.TB, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// TestCorruptBlobs corrupts each blob of a stored image in turn (umoci's
// blob hardening tests): reading it must fail with ErrDigestMismatch.
func TestCorruptBlobs(t *testing.T) {
	for _, tc := range []struct {
		name    string
		which   string // manifest, config, layer
		corrupt func([]byte) []byte
	}{
		{"layer flipped", "layer", func(b []byte) []byte { b[len(b)/2] ^= 1; return b }},
		{"layer truncated", "layer", func(b []byte) []byte { return b[:len(b)-1] }},
		{"layer extended", "layer", func(b []byte) []byte { return append(b, 0) }},
		{"config flipped", "config", func(b []byte) []byte { b[len(b)-2] ^= 1; return b }},
		{"manifest flipped", "manifest", func(b []byte) []byte { b[len(b)-2] ^= 1; return b }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := openTestStore(t)
			ctx := context.Background()
			l := bytesLayer(t, s, compressible(2, 100<<10), layers.LayerOptions{})
			d := putImage(t, s, ociImage(t, time.Unix(1, 0), l), "app:1")
			img, err := s.Image(ctx, "app:1")
			if err != nil {
				t.Fatal(err)
			}
			target := map[string]func() (v1.Hash, error){"manifest": img.Digest, "config": img.ConfigName, "layer": l.Digest}[tc.which]
			h, _ := target()
			p := blobFile(s, h)
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, tc.corrupt(b), 0o644); err != nil {
				t.Fatal(err)
			}
			if tc.which != "layer" {
				if _, err := s.Image(ctx, d.String()); !errors.Is(err, layers.ErrDigestMismatch) {
					t.Fatalf("Image: err %v, want ErrDigestMismatch", err)
				}
				return
			}
			img, err = s.Image(ctx, d.String())
			if err != nil {
				t.Fatal(err)
			}
			ls, _ := img.Layers()
			if _, err := readAllClose(ls[0].Compressed()); !errors.Is(err, layers.ErrDigestMismatch) {
				t.Errorf("Compressed: err %v, want ErrDigestMismatch", err)
			}
			if _, err := readAllClose(ls[0].Uncompressed()); err == nil {
				t.Errorf("Uncompressed of a corrupt blob succeeded")
			}
			if err := validate.Image(img); err == nil {
				t.Errorf("validate.Image accepted a corrupt layer")
			}
		})
	}
}

func TestPutImageAndLookup(t *testing.T) {
	s := openTestStore(t)
	ctx := context.Background()
	root := t.TempDir()
	makeFixture(t, root, userNodes())
	l1 := treeLayer(t, s, root, layers.LayerOptions{Compression: layers.Gzip})
	root2 := t.TempDir()
	makeFixture(t, root2, []fsNode{{path: "data", kind: 'f', mode: 0o644, data: string(compressible(3, 10<<10))}})
	// validate.Image reads every layer as gzip: no zstd here.
	l2 := treeLayer(t, s, root2, layers.LayerOptions{Compression: layers.Gzip, Level: 1})
	img := ociImage(t, time.Unix(1700000000, 0), l1, l2)
	want, _ := img.Digest()
	d := putImage(t, s, img, "user/app:1.0", "localhost:5000/x")
	if d != want {
		t.Fatalf("PutImage returned %s, image digest %s", d, want)
	}
	for _, ref := range []string{
		"user/app:1.0", "docker.io/user/app:1.0", "index.docker.io/user/app:1.0",
		"localhost:5000/x", "localhost:5000/x:latest",
		d.String(), d.Hex, "sha256:" + d.Hex[:12], d.Hex[:12], d.Hex[:layers.MinIDPrefix],
		"user/app@" + d.String(), "other/name@" + d.String(),
	} {
		got, err := s.Image(ctx, ref)
		if err != nil {
			t.Errorf("Image(%q): %v", ref, err)
			continue
		}
		if gd, _ := got.Digest(); gd != d {
			t.Errorf("Image(%q) = %s, want %s", ref, gd, d)
		}
	}
	for _, ref := range []string{"user/app:2.0", "user/app", "x", d.Hex[:layers.MinIDPrefix-1], "sha256:" + strings.Repeat("0", 64), "Bad Name"} {
		if _, err := s.Image(ctx, ref); !errors.Is(err, layers.ErrNotFound) {
			t.Errorf("Image(%q): err %v, want ErrNotFound", ref, err)
		}
	}
	stored, err := s.Image(ctx, "user/app:1.0")
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(stored); err != nil {
		t.Fatalf("validate.Image: %v", err)
	}
	var idx v1.IndexManifest
	b, err := os.ReadFile(filepath.Join(s.Root(), "oci", "index.json"))
	if err != nil || json.Unmarshal(b, &idx) != nil {
		t.Fatalf("index.json: %v %s", err, b)
	}
	var refs []string
	for _, m := range idx.Manifests {
		refs = append(refs, m.Annotations[layers.RefNameAnnotation]+"="+m.Digest.Hex[:8]+"/"+string(m.MediaType))
	}
	wantRefs := []string{
		"localhost:5000/x:latest=" + d.Hex[:8] + "/" + string(types.OCIManifestSchema1),
		"user/app:1.0=" + d.Hex[:8] + "/" + string(types.OCIManifestSchema1),
	}
	if strings.Join(refs, " ") != strings.Join(wantRefs, " ") {
		t.Errorf("index entries %q, want %q", refs, wantRefs)
	}
	layout, err := os.ReadFile(filepath.Join(s.Root(), "oci", "oci-layout"))
	if err != nil || !strings.Contains(string(layout), `"imageLayoutVersion":"1.0.0"`) {
		t.Errorf("oci-layout: %s %v", layout, err)
	}
}

// TestPutImageForeign stores an image that lives elsewhere (docker media
// types, layers in memory), as a pull does.
func TestPutImageForeign(t *testing.T) {
	s := openTestStore(t)
	ctx := context.Background()
	src, err := random.Image(2048, 3)
	if err != nil {
		t.Fatal(err)
	}
	d := putImage(t, s, src, "pulled:1")
	if want, _ := src.Digest(); d != want {
		t.Fatalf("digest %s, want %s", d, want)
	}
	img, err := s.Image(ctx, "pulled:1")
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(img); err != nil {
		t.Fatalf("validate.Image: %v", err)
	}
	// Storing it again copies nothing and changes nothing.
	before := dirNames(t, filepath.Join(s.Root(), "oci", "blobs", "sha256"))
	if d2 := putImage(t, s, src); d2 != d {
		t.Fatalf("second PutImage: %s", d2)
	}
	if after := dirNames(t, filepath.Join(s.Root(), "oci", "blobs", "sha256")); strings.Join(before, ",") != strings.Join(after, ",") {
		t.Errorf("blobs changed: %v -> %v", before, after)
	}
	if infos, _ := s.Images(ctx); len(infos) != 1 {
		t.Errorf("second PutImage of a tagged image added an index entry: %+v", infos)
	}
}

// corruptLayer claims the digest of its embedded layer but serves other bytes.
type corruptLayer struct {
	v1.Layer
	extra bool
}

func (c corruptLayer) Compressed() (io.ReadCloser, error) {
	b, err := readAllClose(c.Layer.Compressed())
	if err != nil {
		return nil, err
	}
	if c.extra {
		b = append(b, 0)
	} else {
		b[len(b)/2] ^= 0x40
	}
	return io.NopCloser(bytes.NewReader(b)), nil
}

func TestPutImageCorruptLayer(t *testing.T) {
	for _, extra := range []bool{false, true} {
		t.Run(fmt.Sprintf("extra=%v", extra), func(t *testing.T) {
			s := openTestStore(t)
			src, err := random.Layer(4096, types.OCILayer)
			if err != nil {
				t.Fatal(err)
			}
			img := ociImage(t, time.Unix(1, 0), corruptLayer{src, extra})
			_, err = s.PutImage(context.Background(), img)
			if !errors.Is(err, layers.ErrDigestMismatch) {
				t.Fatalf("PutImage: err %v, want ErrDigestMismatch", err)
			}
			if n := dirNames(t, filepath.Join(s.Root(), "oci", "blobs", "sha256")); len(n) != 0 {
				t.Errorf("blobs stored: %v", n)
			}
			if n := dirNames(t, filepath.Join(s.Root(), "tmp")); len(n) != 0 {
				t.Errorf("tmp/ not empty: %v", n)
			}
			if infos, err := s.Images(context.Background()); err != nil || len(infos) != 0 {
				t.Errorf("index lists %+v (%v)", infos, err)
			}
		})
	}
}

func TestTagUntag(t *testing.T) {
	s := openTestStore(t)
	ctx := context.Background()
	d1 := putImage(t, s, ociImage(t, time.Unix(100, 0)), "app:1", "app")
	d2 := putImage(t, s, ociImage(t, time.Unix(200, 0)))
	list := func() string {
		infos, err := s.Images(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, in := range infos {
			out = append(out, fmt.Sprintf("%s=%s", in.Ref, in.Digest.Hex[:6]))
		}
		return strings.Join(out, " ")
	}
	h := func(d v1.Hash) string { return d.Hex[:6] }
	steps := []struct {
		name string
		do   func() error
		want string // listing after the step
		err  error
	}{
		{"initial", func() error { return nil }, "app:1=" + h(d1) + " app:latest=" + h(d1) + " =" + h(d2), nil},
		{"move app:1", func() error { return s.Tag(ctx, "docker.io/library/app:1", d2) },
			"app:latest=" + h(d1) + " docker.io/library/app:1=" + h(d2), nil},
		{"move latest: d1 left untagged", func() error { return s.Tag(ctx, "app:latest", d2) },
			"app:latest=" + h(d2) + " docker.io/library/app:1=" + h(d2) + " =" + h(d1), nil},
		{"untag", func() error { return s.Untag(ctx, "index.docker.io/library/app:1") },
			"app:latest=" + h(d2) + " =" + h(d1), nil},
		{"untag missing", func() error { return s.Untag(ctx, "app:1") }, "app:latest=" + h(d2) + " =" + h(d1), layers.ErrNotFound},
		{"tag unknown digest", func() error { return s.Tag(ctx, "x", v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("a", 64)}) },
			"app:latest=" + h(d2) + " =" + h(d1), layers.ErrNotFound},
		{"retag untagged", func() error { return s.Tag(ctx, "back:again", d1) }, "app:latest=" + h(d2) + " back:again=" + h(d1), nil},
	}
	for _, st := range steps {
		err := st.do()
		if (st.err == nil && err != nil) || (st.err != nil && !errors.Is(err, st.err)) {
			t.Fatalf("%s: err %v, want %v", st.name, err, st.err)
		}
		if got := list(); got != st.want {
			t.Fatalf("%s: images %q, want %q", st.name, got, st.want)
		}
	}
	for _, bad := range []string{"app@" + d1.String(), "UPPER:1", "a:b:c", ""} {
		if err := s.Tag(ctx, bad, d1); err == nil {
			t.Errorf("Tag(%q) succeeded", bad)
		}
	}
}

func TestImagesInfo(t *testing.T) {
	s := openTestStore(t)
	ctx := context.Background()
	l := bytesLayer(t, s, compressible(4, 50<<10), layers.LayerOptions{})
	img := ociImage(t, time.Unix(1700000000, 0).UTC(), l)
	putImage(t, s, img, "b:1", "a:1")
	raw, _ := img.RawManifest()
	cfg, _ := img.RawConfigFile()
	ls, _ := l.Size()
	infos, err := s.Images(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != 2 || infos[0].Ref != "a:1" || infos[1].Ref != "b:1" {
		t.Fatalf("images %+v, want a:1 then b:1", infos)
	}
	for _, in := range infos {
		if !in.Created.Equal(time.Unix(1700000000, 0)) || in.Size != int64(len(raw)+len(cfg))+ls {
			t.Errorf("%s: created %v size %d, want %v %d", in.Ref, in.Created, in.Size, time.Unix(1700000000, 0), len(raw)+len(cfg)+int(ls))
		}
	}
}

// TestImageAmbiguousPrefix makes two images whose digests share the first
// MinIDPrefix hex digits.
func TestImageAmbiguousPrefix(t *testing.T) {
	s := openTestStore(t)
	ctx := context.Background()
	seen := map[string]v1.Image{}
	var a, b v1.Image
	for i := 0; i < 20000 && a == nil; i++ {
		img := ociImage(t, time.Unix(int64(i), 0))
		d, _ := img.Digest()
		p := d.Hex[:layers.MinIDPrefix]
		if other, ok := seen[p]; ok {
			a, b = other, img
		}
		seen[p] = img
	}
	if a == nil {
		t.Fatal("no digest prefix collision found")
	}
	da, db := putImage(t, s, a), putImage(t, s, b)
	if _, err := s.Image(ctx, da.Hex[:layers.MinIDPrefix]); err == nil || !strings.Contains(err.Error(), "matches 2 images") {
		t.Fatalf("ambiguous prefix: err %v", err)
	}
	for _, d := range []v1.Hash{da, db} {
		n := layers.MinIDPrefix
		for da.Hex[:n] == db.Hex[:n] {
			n++
		}
		if img, err := s.Image(ctx, d.Hex[:n]); err != nil {
			t.Errorf("unique prefix %s: %v", d.Hex[:n], err)
		} else if got, _ := img.Digest(); got != d {
			t.Errorf("prefix %s gave %s", d.Hex[:n], got)
		}
	}
}
