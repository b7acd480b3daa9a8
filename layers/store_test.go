//go:build linux

package layers_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand"
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

func TestWriteLayerRoundTrip(t *testing.T) {
	root := t.TempDir()
	makeFixture(t, root, userNodes())
	wantTar := writeTar(t, root, layers.TarOptions{})
	for _, tc := range []struct {
		name  string
		opts  layers.LayerOptions
		mt    types.MediaType
		magic []byte
	}{
		{"default", layers.LayerOptions{}, types.OCILayer, []byte{0x1f, 0x8b}},
		{"gzip", layers.LayerOptions{Compression: layers.Gzip}, types.OCILayer, []byte{0x1f, 0x8b}},
		{"gzip-1", layers.LayerOptions{Compression: layers.Gzip, Level: 1}, types.OCILayer, []byte{0x1f, 0x8b}},
		{"gzip-9", layers.LayerOptions{Compression: layers.Gzip, Level: 9}, types.OCILayer, []byte{0x1f, 0x8b}},
		{"zstd", layers.LayerOptions{Compression: layers.Zstd}, types.OCILayerZStd, []byte{0x28, 0xb5, 0x2f, 0xfd}},
		{"zstd-19", layers.LayerOptions{Compression: layers.Zstd, Level: 19}, types.OCILayerZStd, []byte{0x28, 0xb5, 0x2f, 0xfd}},
		{"uncompressed", layers.LayerOptions{Compression: layers.Uncompressed}, types.OCIUncompressedLayer, wantTar[:4]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := openTestStore(t)
			l := treeLayer(t, s, root, tc.opts)
			digest, _ := l.Digest()
			diffID, _ := l.DiffID()
			size, _ := l.Size()
			mt, _ := l.MediaType()
			if want := fmt.Sprintf("sha256:%x", sha256.Sum256(wantTar)); diffID.String() != want {
				t.Errorf("diffID %s, want sha256 of the tar %s", diffID, want)
			}
			if mt != tc.mt {
				t.Errorf("media type %s, want %s", mt, tc.mt)
			}
			blob, err := os.ReadFile(blobFile(s, digest))
			if err != nil {
				t.Fatalf("blob not stored under its digest: %v", err)
			}
			if got := fmt.Sprintf("sha256:%x", sha256.Sum256(blob)); got != digest.String() || int64(len(blob)) != size {
				t.Errorf("blob sha256 %s size %d, layer says %s %d", got, len(blob), digest, size)
			}
			if !bytes.HasPrefix(blob, tc.magic) {
				t.Errorf("blob starts with %x, want %x", blob[:4], tc.magic)
			}
			if c, err := readAllClose(l.Compressed()); err != nil || !bytes.Equal(c, blob) {
				t.Errorf("Compressed: err %v, equal %v", err, bytes.Equal(c, blob))
			}
			if u, err := readAllClose(l.Uncompressed()); err != nil || !bytes.Equal(u, wantTar) {
				t.Errorf("Uncompressed: err %v, equal to the tar %v", err, bytes.Equal(u, wantTar))
			}
			if tmp := dirNames(t, filepath.Join(s.Root(), "tmp")); len(tmp) != 0 {
				t.Errorf("tmp/ not empty: %v", tmp)
			}
			// Writing the same layer again gives the same blob.
			if d2, _ := treeLayer(t, s, root, tc.opts).Digest(); d2 != digest {
				t.Errorf("second write: digest %s, want %s", d2, digest)
			}
		})
	}
}

// compressible returns n bytes of pseudo-random text.
func compressible(seed int64, n int) []byte {
	r := rand.New(rand.NewSource(seed))
	words := []string{"layer ", "image ", "build ", "tar ", "digest ", "\n", "0123 ", "config "}
	var b bytes.Buffer
	for b.Len() < n {
		if r.Intn(10) == 0 {
			fmt.Fprintf(&b, "%x", r.Int63())
		}
		b.WriteString(words[r.Intn(len(words))])
	}
	return b.Bytes()[:n]
}

