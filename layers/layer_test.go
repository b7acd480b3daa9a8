//go:build linux

package layers_test

import (
	"bytes"
	"context"
	"crypto/sha256"
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
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/imgbuild/imgbuild/layers"
)

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