// TestWriteLayerDigestIndependentOfCores: the parallel compressors must give
// the same bytes whatever the number of cores.
func TestWriteLayerDigestIndependentOfCores(t *testing.T) {
	data := compressible(1, 3<<20)
	s := openTestStore(t)
	for _, c := range []layers.Compression{layers.Gzip, layers.Zstd} {
		var digests []v1.Hash
		for _, procs := range []int{1, 2, 8} {
			old := runtime.GOMAXPROCS(procs)
			d, _ := bytesLayer(t, s, data, layers.LayerOptions{Compression: c}).Digest()
			runtime.GOMAXPROCS(old)
			digests = append(digests, d)
		}
		if digests[0] != digests[1] || digests[0] != digests[2] {
			t.Errorf("%s: digests with 1, 2, 8 cores: %v", c, digests)
		}
	}
}

func TestWriteLayerErrors(t *testing.T) {
	good := func(w io.Writer) error { _, err := w.Write([]byte("x")); return err }
	boom := errors.New("boom")
	for _, tc := range []struct {
		name  string
		write func(io.Writer) error
		opts  layers.LayerOptions
		want  string
	}{
		{"unknown compression", good, layers.LayerOptions{Compression: "lz4"}, "unknown compression"},
		{"gzip level", good, layers.LayerOptions{Compression: layers.Gzip, Level: 10}, "out of range"},
		{"zstd level", good, layers.LayerOptions{Compression: layers.Zstd, Level: 23}, "out of range"},
		{"level without compression", good, layers.LayerOptions{Compression: layers.Uncompressed, Level: 3}, "uncompressed"},
		{"tar error", func(w io.Writer) error { w.Write(make([]byte, 3<<20)); return boom }, layers.LayerOptions{}, "boom"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := openTestStore(t)
			_, err := s.WriteLayer(context.Background(), tc.write, tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want %q", err, tc.want)
			}
			if n := dirNames(t, filepath.Join(s.Root(), "oci", "blobs", "sha256")); len(n) != 0 {
				t.Errorf("blobs stored: %v", n)
			}
			if n := dirNames(t, filepath.Join(s.Root(), "tmp")); len(n) != 0 {
				t.Errorf("tmp/ not empty: %v", n)
			}
		})
	}
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

// TestWriteLayerMemoryBounded streams a layer much larger than the heap
// may grow: WriteLayer must not buffer the layer.
func TestWriteLayerMemoryBounded(t *testing.T) {
	const total = 96 << 20
	chunk := compressible(5, 1<<20)
	for _, c := range []layers.Compression{layers.Gzip, layers.Zstd} {
		t.Run(string(c), func(t *testing.T) {
			s := openTestStore(t)
			runtime.GC()
			var base runtime.MemStats
			runtime.ReadMemStats(&base)
			stop, peak := make(chan struct{}), make(chan uint64)
			go func() {
				var max uint64
				var ms runtime.MemStats
				for {
					runtime.ReadMemStats(&ms)
					if ms.HeapInuse > max {
						max = ms.HeapInuse
					}
					select {
					case <-stop:
						peak <- max
						return
					case <-time.After(5 * time.Millisecond):
					}
				}
			}()
			l, err := s.WriteLayer(context.Background(), func(w io.Writer) error {
				for n := 0; n < total; n += len(chunk) {
					chunk[n/len(chunk)] ^= 0xff // no two chunks alike
					if _, err := w.Write(chunk); err != nil {
						return err
					}
				}
				return nil
			}, layers.LayerOptions{Compression: c, Level: 1})
			close(stop)
			grew := int64(<-peak) - int64(base.HeapInuse)
			if err != nil {
				t.Fatal(err)
			}
			size, _ := l.Size()
			t.Logf("%s: %d MiB in, %d MiB stored, heap grew by at most %d MiB", c, total>>20, size>>20, grew>>20)
			if grew > 64<<20 {
				t.Errorf("heap grew by %d MiB while writing a %d MiB layer", grew>>20, total>>20)
			}
		})
	}
}
